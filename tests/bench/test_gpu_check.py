"""bench/gpu_check.sh and bench/gpu_check.py: what can be checked without a GPU.

The kernel comparisons need CUDA (FlexAttention has no CPU backward); here: the script refuses
cleanly on a CPU machine, and the speed report computes tokens/s, MFU and the armd/ar ratio from
training runs' files.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from armd_scale.config import dump_config, load_config
from armd_scale.model.flops import training_flops_per_token

REPO = Path(__file__).resolve().parents[2]


def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
