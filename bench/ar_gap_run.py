"""Run the training runs of the left-to-right gap study (bench/ar_gap.sh) from a plain-text run list.

The run list (bench/ar_gap_runs.txt) has one run per line, `#` starts a comment:

    define NAME override...                      a named group of overrides, used as @NAME
    preset NAME --config FILE override...        how a preset trains (config file + overrides)
    run GROUP NAME PRESET SEEDS item...          one variant, trained once per seed

SEEDS is a comma list (train.seed: initial weights and order draws; the data order is fixed).
Items are dotted overrides (`model.n_layers=2`), `@NAME` (a define), or one of:

    eqflops      train.steps so that the run's training FLOPs equal the AR model of the preset's shape
                 at the preset's steps (flops.py), with the same schedule shape
    +random      after training, `armd eval ppl --order random --orders 4` on the validation split

Every run lives in OUT/runs/GROUP/NAME/seedS with its metrics.jsonl (the curve), config.yaml, the
train log and `command.txt`. A run whose `exit_status.json` says it finished is not run again, so the
study can be extended and resumed by re-running the same command. At most `--lanes` runs train at a
time, each with one intra-op thread (OMP_NUM_THREADS=1 is set for the children).

    python bench/ar_gap_run.py --runs bench/ar_gap_runs.txt --out /tmp/armd_ar_gap --lanes 2 [--groups a,b]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from armd_scale.config import load_config  # noqa: E402
from armd_scale.model.flops import training_flops_per_token  # noqa: E402


@dataclasses.dataclass
class Run:
    group: str
    name: str
    preset: str
    seed: int
    overrides: list[str]
    eval_random: bool
    spec: str = ""  # the run list's items as written (@defines unexpanded), for tables

    def dir(self, out: Path) -> Path:
        return out / "runs" / self.group / self.name / f"seed{self.seed}"


class RunListError(ValueError):
    """A malformed line of the run list; the message names the file and line."""


def expand_env(items: list[str]) -> list[str]:
    """${VAR}s in the run list (data paths) come from the environment; a missing one is an error."""
    out = []
    for item in items:
        expanded = os.path.expandvars(item)
        if "$" in expanded:
            raise RunListError(f"environment variable in {item!r} is not set")
        out.append(expanded)
    return out


def parse_run_list(path: Path) -> tuple[dict[str, list[str]], list[Run]]:
    """(presets: name -> train arguments, runs) of a run list, with defines and eqflops resolved."""
    defines: dict[str, list[str]] = {}
    presets: dict[str, list[str]] = {}
    runs: list[Run] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        where = f"{path}:{number}"
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        kind, rest = words[0], words[1:]
        if kind == "define" and len(rest) >= 1:
            defines[rest[0]] = _expand(rest[1:], defines, where)
        elif kind == "preset" and len(rest) >= 3 and rest[1] == "--config":
            presets[rest[0]] = rest[1:]  # ${VAR}s are expanded when a run of the preset starts
        elif kind == "run" and len(rest) >= 4:
            group, name, preset, seeds = rest[:4]
            if preset not in presets:
                raise RunListError(f"{where}: preset '{preset}' is not defined above (preset NAME --config ...)")
            items = _expand(rest[4:], defines, where)
            eval_random = "+random" in items
            items = [w for w in items if w != "+random"]
            if "eqflops" in items:
                items = [w for w in items if w != "eqflops"]
                items.append(f"train.steps={equal_flop_steps(presets[preset], items)}")
            try:
                seed_list = [int(s) for s in seeds.split(",")]
            except ValueError:
                raise RunListError(f"{where}: seeds '{seeds}' must be a comma list of integers") from None
            spec = " ".join(rest[4:])
            runs += [Run(group, name, preset, s, items, eval_random, spec) for s in seed_list]
        else:
            raise RunListError(
                f"{where}: expected 'define', 'preset NAME --config FILE ...' or 'run GROUP NAME PRESET SEEDS ...'"
            )
    return presets, runs


def _expand(items: list[str], defines: dict[str, list[str]], where: str) -> list[str]:
    out = []
    for item in items:
        if item.startswith("@"):
            if item[1:] not in defines:
                raise RunListError(f"{where}: '{item}' is not defined above (define {item[1:]} ...)")
            out += defines[item[1:]]
        else:
            out.append(item)
    return out


def resolved_config(preset_args: list[str], overrides: list[str]):
    config_file, preset_overrides = preset_args[1], preset_args[2:]
    return load_config(config_file, [*preset_overrides, *overrides])


def equal_flop_steps(preset_args: list[str], overrides: list[str]) -> int:
    """Steps at which this run's training FLOPs equal the preset-shaped AR model's at the preset's steps."""
    reference = load_config(preset_args[1], preset_args[2:])
    cfg = resolved_config(preset_args, overrides)
    ar = dataclasses.replace(reference.model, arch="ar")
    ref_flops = training_flops_per_token(ar, reference.data.seq_len) * reference.train.steps
    return max(1, round(ref_flops / training_flops_per_token(cfg.model, cfg.data.seq_len)))


