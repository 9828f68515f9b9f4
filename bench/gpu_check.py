"""CUDA attention-backend checks and the training-speed figures of bench/gpu_check.sh (whose workflow
is bench/gpu_workflow.py).

Subcommands:

    python bench/gpu_check.py env
        Exit 2 with a message when torch sees no CUDA device; otherwise print the device, torch and
        flash-attn versions.

    python bench/gpu_check.py kernels [--quick] [--seq-len 1024] [--heads 12] [--head-dim 64]
        Every attention pattern the models use, on the block structures of the orders that produce
        them: single-token blocks (l2r, random: the fused causal path), SBP with 4 streams and
        diffusion(T=64) blocks (general block masks), under the causal, strict and two-stream masks,
        plus the bidirectional `full` pattern of mdlm. For each, `flex` (always) and `flash` (single-token
        blocks and `full`, when flash_attn is installed) run in bf16 and are compared with `sdpa` run in
        float32 on the same bf16-rounded inputs: forward outputs and the gradients of q, k and v for a
        random upstream gradient. `sdpa` in bf16 is measured too, as the yardstick of bf16 rounding.
        Then a whole ARMD model (bf16, the default query input) under each backend against the float32
        sdpa model on l2r, SBP and diffusion orders. The error is the relative Frobenius norm
        ||x - ref|| / ||ref||; a check fails above --tol (default 2e-2; bf16 rounding alone gives a few
        1e-3) or on any NaN. Exit 1 if any check fails.
        --quick (the quick tier of gpu_check.sh): only the default ARMD's masks on the orders it trains
        and decodes with (l2r and random, which its progressive training draws, and SBP with 4 streams),
        and the whole model on l2r and SBP; no diffusion blocks, no mdlm `full` pattern.

    python bench/gpu_check.py report --runs DIR [--skip 5]
        Read the metrics.jsonl and config.yaml of every training run under DIR and print (and write
        DIR/../report.md and report.json) the median step time after the first --skip steps, tokens/s,
        MFU (flops.py FLOPs / the device's peak) per backend and arch, and the armd/ar step-time ratio
        per backend. The workflow uses the same figures (`speed_row`) in its table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armd_scale.config import ModelConfig, load_config  # noqa: E402
from armd_scale.model import build_model  # noqa: E402
from armd_scale.model.attention import attend, flash_available, prepare  # noqa: E402
from armd_scale.model.flops import peak_flops, training_flops_per_token  # noqa: E402
from armd_scale.model.generation_orders import diffusion_order, l2r_order, random_order, sbp_order  # noqa: E402
from armd_scale.model.masks import causal_spec, full_spec, strict_spec, two_stream_spec  # noqa: E402


def cmd_env(_args) -> int:
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device is visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
            "this check needs an NVIDIA GPU, nothing was run",
            file=sys.stderr,
        )
        return 2
    try:
        import flash_attn

        flash = f"flash_attn {flash_attn.__version__}"
    except ImportError:
        flash = "flash_attn not installed (flash rows are skipped; pip install 'armd_scale[gpu]')"
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}, CUDA {torch.version.cuda} | {flash}")
    return 0


# -- kernels ---------------------------------------------------------------------------------------------


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def orders(batch: int, n: int, device: torch.device, quick: bool = False) -> dict[str, torch.Tensor]:
    """Block indices [B, N] (generation frame) of each order kind the models train or decode with
    (quick: the default ARMD's: l2r and random, as progressive training draws them, and SBP)."""
    gen = torch.Generator().manual_seed(0)
    out = {
        "l2r": l2r_order(batch, n)[1],
        "random": random_order(batch, n, generator=gen)[1],
        "sbp4": sbp_order(batch, n, streams=4)[1],
    }
    if not quick:
        out["diffusion64"] = diffusion_order(batch, n, steps=64, generator=gen)[1]
    return out


def run_backend(q, k, v, grad_out, spec, backend: str, dtype: torch.dtype):
    """Output and (dq, dk, dv) of one backend with inputs cast to dtype; None grads where unsupported."""
    q, k, v = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
    out = attend(q, k, v, prepare(spec, backend, q.device, dtype))
    out.backward(grad_out.to(dtype))
    return out.detach(), (q.grad, k.grad, v.grad)


def cmd_kernels(args) -> int:
    device = torch.device("cuda")
    b, h, n, d = 2, args.heads, args.seq_len, args.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    backends = ["sdpa", "flex"] + (["flash"] if flash_available() else [])
    if "flash" not in backends:
        print("gpu_check: flash_attn is not installed: flash checks skipped")
    cases = []
    for kind, block in orders(b, n, device, args.quick).items():
        block = block.to(device)
        for name, make in (("causal", causal_spec), ("strict", strict_spec), ("two_stream", two_stream_spec)):
            cases.append((f"{kind}/{name}", make(block)))
    if not args.quick:
        cases.append(("full", full_spec(b, n, device)))
    failures = 0
    scope = "quick: the default ARMD's masks" if args.quick else "every pattern"
    print(f"attention kernels ({scope}): B={b} H={h} N={n} D={d}; relative error vs float32 sdpa (forward | dq dk dv)")
    print(f"{'pattern':24s} {'backend':6s} {'forward':>9s} {'dq':>9s} {'dk':>9s} {'dv':>9s}  result")
    for label, spec in cases:
        q_len, k_len = spec.shape[1], spec.shape[2]
        # bf16-rounded inputs, so the reference sees exactly what the bf16 kernels see
        q, k, v = (
            torch.randn(b, h, t, d, device=device, generator=gen).to(torch.bfloat16).float()
            for t in (q_len, k_len, k_len)
        )
        grad_out = torch.randn(b, h, q_len, d, device=device, generator=gen).to(torch.bfloat16).float()
        ref_out, ref_grads = run_backend(q, k, v, grad_out, spec, "sdpa", torch.float32)
        flash_ok = spec.pattern == "full" or (spec.single_token_blocks and spec.pattern != "general")
        for backend in backends:
            if backend == "flash" and not flash_ok:
                continue
            try:
                out, grads = run_backend(q, k, v, grad_out, spec, backend, torch.bfloat16)
            except Exception as exc:  # a backend that cannot run a pattern it claims is a failure
                failures += 1
                print(f"{label:24s} {backend:6s} ERROR {type(exc).__name__}: {exc}")
                continue
            errs = [rel_err(out, ref_out)] + [rel_err(g, r) for g, r in zip(grads, ref_grads, strict=True)]
            nan = any(torch.isnan(t).any().item() for t in (out, *grads))
            bad = nan or max(errs) > args.tol
            failures += bad
            print(
                f"{label:24s} {backend:6s} "
                + " ".join(f"{e:9.2e}" for e in errs)
                + ("  NaN" if nan else "")
                + ("  MISMATCH" if bad else "  ok")
            )
    failures += whole_model(device, backends, args.tol, args.quick)
    print(f"kernel checks: {'all passed' if not failures else f'{failures} FAILED'} (tolerance {args.tol:g})")
    return 1 if failures else 0


@torch.no_grad()
def whole_model(device: torch.device, backends: list[str], tol: float, quick: bool = False) -> int:
    """Logits of one ARMD model (bf16; the default query input) under each backend vs the float32 sdpa
    model, per order kind (quick: l2r and SBP)."""
    n, b = 512, 2
    cfg = ModelConfig(arch="armd", vocab_size=4096, n_layers=4, d_model=512, n_heads=8, max_seq_len=n)
    torch.manual_seed(0)
    ref_model = build_model(cfg).to(device).eval()
    tokens = torch.randint(0, cfg.vocab_size, (b, n), device=device)
    gen = torch.Generator().manual_seed(1)
    cases = {
        "l2r": l2r_order(b, n),
        "sbp4": sbp_order(b, n, streams=4),
        "diffusion64": diffusion_order(b, n, steps=64, generator=gen),
    }
    if quick:
        del cases["diffusion64"]
    failures = 0
    print(
        f"whole ARMD model (L={cfg.n_layers}, d={cfg.d_model}, N={n}, query input {cfg.query_input}) in bf16 vs "
        "float32 sdpa: relative logit error"
    )
    for kind, (order, block) in cases.items():
        order, block = order.to(device), block.to(device)
        ref = ref_model(tokens, order, block).float()
        for backend in backends:
            if backend == "flash" and kind != "l2r":
                continue
            model = build_model(ModelConfig(**{**vars(cfg), "attention_backend": backend})).to(device)
            model.load_state_dict(ref_model.state_dict())
            model = model.to(torch.bfloat16).eval()
            out = model(tokens, order, block).float()
            err = rel_err(out, ref)
            bad = bool(torch.isnan(out).any()) or err > tol
            failures += bad
            print(f"  {kind:12s} {backend:6s} {err:9.2e}  {'MISMATCH' if bad else 'ok'}")
    return failures


# -- report ----------------------------------------------------------------------------------------------


def speed_row(run: Path, skip: int, device: str) -> dict | None:
    """Median step time after the first `skip` steps, tokens/s, MFU and peak memory of one training run's
    metrics; None when it logged no step after `skip`. Peak memory: the largest
    `memory/max_allocated_gb` (torch.cuda.max_memory_allocated, GiB) the run logged, or on the CPU the
    largest `memory/rss_gb`; `memory_kind` says which."""
    cfg = load_config(run / "config.yaml")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [m["step_time_s"] for m in metrics if "step_time_s" in m and m["step"] > skip]
    if not times:
        return None
    median = statistics.median(times)
    tokens_per_s = cfg.train.global_batch_size * cfg.data.seq_len / median
    flops = training_flops_per_token(cfg.model, cfg.data.seq_len)
    peak = peak_flops(device, cfg.parallel.precision)
    memory_kind = next((k for k in ("memory/max_allocated_gb", "memory/rss_gb") if any(k in m for m in metrics)), None)
    return {
        "arch": cfg.model.arch,
        "backend": cfg.model.attention_backend,
        "steps_timed": len(times),
        "median_step_s": median,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / peak if peak else None,
        "train_flops_per_token": flops,
        "peak_memory_gb": max(m[memory_kind] for m in metrics if memory_kind in m) if memory_kind else None,
        "memory_kind": {"memory/max_allocated_gb": "cuda", "memory/rss_gb": "rss", None: None}[memory_kind],
    }


def cmd_report(args) -> int:
    runs = sorted(p for p in args.runs.iterdir() if (p / "metrics.jsonl").exists())
    if not runs:
        print(f"gpu_check: no training runs with metrics under {args.runs}", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown device"
    rows, step_time = [], {}
    for run in runs:
        row = speed_row(run, args.skip, device)
        if row is None:
            print(f"gpu_check: {run} logged no steps after the first {args.skip}", file=sys.stderr)
            return 1
        step_time[(row["arch"], row["backend"])] = row["median_step_s"]
        rows.append(row)
        cfg = load_config(run / "config.yaml")
    for row in rows:
        ar = step_time.get(("ar", row["backend"]))
        row["armd_over_ar"] = step_time[("armd", row["backend"])] / ar if row["arch"] == "armd" and ar else None
    m = cfg.model
    lines = [
        f"Device: {device}. Model {m.n_layers} x {m.d_model} x {m.n_heads} heads, vocab {m.vocab_size}, "
        f"{cfg.parallel.precision}, ZeRO-{cfg.parallel.zero_stage}, global batch {cfg.train.global_batch_size} x "
        f"{cfg.data.seq_len}, micro-batch {cfg.train.micro_batch_size}; median over steps > {args.skip}.",
        "",
        "| backend | arch | median step (s) | tokens/s | MFU | armd/ar step time | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["backend"], r["arch"])):
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak)"
        ratio = f"{r['armd_over_ar']:.2f}x" if r["armd_over_ar"] else ""
        memory = (
            ""
            if r["peak_memory_gb"] is None
            else f"{r['peak_memory_gb']:.2f}" + (" (RSS)" if r["memory_kind"] == "rss" else "")
        )
        lines.append(
            f"| {r['backend']} | {r['arch']} | {r['median_step_s']:.3f} | {r['tokens_per_s']:,.0f} | {mfu} | {ratio} "
            f"| {memory} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    (args.runs.parent / "report.md").write_text(text)
    (args.runs.parent / "report.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="is there a CUDA device?")
    kern = sub.add_parser("kernels", help="flex and flash against sdpa in bf16")
    kern.add_argument("--seq-len", type=int, default=1024)
    kern.add_argument("--heads", type=int, default=12)
    kern.add_argument("--head-dim", type=int, default=64)
    kern.add_argument("--tol", type=float, default=2e-2)
    kern.add_argument("--quick", action="store_true", help="only the default ARMD's masks (gpu_check.sh --quick)")
    rep = sub.add_parser("report", help="tokens/s and MFU of the training runs")
    rep.add_argument("--runs", type=Path, required=True)
    rep.add_argument("--skip", type=int, default=5, help="first steps left out (compilation, warm-up)")
    args = ap.parse_args(argv)
    if args.cmd in ("kernels",) and not torch.cuda.is_available():
        return cmd_env(args)
    return {"env": cmd_env, "kernels": cmd_kernels, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
