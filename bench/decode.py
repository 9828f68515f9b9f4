"""Decoding throughput: no-cache vs KV cache vs SBP (S = 2, 4, 8), all in one run.

    python bench/decode.py                       # default tiny config, max_seq_len raised to 512
    python bench/decode.py --lengths 256 512 --batch 1 --repeats 3 --threads 1

Every method samples the same model with the same seed. Repeats are interleaved (one run of every
method, then the next round) so that load from other processes on a shared machine hits all
methods alike, and the best wall time is kept; CPU seconds (process time) are shown beside it as a
load-independent check. Ratios use wall time: against the no-cache sampler (speedup) and against
cached sequential decoding S=1 (the SBP wall-time ratio). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
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
    parser.add_argument("--repeats", type=int, default=5, help="rounds for the cached methods (best is kept)")
    parser.add_argument("--no-cache-repeats", type=int, default=1, help="rounds for the slow no-cache baseline")
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
        f"({platform.machine()}), load average at start {load:.1f}\n"
    )
    print("| N | method | forward calls | wall s | CPU s | tokens/s | speedup vs no-cache | wall vs cache S=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.lengths:
        seq = sequential_plan(n, args.batch)
        methods = {"no-cache": lambda: generate(model, seq, seed=0, use_cache=False)}
        methods["cache S=1"] = lambda: generate(model, seq, seed=0)
        for s in streams:
            methods[f"SBP S={s}"] = lambda plan=sbp_plan(n, s, args.batch): generate(model, plan, seed=0)
        for name, fn in methods.items():  # warm-up of the cached paths (allocator, lazy init)
            if name != "no-cache":
                fn()
        best: dict[str, tuple[float, float, int]] = {}
        for round_ in range(max(args.repeats, args.no_cache_repeats)):
            for name, fn in methods.items():
                if round_ >= (args.no_cache_repeats if name == "no-cache" else args.repeats):
                    continue
                run = _timed(fn)
                if name not in best or run[0] < best[name][0]:
                    best[name] = run
        base, s1 = best["no-cache"][0], best["cache S=1"][0]
        for name, (wall, cpu, calls) in best.items():
            print(
                f"| {n} | {name} | {calls} | {wall:.3f} | {cpu:.3f} | {args.batch * n / wall:,.0f} | "
                f"{base / wall:.1f}x | {wall / s1:.2f} |"
            )


if __name__ == "__main__":
    main()
