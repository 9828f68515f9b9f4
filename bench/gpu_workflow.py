"""The user workflow that bench/gpu_check.sh runs on one GPU, step by step, in two tiers, with one row per
step appended to the results file as the step finishes and one table at the end.

    python bench/gpu_workflow.py --out DIR [--tier quick|full] [--report-dir DIR2]   # on a CUDA machine
    python bench/gpu_workflow.py --out DIR --plumbing [--tier ...]                   # the same steps, CPU

Steps (each a row of the table; a step whose input failed is skipped and says why):
1. kernels: flex and flash against sdpa in bf16 (`bench/gpu_check.py kernels`; quick: `--quick`, the
   default ARMD's masks and query input).
2. train ARCH BACKEND: the owt-small shape in bf16 on the built-in corpus, `STEPS` steps, the
   end-of-run sample on, the final checkpoint; checked: exit 0, exit_status.json finished without
   end-of-run errors, the sample printed, finite losses; reported: loss, median step time, tokens/s,
   MFU, peak memory and the armd/ar step-time ratio. Full: armd, ar, mdlm x sdpa, flex, flash; quick:
   armd, ar x sdpa, flex (and flash when flash_attn is installed).
   speed armd vs ar: the default model's step time, tokens/s, MFU and peak memory next to ar's, per
   backend, from the runs above.
3. resume ARCH: the sdpa run again, stopped at STEPS/2 (exit 75, checkpoint) and resumed; its losses
   must follow the uninterrupted run's (relative tolerance RESUME_TOL: bf16 kernels are not
   bit-reproducible on a GPU; the plumbing run is exact). The runs go one after the other (two bf16
   training processes of this size side by side would not fit one GPU). Quick: armd only.
4. eval ppl l2r / random / diffusion (armd) and diffusion (mdlm) on the GPU, equal to the same
   evaluation on the CPU within EVAL_TOL (both fp32). Quick: armd l2r.
5. generate: armd left to right with a prompt, SBP with 4 streams, infilling; ar; mdlm; forward-call
   counts and kept tokens are checked (and whether the CPU draws the same tokens, for information).
   Quick: armd with a prompt and SBP.
6. eval sbp: S = 1, 2, 4 judged by the ar run (full).
7. convert --to export (then eval ppl on the export equals eval ppl on the checkpoint) and --to
   universal (full).
8. ZeRO-2 on 2 processes (NCCL) when the machine has 2 GPUs or more: losses follow the 1-process run
   (full).

Rows stream to REPORT_DIR/gpu_check.md (title and table header first, one line per finished step,
the measured total last), so a run cut short still leaves what it measured; the failed steps' log
tails go to REPORT_DIR/gpu_check_failures.log and the kernel check's table to
REPORT_DIR/gpu_check_kernels.log. DIR is emptied first (but for DIR/site, where gpu_check.sh installs
carried wheels).

--plumbing runs every step of the tier with tiny models on the CPU (fp32, only the sdpa backend, gloo
for the 2-process step, "GPU" evaluations on the CPU): it checks this script's commands, files and
comparisons, so the first run on a GPU fails only for GPU reasons. It is NOT a GPU check and says so.
Exit status: 0 all checks passed; 1 any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import torch  # noqa: E402
from check_runner import (  # noqa: E402
    KERNELS_FILE,
    TIERS,
    Plan,
    Skip,
    Workflow,
    default_steps,
    gpu_plan,
    plumbing_plan,
    table,
)

__all__ = ["Plan", "Skip", "Workflow", "gpu_plan", "main", "plumbing_plan", "run_workflow", "table"]

ARCHS = ("armd", "ar", "mdlm")
BACKENDS = ("sdpa", "flex", "flash")


# -- the steps ---------------------------------------------------------------------------------------


def kernels(wf: Workflow) -> str:
    if wf.plan.plumbing:
        raise Skip("needs CUDA (plumbing run)")
    quick = ["--quick"] if wf.plan.tier == "quick" else []
    try:
        proc = wf.run("kernels", [sys.executable, str(REPO / "bench" / "gpu_check.py"), "kernels", *quick])
    finally:
        wf.keep("kernels", KERNELS_FILE)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    if proc.returncode:
        raise AssertionError(f"{last} (logs/kernels.log)")
    return last


def data(wf: Workflow) -> str:
    from armd_scale.data.manifest import read_manifest

    manifest = read_manifest(wf.val_url().rsplit("/val", 1)[0] + "/train")
    return f"built-in corpus: {manifest.num_samples} training windows of {manifest.seq_len} tokens"


def backend_unavailable(backend: str, plan: Plan) -> str | None:
    if backend == "sdpa":
        return None
    if plan.plumbing:
        return "needs CUDA (FlexAttention has no CPU backward, flash-attn is CUDA-only)"
    if backend == "flash":
        from armd_scale.model.attention import flash_available

        if not flash_available():
            return "flash_attn is not installed (pip install 'armd_scale[gpu]')"
    return None


def train(wf: Workflow, arch: str, backend: str) -> str:
    reason = backend_unavailable(backend, wf.plan)
    if reason:
        raise Skip(reason)
    run_dir = wf.out / "runs" / f"{arch}-{backend}"
    extra = [f"model.arch={arch}", f"model.attention_backend={backend}"]
    proc = wf.run(f"train-{arch}-{backend}", wf.train_cmd(run_dir, *extra))
    if proc.returncode:
        raise AssertionError(f"exit {proc.returncode} (logs/train-{arch}-{backend}.log)")
    status = json.loads((run_dir / "exit_status.json").read_text())
    if status["code"] != 0 or status["reason"] != "finished" or status.get("end_of_run_errors"):
        raise AssertionError(f"exit_status.json says {status}")
    if "sample (" not in proc.stdout:
        raise AssertionError("no end-of-run sample was printed")
    losses = wf.losses(run_dir)
    if sorted(losses) != list(range(1, wf.plan.steps + 1)) or not all(map(math.isfinite, losses.values())):
        raise AssertionError(f"losses {losses}")
    wf.runs[(arch, backend)] = run_dir
    return f"loss {losses[1]:.3f} -> {losses[wf.plan.steps]:.3f}, sample printed; {speed(wf, arch, backend)}"


def speed(wf: Workflow, arch: str, backend: str) -> str:
    """The run's speed and peak memory, and the armd/ar step-time ratio once both archs ran."""
    row = speed_of(wf, arch, backend)
    if row is None:
        return "no timed steps"
    text = speed_text(row)
    other = speed_of(wf, "ar" if arch == "armd" else "armd", backend) if arch in ("armd", "ar") else None
    if other:
        armd, ar = (row, other) if arch == "armd" else (other, row)
        text += f", armd/ar step time {armd['median_step_s'] / ar['median_step_s']:.2f}x"
    return text


