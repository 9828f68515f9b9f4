"""bench/gpu_check.sh, bench/gpu_check.py and bench/gpu_workflow.py: what can be checked without a GPU.

The kernel comparisons need CUDA (FlexAttention has no CPU backward); here: the script refuses
cleanly on a CPU machine, its whole workflow runs as a plumbing check on the CPU (tiny models, every
step but the CUDA-only ones), the bookkeeping turns any failure into a non-zero exit, and the speed
report computes tokens/s, MFU and the armd/ar ratio from training runs' files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.config import dump_config, load_config
from armd_scale.model.flops import training_flops_per_token

REPO = Path(__file__).resolve().parents[2]


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def gpu_check():
    return _bench_module("gpu_check")


# Every row the workflow reports; in a plumbing run the CUDA-only ones are skipped with the reason.
CUDA_ONLY = {"kernels", *(f"train {a} {b}" for a in ("armd", "ar", "mdlm") for b in ("flex", "flash"))}
ROWS = [
    "kernels",
    "data",
    *(f"train {a} {b}" for a in ("armd", "ar", "mdlm") for b in ("sdpa", "flex", "flash")),
    "resume armd",
    "resume ar",
    "resume mdlm",
    "eval ppl armd l2r",
    "eval ppl armd random",
    "eval ppl armd diffusion",
    "eval ppl mdlm diffusion",
    "generate armd prompt",
    "generate armd sbp",
    "generate armd infill",
    "generate ar sequential",
    "generate mdlm ancestral",
    "eval sbp",
    "convert export",
    "convert universal",
    "zero2 2 processes",
]


@pytest.mark.slow
def test_plumbing_run_goes_through_the_whole_workflow_on_the_cpu(tmp_path):
    """GPU_CHECK_PLUMBING=1: the GPU workflow's own steps on the CPU with tiny models (not a GPU check)."""
    scratch = tmp_path / "scratch"
    env = {**os.environ, "GPU_CHECK_PLUMBING": "1", "GPU_CHECK_DIR": str(scratch), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=600, env=env
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "PLUMBING CHECK ON THE CPU" in output and "NOT the GPU" in output
    results = {r["name"]: r for r in json.loads((scratch / "results.json").read_text())}
    assert list(results) == ROWS
    for name, row in results.items():
        expected = "skipped" if name in CUDA_ONLY else "ok"
        assert row["status"] == expected, f"{name}: {row}"
    assert "needs CUDA" in results["kernels"]["detail"]
    assert "max relative loss difference 0.0e+00" in results["resume mdlm"]["detail"]  # CPU runs are exact
    assert "2 processes on gloo" in results["zero2 2 processes"]["detail"]
    summary = (scratch / "summary.md").read_text()
    assert summary.startswith("PLUMBING CHECK ON THE CPU (tiny sizes; not a GPU check)") and "0 failed" in summary
    assert summary in proc.stdout  # the table is the last thing printed


def test_workflow_turns_failures_into_rows_skips_what_depends_on_them_and_exits_1(tmp_path, monkeypatch, capsys):
    workflow = _bench_module("gpu_workflow")
    wf = workflow.Workflow(tmp_path, workflow.plumbing_plan())
    assert wf.step("fine", lambda: "all good")
    assert not wf.step("broken", lambda: 1 / 0)

    def not_here():
        raise workflow.Skip("needs CUDA")

    assert not wf.step("cuda only", not_here)
    assert not wf.step("downstream", lambda: "never runs", needs=("fine", "broken"))
    assert [(r.name, r.status) for r in wf.results] == [
        ("fine", "ok"), ("broken", "FAILED"), ("cuda only", "skipped"), ("downstream", "skipped")
    ]  # fmt: skip
    assert wf.results[1].detail == "ZeroDivisionError: division by zero"
    assert wf.results[3].detail == "needs broken"
    assert "4 checks, 1 failed" in workflow.table(wf, 60.0)

    def one_failure(wf):
        wf.step("broken", lambda: 1 / 0)

    monkeypatch.setattr(workflow, "run_workflow", one_failure)
    assert workflow.main(["--out", str(tmp_path / "out"), "--plumbing"]) == 1
    assert "| broken | FAILED |" in (tmp_path / "out" / "summary.md").read_text()
    monkeypatch.setattr(workflow, "run_workflow", lambda wf: wf.step("fine", lambda: "ok"))
    assert workflow.main(["--out", str(tmp_path / "out"), "--plumbing"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_workflow_without_cuda_and_without_plumbing_refuses(tmp_path, capsys):
    assert _bench_module("gpu_workflow").main(["--out", str(tmp_path / "out")]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_the_script_says_so_and_runs_nothing(tmp_path):
    scratch = tmp_path / "scratch"
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": __import__("os").environ["PATH"], "GPU_CHECK_DIR": str(scratch), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr and "nothing was run" in proc.stderr
    assert not scratch.exists()


def fake_run(root: Path, arch: str, backend: str, step_times: list[float]) -> None:
    """A run folder as `armd train` leaves it: resolved config plus one metrics line per step."""
    run = root / f"{arch}-{backend}"
    run.mkdir(parents=True)
    cfg = load_config(
        "owt-small",
        [
            f"model.arch={arch}",
            f"model.attention_backend={backend}",
            "train.global_batch_size=64",
            "train.micro_batch_size=16",
        ],
    )
    (run / "config.yaml").write_text(dump_config(cfg))
    lines = [json.dumps({"step": i + 1, "step_time_s": t, "train/loss": 5.0}) for i, t in enumerate(step_times)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_report_gives_tokens_per_second_and_the_armd_over_ar_ratio(tmp_path, capsys):
    runs = tmp_path / "runs"
    warmup = [30.0] * 5  # compilation steps: left out by --skip 5
    fake_run(runs, "armd", "sdpa", warmup + [1.3, 1.2, 1.4, 1.2, 1.2])
    fake_run(runs, "ar", "sdpa", warmup + [1.0, 1.0, 0.9, 1.1, 1.0])
    fake_run(runs, "armd", "flex", warmup + [1.5] * 5)
    fake_run(runs, "ar", "flex", warmup + [1.0] * 5)
    assert gpu_check().main(["report", "--runs", str(runs), "--skip", "5"]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    rows = {(r["arch"], r["backend"]): r for r in doc["rows"]}
    assert rows[("armd", "sdpa")]["median_step_s"] == pytest.approx(1.2)
    assert rows[("armd", "sdpa")]["armd_over_ar"] == pytest.approx(1.2 / 1.0)
    assert rows[("armd", "flex")]["armd_over_ar"] == pytest.approx(1.5)
    assert rows[("ar", "flex")]["armd_over_ar"] is None
    assert rows[("ar", "sdpa")]["tokens_per_s"] == pytest.approx(64 * 1024 / 1.0)
    cfg = load_config("owt-small")
    assert rows[("armd", "sdpa")]["train_flops_per_token"] == pytest.approx(
        training_flops_per_token(cfg.model, cfg.data.seq_len)
    )
    text = (tmp_path / "report.md").read_text()
    assert "| flex | armd | 1.500 |" in text and "1.50x" in text and "1.20x" in text


def test_report_refuses_runs_without_timed_steps(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "ar", "sdpa", [1.0, 1.0])
    assert gpu_check().main(["report", "--runs", str(runs), "--skip", "5"]) == 1
