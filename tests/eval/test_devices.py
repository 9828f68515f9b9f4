"""`armd eval ppl` and `armd eval sbp` on a device other than the CPU, and `--device auto`.

The commands run in-process on the simulated device of tests/simulated_device.py (CUDA's rules for
mixing devices and generators, values computed on the CPU), so their JSON must equal the CPU run's
apart from timings: integers, tokens and texts exactly, floats to float32 rounding (on the simulated
device attention takes torch's composite math path instead of the fused CPU kernel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.cli import main
from tests.simulated_device import simulated_device

from .runs import cli_env

REPO = Path(__file__).resolve().parents[2]

TIMINGS = {"seconds", "tokens_per_s"}


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_drop_timings(v) for v in value]
    return value


def assert_same(on_dev, on_cpu, path: str = "doc") -> None:
    """Equal structure and values; floats to 1e-6 relative or absolute (float32 rounding of another kernel)."""
    if isinstance(on_cpu, dict):
        assert on_dev.keys() == on_cpu.keys(), path
        for key in on_cpu:
            assert_same(on_dev[key], on_cpu[key], f"{path}.{key}")
    elif isinstance(on_cpu, list):
        assert len(on_dev) == len(on_cpu), path
        for i, (a, b) in enumerate(zip(on_dev, on_cpu, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(on_cpu, float):
        assert on_dev == pytest.approx(on_cpu, rel=1e-6, abs=1e-6), path
    else:
        assert on_dev == on_cpu, path


def _ppl(tmp_path, device: str, *args: str) -> dict:
    out = tmp_path / f"ppl-{device.replace(':', '')}-{len(list(tmp_path.iterdir()))}.json"
    assert main(["eval", "ppl", "--no-progress", "--device", device, *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "kind",
    [
        ["--order", "l2r"],
        ["--order", "random", "--orders", "3"],
        ["--order", "diffusion", "--steps", "4", "--orders", "2"],
    ],
    ids=["l2r", "random", "diffusion"],
)
def test_eval_ppl_on_another_device_equals_the_cpu(text_run, tmp_path, kind):
    _, val, _ = text_run.data_urls()
    args = ["--checkpoint", str(text_run.dir), "--data", val, "--max-tokens", "512", "--batch-size", "4", *kind]
    on_cpu = _ppl(tmp_path, "cpu", *args)
    with simulated_device() as dev:
        on_dev = _ppl(tmp_path, str(dev), *args)
    assert_same(on_dev, on_cpu)


def test_eval_ppl_mdlm_on_another_device_equals_the_cpu(text_mdlm_run, tmp_path):
    _, val, _ = text_mdlm_run.data_urls()
    args = ["--checkpoint", str(text_mdlm_run.dir), "--data", val, "--max-tokens", "64"]
    on_cpu = _ppl(tmp_path, "cpu", *args)
    with simulated_device() as dev:
        on_dev = _ppl(tmp_path, str(dev), *args)
    assert_same(on_dev, on_cpu)


def test_eval_sbp_on_another_device_equals_the_cpu(text_run, text_ar_run, tmp_path):
    def sweep(device: str) -> dict:
        out = tmp_path / f"sbp-{device.replace(':', '')}"
        args = ["--checkpoint", str(text_run.dir), "--judge", str(text_ar_run.dir), "--streams", "1,4"]
        assert main(["eval", "sbp", *args, "--length", "16", "--num-samples", "2", "--device", device,
                     "--out", str(out), "--no-progress"]) == 0  # fmt: skip
        return json.loads((out / "results.json").read_text())

    on_cpu = sweep("cpu")
    with simulated_device() as dev:
        on_dev = sweep(str(dev))
    assert_same(_drop_timings(on_dev), _drop_timings(on_cpu))


def test_device_auto_is_the_default_and_says_what_it_chose(text_run, tmp_path, capsys):
    _, val, _ = text_run.data_urls()
    doc = _ppl(tmp_path, "auto", "--checkpoint", str(text_run.dir), "--data", val, "--max-tokens", "128")
    chosen = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"armd eval ppl: computing on {chosen}" in capsys.readouterr().err
    assert main(["eval", "ppl", "--checkpoint", str(text_run.dir), "--data", val, "--max-tokens", "128",
                 "--no-progress"]) == 0  # fmt: skip
    assert f"computing on {chosen}" in capsys.readouterr().err
    assert doc["tokens"] == 128


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_one_is_an_error_not_a_fallback(text_run, capsys):
    _, val, _ = text_run.data_urls()
    assert main(["eval", "ppl", "--checkpoint", str(text_run.dir), "--data", val, "--device", "cuda"]) == 1
    assert "sees no CUDA device" in capsys.readouterr().err
    assert main(["eval", "ppl", "--checkpoint", str(text_run.dir), "--data", val, "--device", "gpu0"]) == 1
    assert "is not a device" in capsys.readouterr().err


def _eval_sh(run, tmp_path, **env) -> subprocess.CompletedProcess:
    _, val, _ = run.data_urls()
    full_env = {**cli_env(), "RUN_DIR": str(run.dir), "DATA": val, "OUT": str(tmp_path / "out.json"),
                "EVAL_ARGS": "--max-tokens 128 --no-progress", "PYTHON": sys.executable,
                "PYTHONPATH": str(REPO), **env}  # fmt: skip
    full_env.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", str(REPO / "slurm" / "eval.sh")], env=full_env, capture_output=True, text=True)


def test_slurm_eval_script_computes_where_the_job_can(text_run, tmp_path):
    proc = _eval_sh(text_run, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert "device auto" in proc.stdout and f"computing on {chosen}" in proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())["tokens"] == 128


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a GPU job on a machine whose torch sees no GPU")
def test_slurm_eval_script_holding_a_gpu_refuses_to_compute_on_the_cpu(text_run, tmp_path):
    proc = _eval_sh(text_run, tmp_path, SLURM_GPUS_ON_NODE="1")
    assert proc.returncode == 1 and "device cuda" in proc.stdout, proc.stdout + proc.stderr
    assert "sees no CUDA device" in proc.stderr and not (tmp_path / "out.json").exists()


def test_likelihood_reads_the_device_once_whatever_the_number_of_batches(markov_run):
    """Scores are summed on the device and read at the end, not once per batch and order. (The model's
    forward itself reads a few values per call: see docs/GPU.md; that part is subtracted here.)"""
    import numpy as np

    from armd_scale.eval.likelihood import evaluate_likelihood
    from armd_scale.model.generation_orders import random_order
    from armd_scale.pretrained import load_pretrained
    from tests.simulated_device import host_reads

    pre = load_pretrained(str(markov_run.dir))
    windows = np.random.default_rng(0).integers(4, 12, size=(12, 32))
    with simulated_device() as dev:
        pre.model.to(dev)
        order, block = random_order(2, 32)
        before = host_reads()
        with torch.no_grad():
            pre.model(torch.as_tensor(windows[:2]).to(dev), order.to(dev), block.to(dev))
        per_forward = host_reads() - before
        for batches in (2, 6):
            before = host_reads()
            evaluate_likelihood(pre.model, np.array_split(windows, batches), kind="random", seq_len=32, orders=3,
                                progress=False)  # fmt: skip
            assert host_reads() - before == batches * 3 * per_forward + 1