def speed_of(wf: Workflow, arch: str, backend: str) -> dict | None:
    from gpu_check import speed_row  # bench/ is on sys.path

    if (arch, backend) not in wf.runs:
        return None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return speed_row(wf.runs[(arch, backend)], wf.plan.skip_timed, device)


def speed_text(row: dict) -> str:
    text = f"{row['median_step_s']:.3f} s/step, {row['tokens_per_s']:,.0f} tokens/s"
    text += f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""
    if row["peak_memory_gb"] is not None:
        kind = "peak memory" if row["memory_kind"] == "cuda" else "peak RSS"
        text += f", {kind} {row['peak_memory_gb']:.2f} GiB"
    return text


def speed_comparison(wf: Workflow) -> str:
    """The default model against ar at the same shape, per backend both ran with."""
    parts = []
    for backend in BACKENDS:
        armd, ar = speed_of(wf, "armd", backend), speed_of(wf, "ar", backend)
        if armd and ar:
            parts.append(
                f"{backend}: armd {speed_text(armd)}; ar {speed_text(ar)}; "
                f"armd/ar step time {armd['median_step_s'] / ar['median_step_s']:.2f}x"
            )
    if not parts:
        raise AssertionError("no backend with both an armd and an ar run that logged timed steps")
    shape = "owt-small (12 x 768), N=1024" if not wf.plan.plumbing else "tiny plumbing sizes"
    return f"{shape}, median over steps > {wf.plan.skip_timed}: " + " // ".join(parts)


