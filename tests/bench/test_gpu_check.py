"""bench/gpu_check.sh, bench/gpu_check.py, bench/gpu_workflow.py and bench/check_runner.py: what can be
checked without a GPU.

The kernel comparisons need CUDA (FlexAttention has no CPU backward); here: the script refuses
cleanly on a CPU machine, both tiers of its workflow run as a plumbing check on the CPU (tiny models,
every step but the CUDA-only ones) with rows streamed to the results file as the steps finish, the
bookkeeping turns any failure into a non-zero exit and a failures log, the script finds a Python and
leaves OUT alone, carried wheels are installed only for what the Python lacks, and the speed report
computes tokens/s, MFU, peak memory and the armd/ar ratio from training runs' files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from armd_scale.config import dump_config, load_config
from armd_scale.model.flops import training_flops_per_token

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def gpu_check():
    return _bench_module("gpu_check")


def check_runner():
    return _bench_module("check_runner")


# Every row the workflow reports; in a plumbing run the CUDA-only ones are skipped with the reason.
CUDA_ONLY = {"kernels", *(f"train {a} {b}" for a in ("armd", "ar", "mdlm") for b in ("flex", "flash"))}
ROWS = [
    "kernels",
    "data",
    *(f"train {a} {b}" for a in ("armd", "ar", "mdlm") for b in ("sdpa", "flex", "flash")),
    "speed armd vs ar",
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
QUICK_ROWS = [
    "kernels",
    "data",
    *(f"train {a} {b}" for a in ("armd", "ar") for b in ("sdpa", "flex")),
    "speed armd vs ar",
    "resume armd",
    "eval ppl armd l2r",
    "generate armd prompt",
    "generate armd sbp",
]


def plumbing_env(scratch: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON", "GPU_WHEELS")}
    env.update(GPU_CHECK_PLUMBING="1", GPU_CHECK_DIR=str(scratch), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env["GPU_WHEELS"] = str(scratch.parent / "no-wheels")  # CI has no .whl/; neither does this test
    return {**env, **extra}


def table_rows(text: str) -> list[str]:
    """The check names of a markdown table's rows (header and rule left out)."""
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| ")]
    return [r for r in rows if r != "check"]


@pytest.mark.slow
def test_plumbing_run_goes_through_the_whole_workflow_on_the_cpu(tmp_path):
    """GPU_CHECK_PLUMBING=1 --full: the GPU workflow's own steps on the CPU with tiny models (not a GPU
    check); without OUT the results file is in the scratch folder."""
    scratch = tmp_path / "scratch"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--full"], capture_output=True, text=True, timeout=600, env=plumbing_env(scratch)
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "PLUMBING CHECK ON THE CPU" in output and "NOT the GPU" in output and "full tier" in output
    results = {r["name"]: r for r in json.loads((scratch / "results.json").read_text())}
    assert list(results) == ROWS
    for name, row in results.items():
        expected = "skipped" if name in CUDA_ONLY else "ok"
        assert row["status"] == expected, f"{name}: {row}"
    assert "needs CUDA" in results["kernels"]["detail"]
    assert "max relative loss difference 0.0e+00" in results["resume mdlm"]["detail"]  # CPU runs are exact
    assert "2 processes on gloo" in results["zero2 2 processes"]["detail"]
    assert (
        "armd/ar step time" in results["train ar sdpa"]["detail"]
        and "peak RSS" in results["speed armd vs ar"]["detail"]
    )
    summary = (scratch / "summary.md").read_text()
    assert summary.startswith("PLUMBING CHECK ON THE CPU (tiny sizes; not a GPU check), full tier")
    assert "0 failed" in summary
    assert summary in proc.stdout  # the table is printed at the end
    assert table_rows((scratch / "gpu_check.md").read_text()) == ROWS
    assert not (scratch / "gpu_check_failures.log").exists()


