"""Bookkeeping of bench/gpu_workflow.py: the sizes of a GPU or plumbing run per tier, one result row per
step (streamed to the results file as each step finishes), subprocess helpers that log to OUT/logs, the
failures log, the final table, and the choice of wheels to install on a machine without a registry.
The steps themselves live in bench/gpu_workflow.py.

    python bench/check_runner.py wheels --from DIR --target SITE
        Install into SITE (pip --no-index --no-deps --target; unzipped when this Python has no pip) the
        wheels of DIR whose distributions this Python lacks; print what was installed and what skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TIERS = ("quick", "full")
QUICK_BUDGET_MIN = 6  # the quick tier's budget on one H100/H200 (its table prints the measured total)
RESULTS_FILE = "gpu_check.md"  # rows appended as the steps finish
FAILURES_FILE = "gpu_check_failures.log"  # the log tails of the failed steps, one file
KERNELS_FILE = "gpu_check_kernels.log"  # the kernel check's table of errors
LOG_TAIL_LINES = 120
INSTALLED_LIST = ".installed-wheels"  # in the wheels' target folder: what it holds


@dataclass(frozen=True)
class Plan:
    """Sizes and tolerances of one mode and tier."""

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
    timeout_s: int  # of one subprocess
    tier: str = "full"


def default_steps(tier: str) -> int:
    return 30 if tier == "quick" else 12


def gpu_plan(steps: int, global_batch: int, micro_batch: int, tier: str = "full") -> Plan:
    import torch

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
        timeout_s=300 if tier == "quick" else 900,
        tier=tier,
    )


def plumbing_plan(tier: str = "full") -> Plan:
    tiny = ("model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32", "model.d_pe=8",
            "model.vocab_size=128", "data.seq_len=32", "data.vocab_size=128", "train.global_batch_size=4",
            "train.micro_batch_size=2", "parallel.precision=fp32", "train.sample_at_end=16")  # fmt: skip
    return Plan(True, "cpu", tiny, 6, 2, 128, 16, 1e-6, 1e-6, 2, 300, tier)


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
    out: Path  # scratch: runs, logs, evaluations
    plan: Plan
    report_dir: Path | None = None  # where the results file and the failures log go (None: not written)
    results: list[Result] = field(default_factory=list)
    runs: dict[tuple[str, str], Path] = field(default_factory=dict)  # finished training runs
    step_logs: list[Path] = field(default_factory=list)  # the logs the running step wrote

    # -- bookkeeping ---------------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], str], needs: tuple[str, ...] = ()) -> bool:
        missing = [n for n in needs if not any(r.name == n and r.status == "ok" for r in self.results)]
        if missing:
            self.record(Result(name, "skipped", 0.0, f"needs {', '.join(missing)}"))
            return False
        print(f"== {name}", flush=True)
        self.step_logs = []
        start = time.perf_counter()
        failure = ""
        try:
            status, detail = "ok", fn()
        except Skip as e:
            status, detail = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row of the table
            status, detail = "FAILED", f"{type(e).__name__}: {e}".splitlines()[0][:300]
            failure = "" if isinstance(e, AssertionError) else traceback.format_exc()  # a check's own message
        self.record(Result(name, status, time.perf_counter() - start, detail))
        print(f"   {status}: {detail}", flush=True)
        if status == "FAILED":
            self.log_failure(name, detail, failure)
        return status == "ok"

    def record(self, result: Result) -> None:
        """One more row: in memory, and appended to the results file at once (a cut-off run keeps it)."""
        self.results.append(result)
        if self.report_dir is not None:
            with (self.report_dir / RESULTS_FILE).open("a") as f:
                f.write(row(result) + "\n")

    def begin_report(self) -> None:
        """The results file's title and table header, before the first step."""
        if self.report_dir is None:
            return
        self.report_dir.mkdir(parents=True, exist_ok=True)
        for name in (RESULTS_FILE, FAILURES_FILE, KERNELS_FILE):
            (self.report_dir / name).unlink(missing_ok=True)
        budget = f"; budget {QUICK_BUDGET_MIN} min on one H100/H200" if self.plan.tier == "quick" else ""
        text = (
            f"{title(self.plan)}, {self.plan.tier} tier{budget}: rows are appended as the steps finish, "
            f"the last line gives the measured total (started {time.strftime('%Y-%m-%d %H:%M:%S')})\n\n" + TABLE_HEADER
        )
        (self.report_dir / RESULTS_FILE).write_text(text)

    def end_report(self, seconds: float) -> None:
        if self.report_dir is not None:
            with (self.report_dir / RESULTS_FILE).open("a") as f:
                f.write(f"\n{summary_line(self, seconds)}\n")

    def log_failure(self, name: str, detail: str, failure: str) -> None:
        """The traceback and the tails of the logs a failed step wrote, appended to the one failures log."""
        if self.report_dir is None:
            return
        parts = [f"==== {name}: FAILED: {detail}\n"]
        if failure:
            parts.append(failure)
        for path in dict.fromkeys(self.step_logs):
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            cut = f" (last {LOG_TAIL_LINES} of {len(lines)} lines)" if len(lines) > LOG_TAIL_LINES else ""
            parts.append(f"---- {path.relative_to(self.out)}{cut}\n" + "\n".join(lines[-LOG_TAIL_LINES:]) + "\n")
        with (self.report_dir / FAILURES_FILE).open("a") as f:
            f.write("\n".join(parts) + "\n")

    def keep(self, log: str, name: str) -> None:
        """A copy of OUT/logs/LOG.log in the report folder (a measured table worth returning)."""
        path = self.out / "logs" / f"{log}.log"
        if self.report_dir is not None and path.exists():
            (self.report_dir / name).write_text(path.read_text(errors="replace"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("WANDB_MODE", "disabled")
        if self.plan.plumbing:
            env["OMP_NUM_THREADS"] = "1"
        return env

    def _log(self, log: str, cmd: list[str], out: str, err: str, code: int | str) -> Path:
        path = self.out / "logs" / f"{log}.log"
        with path.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out}{err}\n[exit {code}]\n")
        self.step_logs.append(path)
        return path

    def run(self, log: str, cmd: list[str]) -> subprocess.CompletedProcess:
        """A subprocess whose output goes to OUT/logs/LOG.log (and is returned). Past the plan's timeout
        it is killed with everything it started, and the step fails saying so."""
        proc = subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.out, start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=self.plan.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the launcher and its workers
            out, err = proc.communicate()
            self._log(log, cmd, out, err, f"killed after {self.plan.timeout_s} s")
            raise AssertionError(f"timed out after {self.plan.timeout_s} s (logs/{log}.log)") from None
        self._log(log, cmd, out, err, proc.returncode)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def cli(self, log: str, *args: str) -> tuple[int, str]:
        """`armd ARGS` in this process (no interpreter start-up per call); output to OUT/logs/LOG.log."""
        from armd_scale.cli import main

        path = self.out / "logs" / f"{log}.log"
        self.step_logs.append(path)
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
        from armd_scale.data.prepare.builtin import ensure_builtin_dataset

        cfg = load_config("owt-small", [*self.plan.overrides, *self.data_overrides()])
        train, val, _ = ensure_builtin_dataset(cfg.data)
        return val or train


# -- the table -------------------------------------------------------------------------------------------

TABLE_HEADER = "| check | result | seconds | detail |\n|---|---|---|---|\n"


def row(r: Result) -> str:
    return f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.detail.replace('|', '/')} |"