def resume(wf: Workflow, arch: str) -> str:
    """The arch's sdpa run again, stopped at STEPS/2 and resumed, one process after the other."""
    run_dir = wf.out / "runs" / f"resume-{arch}"
    half = wf.plan.steps // 2
    cmd = wf.train_cmd(run_dir, f"model.arch={arch}", "model.attention_backend=sdpa")
    first = wf.run(f"resume-{arch}", [*cmd, f"train.stop_at_step={half}"])
    if first.returncode != 75:
        raise AssertionError(f"the stop at step {half} exited {first.returncode}, not 75 (logs/resume-{arch}.log)")
    second = wf.run(f"resume-{arch}", cmd)
    status = json.loads((run_dir / "exit_status.json").read_text()) if (run_dir / "exit_status.json").exists() else {}
    if second.returncode or status.get("code") != 0 or f"(step {half})" not in second.stdout + second.stderr:
        raise AssertionError(f"the resume from step {half} exited {second.returncode} (logs/resume-{arch}.log)")
    worst = wf.compare_losses(wf.losses(run_dir), wf.losses(wf.runs[(arch, "sdpa")]), wf.plan.resume_tol)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return f"stopped at {half} (exit 75), resumed to {wf.plan.steps}: max relative loss difference {worst:.1e}"


def eval_ppl(wf: Workflow, arch: str, order: list[str]) -> str:
    checkpoint, label = str(wf.runs[(arch, "sdpa")]), "-".join([arch, order[1]])
    common = ["eval", "ppl", "--checkpoint", checkpoint, "--data", wf.val_url(), "--max-tokens",
              str(wf.plan.eval_tokens), "--batch-size", "2", "--no-progress", *order]  # fmt: skip
    docs = {}
    for side, device in (("device", wf.plan.device), ("cpu", "cpu")):  # twice in a plumbing run too
        path = wf.out / "eval" / f"ppl-{label}-{side}.json"
        code, log = wf.cli(f"eval-{label}", *common, "--device", device, "--json", str(path))
        if code:
            raise AssertionError(f"exit {code} on {device}: {log.strip().splitlines()[-2]}")
        docs[side] = json.loads(path.read_text())
    dev, cpu = docs["device"], docs["cpu"]
    rel = max(abs(a - b) / abs(b) for a, b in zip(per_order(dev), per_order(cpu), strict=True))
    if not rel <= wf.plan.eval_tol:
        raise AssertionError(f"{wf.plan.device} and CPU differ by {rel:.2e} (relative) > {wf.plan.eval_tol:g}")
    return (
        f"{dev['nll_per_token']:.4f} nats/token ({dev['likelihood']}) on {wf.plan.device} over {dev['tokens']} "
        f"tokens; CPU {cpu['nll_per_token']:.4f}: max relative difference {rel:.1e} <= {wf.plan.eval_tol:g}"
    )


def per_order(doc: dict) -> list[float]:
    return doc.get("nll_per_order") or [doc["nll_per_token"]]