@pytest.mark.slow
def test_quick_tier_is_the_default_and_streams_rows_to_out_as_steps_finish(tmp_path):
    """The quick tier (no argument) appends a row per step to $OUT/gpu_check.md while it runs; OUT is
    the caller's folder: neither emptied nor replaced by the scratch folder."""
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("not the check's")
    results = out / "gpu_check.md"
    env = plumbing_env(scratch, OUT=str(out))
    proc = subprocess.Popen(["bash", str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen_while_running = []
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if results.exists():
            rows = table_rows(results.read_text())
            if proc.poll() is None and rows and rows != seen_while_running[-1:]:
                seen_while_running.append(rows)
        time.sleep(0.2)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-6000:]
    assert "quick tier" in output and "NOT the GPU" in output
    # rows were there before the run ended, each a prefix of the final table
    assert seen_while_running and len(seen_while_running[0]) < len(QUICK_ROWS)
    assert all(rows == QUICK_ROWS[: len(rows)] for rows in seen_while_running)
    text = results.read_text()
    assert text.startswith("PLUMBING CHECK ON THE CPU (tiny sizes; not a GPU check), quick tier; budget 6 min")
    assert "| check | result | seconds | detail |" in text
    assert table_rows(text) == QUICK_ROWS
    assert text.rstrip().splitlines()[-1].startswith("PLUMBING CHECK ON THE CPU") and "min measured" in text
    statuses = {r["name"]: r["status"] for r in json.loads((scratch / "results.json").read_text())}
    assert statuses == {n: "skipped" if n in CUDA_ONLY else "ok" for n in QUICK_ROWS}
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.md", "mine.txt"]  # OUT kept, nothing else
    assert not (scratch / "gpu_check.md").exists()


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


def test_rows_reach_the_results_file_as_each_step_finishes_and_failed_steps_leave_their_logs(tmp_path):
    cr = check_runner()
    scratch, report = tmp_path / "scratch", tmp_path / "report"
    (scratch / "logs").mkdir(parents=True)
    wf = cr.Workflow(scratch, cr.plumbing_plan("quick"), report_dir=report)
    wf.begin_report()
    results, failures = report / "gpu_check.md", report / "gpu_check_failures.log"
    assert results.read_text().endswith("| check | result | seconds | detail |\n|---|---|---|---|\n")
    assert wf.step("fine", lambda: "all good")
    assert table_rows(results.read_text()) == ["fine"]  # on disk before the next step starts

    def child_fails():
        code = "print('first line of the child'); import sys; sys.exit('the child broke')"
        proc = wf.run("child", [sys.executable, "-c", code])
        raise AssertionError(f"exit {proc.returncode} (logs/child.log)")

    assert not wf.step("broken", child_fails)
    assert not wf.step("downstream", lambda: "never runs", needs=("broken",))
    assert not wf.step("crash", lambda: {}["key"])
    assert table_rows(results.read_text()) == ["fine", "broken", "downstream", "crash"]
    log = failures.read_text()
    assert "==== broken: FAILED: AssertionError: exit 1 (logs/child.log)" in log
    assert "first line of the child" in log and "the child broke" in log  # the tail of the step's log
    assert "==== crash: FAILED: KeyError: 'key'" in log and "Traceback" in log  # an unexpected error's traceback
    assert "downstream" not in log and "fine" not in log
    wf.end_report(90.0)
    last = results.read_text().rstrip().splitlines()[-1]
    assert last.startswith("PLUMBING CHECK ON THE CPU (tiny sizes; not a GPU check), quick tier: 4 checks, 2 failed")
    assert "1.5 min measured (the 6 min budget)" in last

    # a child past the plan's timeout is killed, its output kept, and the step fails saying so
    wf = cr.Workflow(scratch, dataclasses.replace(cr.plumbing_plan(), timeout_s=2), report_dir=report)
    hang = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    start = time.monotonic()
    assert not wf.step("hangs", lambda: wf.run("sleeper", hang))
    assert time.monotonic() - start < 30
    assert wf.results[-1].detail == "AssertionError: timed out after 2 s (logs/sleeper.log)"
    sleeper = (scratch / "logs" / "sleeper.log").read_text()
    assert "started" in sleeper and "[exit killed after 2 s]" in sleeper


def fake_python(folder: Path, name: str, calls: Path) -> Path:
    """An executable that records how it was called and exits 2 (what `gpu_check.py env` does without CUDA)."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 2\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize(
    ("on_path", "explicit", "used"),
    [(("python3", "python"), None, "python3"), (("python",), None, "python"), (("python3",), "mine", "mine")],
)
def test_the_script_finds_a_python_the_PYTHON_variable_then_python3_then_python(tmp_path, on_path, explicit, used):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    for name in on_path:
        fake_python(bin_dir, name, calls)
    env = {"PATH": str(bin_dir), "GPU_CHECK_DIR": str(tmp_path / "scratch")}
    if explicit:
        env["PYTHON"] = str(fake_python(tmp_path, explicit, calls))
    bash = shutil.which("bash")
    proc = subprocess.run([bash, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the fake says: no CUDA device
    assert calls.read_text() == f"{used} {REPO}/bench/gpu_check.py env\n"
    (bin_dir / "python").unlink(missing_ok=True)
    (bin_dir / "python3").unlink(missing_ok=True)
    proc = subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True, timeout=60, env={**env, "PYTHON": ""})
    assert proc.returncode == 2 and "no python3 or python on PATH (set PYTHON)" in proc.stderr
    proc = subprocess.run([bash, str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "unknown argument '--fast' (--quick or --full)" in proc.stderr


def make_wheel(folder: Path, dist: str, module: str, value: int) -> Path:
    """A minimal pure-Python wheel: one module and its dist-info."""
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    info = f"{dist}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", f"VALUE = {value}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{module}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_carried_wheels_are_chosen_by_what_the_python_lacks(tmp_path):
    cr = check_runner()
    folder = tmp_path / "whl"
    folder.mkdir()
    names = [
        "numpy-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",  # installed here (torch needs it): skipped
        "PyYAML-6.0-cp312-cp312-manylinux_2_17_x86_64.whl",  # installed as PyYAML: names compare normalised
        "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl",  # never: the machine's own torch
        "surely_absent_dist_xyz-1.0-py3-none-any.whl",
        "Another.Absent-Dist-2.0-py3-none-any.whl",
    ]
    for name in names:
        (folder / name).touch()
    (folder / "notes.txt").touch()
    todo, skipped = cr.missing_wheels(folder)
    assert sorted(w.name for w in todo) == sorted(names[3:])
    assert sorted(w.name for w in skipped) == sorted(names[:3])
    todo, _ = cr.missing_wheels(folder, installed={"Surely-Absent.Dist_XYZ", "another_absent"})
    assert sorted(w.name for w in todo) == sorted(names[:2])


@pytest.mark.parametrize("pip", [True, False])
def test_wheel_installation_without_a_registry(tmp_path, monkeypatch, pip):
    """Only the missing wheel is installed (an already-installed one is an empty file here: installing it
    would fail); the target is emptied first, and kept when it holds the same wheels already; without pip
    the wheel is unzipped."""
    cr = check_runner()
    folder, site = tmp_path / "whl", tmp_path / "site"
    folder.mkdir()
    make_wheel(folder, "armd_wheel_probe", "armd_wheel_probe", 7)
    (folder / "numpy-1.0-cp312-cp312-manylinux_2_17_x86_64.whl").touch()
    (site / "stale").mkdir(parents=True)
    if not pip:
        real_run = subprocess.run

        def no_pip(cmd, *args, **kwargs):
            if cmd[1:] == ["-m", "pip", "--version"]:
                return subprocess.CompletedProcess(cmd, 1)
            return real_run(cmd, *args, **kwargs)

        monkeypatch.setattr(cr.subprocess, "run", no_pip)
    assert cr.main(["wheels", "--from", str(folder), "--target", str(site)]) == 0
    assert not (site / "stale").exists() and not (site / "numpy").exists()
    probe = subprocess.run(
        [sys.executable, "-c", "import armd_wheel_probe; print(armd_wheel_probe.__file__, armd_wheel_probe.VALUE)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert probe.stdout.split() == [str(site / "armd_wheel_probe" / "__init__.py"), "7"], probe.stderr
    (site / "armd_wheel_probe" / "kept.txt").touch()
    assert cr.main(["wheels", "--from", str(folder), "--target", str(site)]) == 0
    assert (site / "armd_wheel_probe" / "kept.txt").exists()  # the same wheels: installed once
    folder.joinpath("armd_wheel_probe-0.1-py3-none-any.whl").unlink()
    assert cr.main(["wheels", "--from", str(folder), "--target", str(site)]) == 0
    assert not site.exists()  # nothing missing: no site folder to put on PYTHONPATH


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
