"""Bookkeeping of bench/gpu_workflow.py: the sizes of a GPU or plumbing run, one result row per step,
subprocess helpers that log to OUT/logs, and the final table. The steps themselves live in
bench/gpu_workflow.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    """Sizes and tolerances of one mode."""

    plumbing: bool
    device: str  # where the "GPU" side of evaluations and generation runs
    overrides: tuple[str, ...]  # on top of the owt-small preset, for every training run
    steps: int
    skip_timed: int  # first steps left out of the speed figures
    eval_tokens: int
    gen_length: int
    resume_tol: float
    eval_tol: float
    processes: int  # of the ZeRO-2 step (0 = skipped)
    timeout_s: int


def gpu_plan(steps: int, global_batch: int, micro_batch: int) -> Plan:
    return Plan(
        plumbing=False,
        device="cuda",
        overrides=(
            f"train.global_batch_size={global_batch}",
            f"train.micro_batch_size={micro_batch}",
            "train.sample_at_end=64",
            "data.vocab_size=2048",  # a tokenizer the built-in corpus supports; model.vocab_size stays 50304
        ),
        steps=steps,
        skip_timed=min(4, steps // 2),
        eval_tokens=2048,
        gen_length=128,
        resume_tol=5e-3,
        eval_tol=1e-4,
        processes=2 if torch.cuda.device_count() >= 2 else 0,
        timeout_s=900,
    )


def plumbing_plan() -> Plan:
    tiny = ("model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32", "model.d_pe=8",
            "model.vocab_size=128", "data.seq_len=32", "data.vocab_size=128", "train.global_batch_size=4",
            "train.micro_batch_size=2", "parallel.precision=fp32", "train.sample_at_end=16")  # fmt: skip
    return Plan(True, "cpu", tiny, 6, 2, 128, 16, 1e-6, 1e-6, 2, 300)


@dataclass
class Result:
    name: str
    status: str  # ok, FAILED, skipped
    seconds: float
    detail: str


class Skip(Exception):
    """The step does not apply here (not a failure)."""


@dataclass
class Workflow:
    out: Path
    plan: Plan
    results: list[Result] = field(default_factory=list)
    runs: dict[tuple[str, str], Path] = field(default_factory=dict)  # finished training runs

    # -- bookkeeping ---------------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], str], needs: tuple[str, ...] = ()) -> bool:
        missing = [n for n in needs if not any(r.name == n and r.status == "ok" for r in self.results)]
        if missing:
            self.results.append(Result(name, "skipped", 0.0, f"needs {', '.join(missing)}"))
            return False
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            status, detail = "ok", fn()
        except Skip as e:
            status, detail = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row of the table
            status, detail = "FAILED", f"{type(e).__name__}: {e}".splitlines()[0][:300]
        self.results.append(Result(name, status, time.perf_counter() - start, detail))
        print(f"   {status}: {detail}", flush=True)
        return status == "ok"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("WANDB_MODE", "disabled")
        if self.plan.plumbing:
            env["OMP_NUM_THREADS"] = "1"
        return env

    def run(self, log: str, cmd: list[str]) -> subprocess.CompletedProcess:
        """A subprocess whose output goes to OUT/logs/LOG.log (and is returned)."""
        proc = subprocess.run(
            cmd, env=self.env(), capture_output=True, text=True, timeout=self.plan.timeout_s, cwd=self.out
        )
        path = self.out / "logs" / f"{log}.log"
        with path.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n")
        return proc

    def run_parallel(self, jobs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
        """Several subprocesses at once (untimed work); each one's output goes to OUT/logs/NAME.log."""
        procs = {}
        for log, cmd in jobs.items():
            procs[log] = (cmd, subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                text=True, cwd=self.out))  # fmt: skip
        done = {}
        for log, (cmd, proc) in procs.items():
            try:
                out, err = proc.communicate(timeout=self.plan.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            done[log] = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            with (self.out / "logs" / f"{log}.log").open("a") as f:
                f.write(f"$ {' '.join(cmd)}\n{out}{err}\n[exit {proc.returncode}]\n")
        return done

    def cli(self, log: str, *args: str) -> tuple[int, str]:
        """`armd ARGS` in this process (no interpreter start-up per call); output to OUT/logs/LOG.log."""
        from armd_scale.cli import main

        path = self.out / "logs" / f"{log}.log"
        with path.open("a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            print(f"$ armd {' '.join(args)}")
            code = main(list(args))
            print(f"[exit {code}]")
        return code, path.read_text()

    def train_cmd(self, run_dir: Path, *extra: str, processes: int = 1) -> list[str]:
        args = ["train", "--config", "owt-small", f"run.dir={run_dir}", *self.data_overrides(), "data.num_workers=0",
                f"train.steps={self.plan.steps}", "train.warmup_steps=2", "train.eval_every=0", "train.log_every=1",
                "train.checkpoint_every=1000000", "log.wandb=off", "log.progress_bar=false", *self.plan.overrides,
                *extra]  # fmt: skip
        if processes == 1:
            return [sys.executable, "-m", "armd_scale.cli", *args]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "-m", "armd_scale.cli", *args]  # fmt: skip

    # -- helpers -------------------------------------------------------------------------------------

    def losses(self, run_dir: Path) -> dict[int, float]:
        """The last logged loss of every step (a resumed run appends to metrics.jsonl)."""
        out: dict[int, float] = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record["loss"]
        return out

    def compare_losses(self, got: dict[int, float], ref: dict[int, float], tol: float) -> float:
        steps = list(range(1, self.plan.steps + 1))
        if sorted(got) != steps:
            raise AssertionError(f"logged steps {sorted(got)}, expected 1..{self.plan.steps}")
        worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in steps)
        if not worst <= tol:
            raise AssertionError(f"losses differ from the uninterrupted run by {worst:.2e} (relative) > {tol:g}")
        return worst

    def data_overrides(self) -> list[str]:
        """The built-in corpus (tokenizer and shards built once under OUT/cache): nothing is downloaded."""
        return [
            "data.train=builtin:pydoc",
            "data.val=null",
            "data.tokenizer=null",
            f"data.cache_dir={self.out / 'cache'}",
        ]

    def val_url(self) -> str:
        from armd_scale.config import load_config
        from armd_scale.data.builtin import ensure_builtin_dataset

        cfg = load_config("owt-small", [*self.plan.overrides, *self.data_overrides()])
        train, val, _ = ensure_builtin_dataset(cfg.data)
        return val or train


def table(wf: Workflow, seconds: float) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not wf.plan.plumbing else "CPU"
    title = "PLUMBING CHECK ON THE CPU (tiny sizes; not a GPU check)" if wf.plan.plumbing else f"GPU check on {device}"
    failed = sum(r.status == "FAILED" for r in wf.results)
    lines = [
        f"{title}: {len(wf.results)} checks, {failed} failed, {seconds / 60:.1f} min, torch {torch.__version__}",
        "",
        "| check | result | seconds | detail |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.detail.replace('|', '/')} |" for r in wf.results]
    return "\n".join(lines) + "\n"