def generate(wf: Workflow, arch: str, args: list[str], expected_calls: Callable[[dict], int], label: str) -> str:
    checkpoint = str(wf.runs[(arch, "sdpa")])
    docs = {}
    for side, device in (("device", wf.plan.device), ("cpu", "cpu")):  # twice in a plumbing run too
        path = wf.out / "generate" / f"{arch}-{label}-{side}.json"
        code, log = wf.cli(f"generate-{arch}-{label}", "generate", "--checkpoint", checkpoint, *args, "--seed", "3",
                           "--device", device, "--json", str(path))  # fmt: skip
        if code:
            raise AssertionError(f"exit {code} on {device}: {log.strip().splitlines()[-2]}")
        docs[side] = json.loads(path.read_text())
    doc = docs["device"]
    if doc["forward_calls"] != expected_calls(doc) or doc["forward_calls"] < 1:
        raise AssertionError(f"{doc['forward_calls']} forward calls for {args}, expected {expected_calls(doc)}")
    if "--infill" in args:
        check_infill(checkpoint, args[args.index("--infill") + 1], doc)
    same = [s["tokens"] for s in doc["samples"]] == [s["tokens"] for s in docs["cpu"]["samples"]]
    return (
        f"{len(doc['samples'])} sample(s) of {doc['length']} tokens, {doc['forward_calls']} forward calls, "
        f"{doc['tokens_per_s']:,.0f} tokens/s on {wf.plan.device}; same tokens as on the CPU: {'yes' if same else 'no'}"
    )


def check_infill(checkpoint: str, text: str, doc: dict) -> None:
    """Every sample keeps the known tokens of the infill text at their positions."""
    from armd_scale.commands.generate import parse_infill
    from armd_scale.eval.text import codec_for
    from armd_scale.pretrained import load_pretrained

    ids, known = parse_infill(text, codec_for(load_pretrained(checkpoint)))
    for sample in doc["samples"]:
        kept = [t for t, k in zip(sample["tokens"], known, strict=True) if k]
        if kept != [t for t, k in zip(ids, known, strict=True) if k]:
            raise AssertionError("a sample changed a known token of the infill text")


def eval_sbp(wf: Workflow) -> str:
    n, out = wf.plan.gen_length, wf.out / "sbp"
    code, log = wf.cli("eval-sbp", "eval", "sbp", "--checkpoint", str(wf.runs[("armd", "sdpa")]), "--judge",
                       str(wf.runs[("ar", "sdpa")]), "--streams", "1,2,4", "--length", str(n), "--num-samples", "2",
                       "--device", wf.plan.device, "--out", str(out), "--no-progress")  # fmt: skip
    if code:
        raise AssertionError(f"exit {code}: {log.strip().splitlines()[-2]}")
    rows = json.loads((out / "results.json").read_text())["results"]
    for r in rows:
        if r["forward_calls"] != r["streams"] + n // r["streams"] - 1 or not math.isfinite(r["gen_ppl"]):
            raise AssertionError(f"S={r['streams']}: {r['forward_calls']} forward calls, gen PPL {r['gen_ppl']}")
    return ", ".join(f"S={r['streams']}: {r['tokens_per_s']:,.0f} tok/s, gen PPL {r['gen_ppl']:.1f}" for r in rows)


def convert(wf: Workflow, to: str) -> str:
    checkpoint, out = wf.runs[("armd", "sdpa")], wf.out / f"converted-{to}"
    code, log = wf.cli(f"convert-{to}", "convert", "--checkpoint", str(checkpoint), "--to", to, "--out", str(out),
                       "--json", "--quiet")  # fmt: skip
    if code:
        raise AssertionError(f"exit {code}: {log.strip().splitlines()[-2]}")
    if to == "universal":
        return f"universal checkpoint written and validated ({sum(1 for _ in out.rglob('*'))} files)"
    docs = []
    for source in (checkpoint, out):  # the export scores exactly what the checkpoint scores
        path = wf.out / "eval" / f"ppl-export-check-{len(docs)}.json"
        code, _ = wf.cli("convert-export", "eval", "ppl", "--checkpoint", str(source), "--data", wf.val_url(),
                         "--max-tokens", str(wf.plan.eval_tokens), "--device", wf.plan.device, "--no-progress",
                         "--json", str(path))  # fmt: skip
        if code:
            raise AssertionError(f"eval ppl of {source} exited {code}")
        docs.append(json.loads(path.read_text())["nll_per_token"])
    if docs[0] != docs[1]:
        raise AssertionError(f"the export scores {docs[1]!r}, the checkpoint {docs[0]!r}")
    return f"export written; eval ppl on {wf.plan.device}: {docs[1]:.4f} nats/token, identical to the checkpoint"