def title(plan: Plan) -> str:
    import torch

    if plan.plumbing:
        return "PLUMBING CHECK ON THE CPU (tiny sizes; not a GPU check)"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"GPU check on {device}"


def summary_line(wf: Workflow, seconds: float) -> str:
    import torch

    failed = sum(r.status == "FAILED" for r in wf.results)
    budget = ""
    if wf.plan.tier == "quick":
        over = not wf.plan.plumbing and seconds > 60 * QUICK_BUDGET_MIN
        budget = f" ({'OVER ' if over else ''}the {QUICK_BUDGET_MIN} min budget)"
    return (
        f"{title(wf.plan)}, {wf.plan.tier} tier: {len(wf.results)} checks, {failed} failed, "
        f"{seconds / 60:.1f} min measured{budget}, torch {torch.__version__}"
    )


def table(wf: Workflow, seconds: float) -> str:
    lines = [summary_line(wf, seconds), "", TABLE_HEADER.rstrip("\n")] + [row(r) for r in wf.results]
    return "\n".join(lines) + "\n"


# -- wheels for a machine without a registry ---------------------------------------------------------------


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> set[str]:
    return {normalize(d.metadata["Name"]) for d in importlib.metadata.distributions() if d.metadata["Name"]}


def missing_wheels(folder: Path, installed: set[str] | None = None) -> tuple[list[Path], list[Path]]:
    """(to install, skipped): the wheels of `folder` whose distribution this Python lacks, and the others.
    A wheel's distribution is the first field of its file name (PEP 427). torch is never installed from a
    wheel folder: the machine's own build is the one that matches its driver."""
    have = installed_distributions() if installed is None else {normalize(n) for n in installed}
    todo, skipped = [], []
    for wheel in sorted(folder.glob("*.whl")):
        name = normalize(wheel.name.split("-", 1)[0])
        (skipped if name in have or name == "torch" else todo).append(wheel)
    return todo, skipped


def install_wheels(folder: Path, target: Path) -> list[Path]:
    """Install the missing wheels of `folder` into `target` without a registry; returns them. `target`
    exists afterwards only when something is missing, and holds exactly those wheels: kept as it is when
    an earlier run installed the same ones (its INSTALLED_LIST says so), emptied and refilled otherwise."""
    todo, skipped = missing_wheels(folder)
    if skipped:
        names = ", ".join(w.name.split("-", 1)[0] for w in skipped)
        print(f"gpu_check: {len(skipped)} wheel(s) of {folder} not installed, this Python has them: {names}")
    listing = "".join(f"{w.name}\n" for w in todo)
    stamp = target / INSTALLED_LIST
    if todo and stamp.is_file() and stamp.read_text() == listing:
        print(f"gpu_check: {target} already holds {', '.join(w.name for w in todo)}")
        return todo
    shutil.rmtree(target, ignore_errors=True)
    if not todo:
        return []
    target.mkdir(parents=True)
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(target),
               *map(str, todo)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"pip install --target {target} failed:\n{proc.stdout}{proc.stderr}")
    else:  # a wheel is a zip of the installed files (no scripts are needed here)
        for wheel in todo:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(target)
    stamp.write_text(listing)
    how = "pip --no-index --no-deps" if has_pip else "unzipped: this Python has no pip"
    print(f"gpu_check: installed into {target} ({how}): {', '.join(w.name for w in todo)}")
    return todo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="helpers of bench/gpu_check.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    wheels = sub.add_parser("wheels", help="install the wheels this Python lacks (no registry)")
    wheels.add_argument("--from", dest="folder", type=Path, required=True)
    wheels.add_argument("--target", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        install_wheels(args.folder, args.target)
    except RuntimeError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
