"""Decoding throughput: no-cache vs KV cache vs SBP (S = 2, 4, 8), all in one run.

    python bench/decode.py                       # default tiny config, max_seq_len raised to 512
    python bench/decode.py --lengths 256 512 --batch 1 --warmup 1 --repeats 5 --threads 1

Every method samples the same model with the same seed and gets the same treatment: `--warmup`
untimed runs, then `--repeats` timed runs. Runs are interleaved (one run of every method, then the
next round) so that load from other processes on a shared machine hits all methods alike. The table
gives the median and the best wall time of each method, and the median CPU seconds (process time)
as a load-independent check. Ratios use median wall times: against the no-cache sampler (speedup)
and against cached sequential decoding S=1 (the SBP wall-time ratio). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import torch

from armd_scale.config import load_config
from armd_scale.generate import generate, sbp_plan, sequential_plan
from armd_scale.model import build_model


def _timed(fn) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result.forward_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config preset or YAML (default: tiny-cpu)")
    parser.add_argument("--arch", default="armd", choices=["armd", "ar"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--streams", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of every method first")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of every method")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: decoding steps are too small to gain from more)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    max_len = max([load_config(args.config).model.max_seq_len, *args.lengths])
    cfg = load_config(args.config, [f"model.max_seq_len={max_len}", f"model.arch={args.arch}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    streams = [] if args.arch == "ar" else args.streams
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model: arch={args.arch} layers={cfg.model.n_layers} d_model={cfg.model.d_model} "
        f"vocab={cfg.model.vocab_size} params={model.num_params() / 1e6:.2f}M; batch={args.batch}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs "
        f"({platform.machine()}), load average at start {load:.1f}; {args.warmup} warm-up and "
        f"{args.repeats} timed runs of every method\n"
    )
    print(
        "| N | method | forward calls | median wall s | best wall s | median CPU s | tokens/s (median) "
        "| speedup vs no-cache | wall vs cache S=1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.lengths:
        seq = sequential_plan(n, args.batch)
        methods = {
            "no-cache": functools.partial(generate, model, seq, seed=0, use_cache=False),
            "cache S=1": functools.partial(generate, model, seq, seed=0),
        }
        for s in streams:
            methods[f"SBP S={s}"] = functools.partial(generate, model, sbp_plan(n, s, args.batch), seed=0)
        for _ in range(args.warmup):  # the same untimed runs for every method (allocator, lazy init)
            for fn in methods.values():
                fn()
        runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                runs[name].append(_timed(fn))
        median = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
        base, s1 = median["no-cache"], median["cache S=1"]
        for name, rs in runs.items():
            wall, best = median[name], min(r[0] for r in rs)
            cpu, calls = statistics.median(r[1] for r in rs), rs[0][2]
            print(
                f"| {n} | {name} | {calls} | {wall:.3f} | {best:.3f} | {cpu:.3f} | {args.batch * n / wall:,.0f} | "
                f"{base / wall:.1f}x | {wall / s1:.2f} |"
            )


if __name__ == "__main__":
    main()