def zero2(wf: Workflow) -> str:
    if not wf.plan.processes:
        raise Skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    run_dir = wf.out / "runs" / "zero2"
    extra = ["model.arch=armd", "model.attention_backend=sdpa", "parallel.zero_stage=2"]
    proc = wf.run("zero2", wf.train_cmd(run_dir, *extra, processes=wf.plan.processes))
    if proc.returncode:
        raise AssertionError(f"exit {proc.returncode} (logs/zero2.log)")
    worst = wf.compare_losses(wf.losses(run_dir), wf.losses(wf.runs[("armd", "sdpa")]), wf.plan.resume_tol)
    backend = "gloo" if wf.plan.plumbing else "nccl"
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return f"{wf.plan.processes} processes on {backend}: max relative loss difference to 1 process {worst:.1e}"


ORDERS = {"l2r": ["--order", "l2r"], "random": ["--order", "random", "--orders", "2"],
          "diffusion": ["--order", "diffusion", "--steps", "8", "--orders", "2"]}  # fmt: skip


def generate_cases(n: int) -> list[tuple[str, str, list[str], Callable[[dict], int]]]:
    """(arch, label, arguments, forward calls expected of the JSON document) of every generate step."""
    return [
        ("armd", "prompt", ["--prompt", "The ", "--length", str(n)], lambda d: d["length"] - d["known_tokens"]),
        ("armd", "sbp", ["--length", str(n), "--streams", "4", "--num-samples", "2"], lambda d: 4 + n // 4 - 1),
        ("armd", "infill", ["--infill", "The [MASK:6] is [MASK:3] and"], lambda d: d["length"] - d["known_tokens"]),
        ("ar", "sequential", ["--length", str(n)], lambda d: n),
        # mdlm: at most T = 16 calls (a step that reveals nothing reuses the last logits)
        ("mdlm", "ancestral", ["--length", str(n), "--steps", "16"], lambda d: min(16, d["forward_calls"])),
    ]


def train_steps(wf: Workflow, archs: tuple[str, ...], backends: tuple[str, ...]) -> None:
    for arch in archs:
        for backend in backends:
            wf.step(f"train {arch} {backend}", lambda a=arch, b=backend: train(wf, a, b), needs=("data",))
            if backend != "sdpa":  # only the sdpa runs' checkpoints are used below (1.5 GB each on a GPU)
                shutil.rmtree(wf.out / "runs" / f"{arch}-{backend}" / "checkpoints", ignore_errors=True)
    wf.step("speed armd vs ar", lambda: speed_comparison(wf), needs=("train armd sdpa", "train ar sdpa"))


def generate_step(wf: Workflow, case: tuple) -> None:
    arch, label, args, calls = case
    wf.step(f"generate {arch} {label}", lambda: generate(wf, arch, args, calls, label), needs=(f"train {arch} sdpa",))


def run_quick(wf: Workflow) -> None:
    """The core within the quick tier's budget: kernels, armd and ar trained with sdpa and flex, the
    speed comparison, a checkpoint and a resume of armd, eval ppl l2r, generation left to right and SBP."""
    from armd_scale.model.attention import flash_available

    wf.step("kernels", lambda: kernels(wf))
    wf.step("data", lambda: data(wf))
    flash = ("flash",) if not wf.plan.plumbing and flash_available() else ()
    train_steps(wf, ("armd", "ar"), ("sdpa", "flex", *flash))
    wf.step("resume armd", lambda: resume(wf, "armd"), needs=("train armd sdpa",))
    wf.step("eval ppl armd l2r", lambda: eval_ppl(wf, "armd", ORDERS["l2r"]), needs=("train armd sdpa",))
    for case in generate_cases(wf.plan.gen_length):
        if case[0] == "armd" and case[1] in ("prompt", "sbp"):
            generate_step(wf, case)


def run_full(wf: Workflow) -> None:
    """Every arch and backend, every evaluation, conversion and ZeRO-2."""
    wf.step("kernels", lambda: kernels(wf))
    wf.step("data", lambda: data(wf))
    train_steps(wf, ARCHS, BACKENDS)
    for arch in ARCHS:
        wf.step(f"resume {arch}", lambda a=arch: resume(wf, a), needs=(f"train {arch} sdpa",))
    for name, args in ORDERS.items():
        wf.step(f"eval ppl armd {name}", lambda a=args: eval_ppl(wf, "armd", a), needs=("train armd sdpa",))
    wf.step("eval ppl mdlm diffusion", lambda: eval_ppl(wf, "mdlm", ORDERS["diffusion"]), needs=("train mdlm sdpa",))
    for case in generate_cases(wf.plan.gen_length):
        generate_step(wf, case)
    wf.step("eval sbp", lambda: eval_sbp(wf), needs=("train armd sdpa", "train ar sdpa"))
    wf.step("convert export", lambda: convert(wf, "export"), needs=("train armd sdpa",))
    wf.step("convert universal", lambda: convert(wf, "universal"), needs=("train armd sdpa",))
    wf.step("zero2 2 processes", lambda: zero2(wf), needs=("train armd sdpa",))


def run_workflow(wf: Workflow) -> None:
    (run_quick if wf.plan.tier == "quick" else run_full)(wf)


def clear_scratch(out: Path) -> None:
    """Empty the scratch folder for a new run, keeping site/ (wheels gpu_check.sh installed there)."""
    if out.is_dir():
        for entry in out.iterdir():
            if entry.name == "site":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for sub in ("runs", "logs", "eval", "generate"):
        (out / sub).mkdir(parents=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch directory (emptied first, but for site/)")
    ap.add_argument("--tier", choices=TIERS, default="full", help="quick: the core in minutes; full: everything")
    ap.add_argument("--report-dir", type=Path, help="where gpu_check.md (rows as they finish) and the failures "
                    "log go (default: the scratch directory)")  # fmt: skip
    ap.add_argument("--plumbing", action="store_true", help="the same steps on the CPU with tiny sizes")
    args = ap.parse_args(argv)
    if args.plumbing:
        plan = plumbing_plan(args.tier)
    else:
        if not torch.cuda.is_available():
            print("gpu_workflow: no CUDA device (use --plumbing for the CPU plumbing check)", file=sys.stderr)
            return 2
        e = os.environ
        steps = int(e.get("STEPS", default_steps(args.tier)))
        plan = gpu_plan(steps, int(e.get("GLOBAL_BATCH", 32)), int(e.get("MICRO_BATCH", 16)), args.tier)
    clear_scratch(args.out)
    out = args.out.resolve()
    wf = Workflow(out, plan, report_dir=(args.report_dir or out).resolve())
    wf.begin_report()
    start = time.perf_counter()
    run_workflow(wf)
    seconds = time.perf_counter() - start
    wf.end_report(seconds)
    text = table(wf, seconds)
    print("\n" + text)
    (wf.out / "summary.md").write_text(text)
    (wf.out / "results.json").write_text(json.dumps([r.__dict__ for r in wf.results], indent=1) + "\n")
    print(f"gpu_check: rows in {wf.report_dir / 'gpu_check.md'}; scratch (runs, logs) in {wf.out}")
    return 1 if any(r.status == "FAILED" for r in wf.results) else 0


if __name__ == "__main__":
    sys.exit(main())
