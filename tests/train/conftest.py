"""Tiny training runs as real subprocesses (`armd train`, or torchrun with 2 gloo processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "model.vocab_size=128",
    "model.d_pe=8",
    "data.seq_len=32",
    "data.vocab_size=128",
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=3",
    "log.wandb=off",
    "log.progress_bar=false",
    "train.order.kind=progressive",
    "train.order.ar_steps=2",
    "train.order.rho=4",
    "train.order.ramp_end=5",
    "train.steps=6",
]


@dataclass
class Run:
    dir: Path
    returncode: int
    output: str

    def status(self) -> dict:
        """RUN_DIR/exit_status.json (under torchrun the process exit code is torchrun's own)."""
        return json.loads((self.dir / "exit_status.json").read_text())

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.records() if "loss" in r}

    def records(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def checkpoints(self) -> list[str]:
        """Complete step folders (not those set aside as step_N.corrupt / step_N.nonfinite)."""
        from armd_scale.checkpoints.layout import complete_tags

        return complete_tags(self.dir / "checkpoints")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_MAX_RESTARTS"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    env["WANDB_MODE"] = env.get("WANDB_MODE", "offline")
    return env


def command(run_dir: Path, cache: Path, *overrides: str, nproc: int = 1, launcher: str = "torchrun") -> list[str]:
    args = ["train", *TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", *overrides]
    if nproc == 1:
        return [sys.executable, "-m", "armd_scale.cli", *args]
    if launcher == "deepspeed":
        from armd_scale.ports import free_port

        return [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            f"--num_gpus={nproc}",
            f"--master_port={free_port()}",
            "--module",
            "armd_scale.cli",
            *args,
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "armd_scale.cli",
        *args,
    ]


def run_train(
    run_dir: Path, cache: Path, *overrides: str, nproc: int = 1, timeout: float = 300, launcher: str = "torchrun"
) -> Run:
    proc = subprocess.run(
        command(run_dir, cache, *overrides, nproc=nproc, launcher=launcher),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(run_dir, proc.returncode, proc.stdout + proc.stderr)


def start_train(run_dir: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(run_dir, cache, *overrides), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def clean_process_env():
    """In-process train() sets launcher variables for its world of one; later subprocess tests must not
    inherit them. The process group itself stays up for the session (DeepSpeed caches its groups)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def scale_loss(monkeypatch, steps: set[int], factor: float, *, gradient_only: bool = False) -> None:
    """Multiply the loss of every micro-batch of the given optimizer steps (1-based) by `factor` (NaN: a
    non-finite step for the NaN guard; a large finite factor: a spike): in-process runs of the tiny layout.

    `gradient_only`: the loss keeps its value (bit for bit: `loss + 0`) and only its gradient is scaled, a
    gradient-norm spike that no loss statistic can see."""
    import armd_scale.train.objective as objective  # computes the armd/ar micro-batch loss for the loop

    real = objective.order_loss
    calls = {"n": 0}

    def scaled(logits, tokens, order, **kw):
        calls["n"] += 1
        step = (calls["n"] - 1) // 4 + 1  # 4 micro-batches per step in the tiny layout
        loss = real(logits, tokens, order, **kw)
        if step not in steps:
            return loss
        if gradient_only:
            return loss.detach() + factor * (loss - loss.detach())
        return loss * factor

    monkeypatch.setattr(objective, "order_loss", scaled)


__all__ = ["Run", "run_train", "start_train", "wait_for", "signal", "TINY", "clean_process_env", "scale_loss"]


def train_in_process(cfg) -> int:
    """`armd train` in this process: the command layer prepares the data (builds the built-in corpus
    on first use), then the trainer runs on the prepared shard sets."""
    from armd_scale.commands.train import prepare_data
    from armd_scale.train.loop import train

    return train(cfg, sources=prepare_data(cfg))