def finished(run_dir: Path) -> bool:
    status = run_dir / "exit_status.json"
    return status.exists() and json.loads(status.read_text()).get("reason") == "finished"


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def execute(run: Run, presets: dict[str, list[str]], out: Path) -> str:
    """Train one run (unless finished) and its optional evaluation; return a one-line status."""
    run_dir = run.dir(out)
    label = f"{run.group}/{run.name}/seed{run.seed}"
    try:
        preset = expand_env(presets[run.preset])
    except RunListError as e:
        return f"FAILED {label}: preset '{run.preset}': {e}"
    argv = [
        sys.executable,
        "-m",
        "armd_scale.cli",
        "train",
        *preset,
        *run.overrides,
        f"train.seed={run.seed}",
        f"run.dir={run_dir}",
    ]
    t0 = time.time()
    if not finished(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command.txt").write_text(shlex.join(argv[1:]) + "\n")
        with open(run_dir / "train.log", "w") as log:
            rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env()).returncode
        if rc != 0:
            return f"FAILED {label} (exit {rc}; see {run_dir / 'train.log'})"
    random_json = run_dir / "eval_random.json"
    if run.eval_random and not random_json.exists():
        rc = evaluate_random(preset, run.overrides, run_dir, random_json)
        if rc != 0:
            return f"FAILED {label} random-order evaluation (exit {rc}; see {run_dir / 'eval.log'})"
    return f"done {label} ({time.time() - t0:.0f} s)"


def evaluate_random(preset: list[str], overrides: list[str], run_dir: Path, out_json: Path) -> int:
    """Random-order NLL (4 orders, exact each) of the final checkpoint on the run's validation split."""
    from armd_scale.data.prepare.builtin import ensure_builtin_dataset

    cfg = resolved_config(preset, overrides)
    _, val_url, _ = ensure_builtin_dataset(cfg.data, progress=False)
    argv = [sys.executable, "-m", "armd_scale.cli", "eval", "ppl", "--checkpoint", str(run_dir), "--data", val_url]
    argv += ["--order", "random", "--orders", "4", "--seed", "0", "--no-progress", "--json", str(out_json)]
    with open(run_dir / "eval.log", "w") as log:
        return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env()).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=REPO / "bench" / "ar_gap_runs.txt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lanes", type=int, default=1, help="runs trained at the same time")
    ap.add_argument("--groups", default="", help="comma list of groups to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the runs and whether they are done; run nothing")
    args = ap.parse_args(argv)
    try:
        presets, runs = parse_run_list(args.runs)
    except RunListError as e:
        print(f"ar_gap: {e}", file=sys.stderr)
        return 2
    if args.groups:
        wanted = set(args.groups.split(","))
        unknown = wanted - {r.group for r in runs}
        if unknown:
            print(f"ar_gap: no runs in group(s) {', '.join(sorted(unknown))} of {args.runs}", file=sys.stderr)
            return 2
        runs = [r for r in runs if r.group in wanted]
    if args.list:
        for r in runs:
            state = "done" if finished(r.dir(args.out)) else "todo"
            print(f"{state}  {r.group}/{r.name}/seed{r.seed}  {r.preset}  {' '.join(r.overrides)}")
        return 0
    todo = [
        r
        for r in runs
        if not finished(r.dir(args.out)) or (r.eval_random and not (r.dir(args.out) / "eval_random.json").exists())
    ]
    print(f"ar_gap: {len(runs)} runs, {len(todo)} to do, {args.lanes} at a time", flush=True)
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.lanes)) as pool:
        for status in pool.map(lambda r: execute(r, presets, args.out), todo):
            print(f"[{time.strftime('%H:%M:%S')}] {status}", flush=True)
            failed += status.startswith("FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
