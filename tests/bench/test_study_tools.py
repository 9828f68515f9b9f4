"""The reproduction study's helper scripts (bench/repro*.py, bench/repro.sh) on tiny real runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from armd_scale.cli import main as armd_main

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    """Import bench/<name>.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_continuous_bound_matches_the_random_order_average(text_mdlm_run, tmp_path):
    """With log-linear masking, the continuous-time NELBO is the average over uniformly random orders
    of each order's NLL; the script's estimate (one pass per draw) must agree with the exact per-order
    NLLs that `armd eval ppl --order random` averages. A missing 1/s weight halves the estimate."""
    elbo = load_script("repro_mdlm_elbo")
    train, _, _ = text_mdlm_run.data_urls()
    out = tmp_path / "continuous.json"
    assert (
        elbo.main(
            [
                "--checkpoint",
                str(text_mdlm_run.dir),
                "--data",
                train,
                "--max-tokens",
                "512",
                "--draws",
                "64",
                "--seed",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["kind"] == "continuous" and doc["likelihood"] == "elbo" and doc["draws"] == 64
    assert doc["tokens"] == 512 and len(doc["nll_per_draw"]) == 64
    assert all(math.isfinite(x) for x in doc["nll_per_draw"])
    assert doc["bits_per_byte"] == pytest.approx(doc["nll_per_token"] * doc["tokens"] / (doc["bytes"] * math.log(2)))

    rand = tmp_path / "random.json"
    assert (
        armd_main(
            [
                "eval",
                "ppl",
                "--checkpoint",
                str(text_mdlm_run.dir),
                "--data",
                train,
                "--max-tokens",
                "512",
                "--order",
                "random",
                "--orders",
                "16",
                "--seed",
                "1",
                "--no-progress",
                "--json",
                str(rand),
            ]
        )
        == 0
    )
    reference = json.loads(rand.read_text())
    standard_error = reference["nll_std"] / math.sqrt(16) + doc["nll_std"] / math.sqrt(64)  # of the two means
    assert abs(doc["nll_per_token"] - reference["nll_per_token"]) < 4 * standard_error + 0.02, (doc, reference)


def test_mdlm_samples_are_scored_like_an_sbp_sweep(text_mdlm_run, text_ar_run, tmp_path):
    samples = load_script("repro_mdlm_samples")
    out = tmp_path / "mdlm"
    assert (
        samples.main(
            [
                "--checkpoint",
                str(text_mdlm_run.dir),
                "--judge",
                str(text_ar_run.dir),
                "--length",
                "16",
                "--steps",
                "16,4",
                "--num-samples",
                "3",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads((out / "results.json").read_text())
    assert [r["steps"] for r in doc["results"]] == [16, 4]
    for row in doc["results"]:
        assert 1 <= row["forward_calls"] <= row["steps"]
        assert len(row["samples"]) == 3
        assert all(len(s["tokens"]) == 16 and max(s["tokens"]) < 128 for s in row["samples"])  # no mask id left
        assert math.isfinite(row["gen_ppl"]) and row["gen_ppl"] > 1 and row["entropy"] > 0
    assert "| 4 |" in (out / "results.md").read_text()


def test_mdlm_tools_refuse_other_archs(text_ar_run, tmp_path):
    elbo = load_script("repro_mdlm_elbo")
    train, _, _ = text_ar_run.data_urls()
    with pytest.raises(SystemExit, match="arch 'ar'"):
        elbo.main(["--checkpoint", str(text_ar_run.dir), "--data", train, "--json", str(tmp_path / "x.json")])


def test_repro_sh_skips_cleanly_without_the_corpora(tmp_path):
    env = {**os.environ, "CORPORA": str(tmp_path / "absent"), "REPRO_DIR": str(tmp_path / "repro")}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "repro.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "SKIPPED" in proc.stdout and str(tmp_path / "absent") in proc.stdout
    assert not (tmp_path / "repro").exists()  # nothing was made


def test_repro_sh_refuses_a_folder_it_did_not_make(tmp_path):
    corpora = tmp_path / "corpora"
    for name in (
        "gutenberg_nltk",
        "janeausten",
        "brown",
        "state_union",
        "inaugural",
        "tinyshakespeare",
        "lm1b",
        "wikitext-2",
    ):
        (corpora / name).mkdir(parents=True)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    env = {**os.environ, "CORPORA": str(corpora), "REPRO_DIR": str(precious)}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "repro.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "not made by this script" in proc.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def _run_stages(tmp_path: Path, body: str, resume: bool = False) -> subprocess.CompletedProcess:
    """Run `body` in bash under `set -euo pipefail` with bench/stages.sh sourced, logs in tmp_path."""
    timings = tmp_path / "timings.tsv"
    if not timings.exists():
        timings.write_text("stage\tlane\tseconds\n")
    script = f"set -euo pipefail\nsource {REPO / 'bench' / 'stages.sh'}\n{body}\necho script-went-on\n"
    env = {
        **os.environ,
        "STAGE_LOGS": str(tmp_path),
        "STAGE_TIMINGS": str(timings),
        "STAGE_RESUME": "1" if resume else "0",
    }
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_a_stage_fails_when_any_command_inside_it_fails(tmp_path):
    """A stage made of several commands (repro.sh's eval_ar evaluates three sets in a loop) must fail
    at its first failing command; run as `if ! f` bash would switch errexit off inside f, and the
    stage passed whenever its last command did (LM1B evaluations went missing without an error)."""
    body = """
ok() { echo fine; }
loop() { for x in first second; do [[ $x != first ]] || false; echo "did $x"; done; }
stage good A ok
stage broken A loop
"""
    proc = _run_stages(tmp_path, body)
    assert proc.returncode == 1
    assert "script-went-on" not in proc.stdout
    assert "stage broken FAILED (exit 1)" in proc.stderr
    assert "did second" not in (tmp_path / "broken.log").read_text()
    recorded = [line.split("\t")[0] for line in (tmp_path / "timings.tsv").read_text().splitlines()[1:]]
    assert recorded == ["good"]


def test_a_resumed_study_skips_the_stages_it_finished_and_reruns_the_failed_one(tmp_path):
    first = _run_stages(tmp_path, "stage good A true\nstage flaky A false")
    assert first.returncode == 1
    # on resume, `good` would now fail if it ran again: it must be skipped; `flaky` runs and passes
    second = _run_stages(tmp_path, "stage good A false\nstage flaky A true", resume=True)
    assert second.returncode == 0, second.stderr
    assert "good (done before, skipped)" in second.stdout and "script-went-on" in second.stdout
    recorded = [line.split("\t")[0] for line in (tmp_path / "timings.tsv").read_text().splitlines()[1:]]
    assert recorded == ["good", "flaky"]


def test_in_parallel_fails_when_either_lane_fails(tmp_path):
    proc = _run_stages(tmp_path, "a() { stage one A true; }\nb() { stage two B false; }\nin_parallel a b")
    assert proc.returncode == 1 and "stage two FAILED" in proc.stderr and "script-went-on" not in proc.stdout
