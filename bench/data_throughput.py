"""Loader throughput: tokens/s that `ShardLoader` delivers from local shards.

Writes a synthetic shard set (random ids, so no tokenizer time is measured), then iterates one
epoch per configuration and prints a Markdown table. Every read includes the SHA-256 check and
decoding of each chunk, as in training.

    python bench/data_throughput.py [--samples 20000] [--seq-len 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# armd_scale.data.loading.loader is imported inside functions: worker processes are spawned and re-import
# this file, and they should start as light as they do under `armd train` (no torch import).


def write_set(
    url: str, samples: int, seq_len: int, samples_per_shard: int, vocab: int, chunk_samples: int | None = None
) -> None:
    from armd_scale.data.prepare.shard_writer import ShardSetWriter

    rng = np.random.default_rng(0)
    writer = ShardSetWriter(
        url, "train", seq_len, vocab, "bench" * 12 + "0000", samples_per_shard, None, chunk_samples=chunk_samples
    )
    for start in range(0, samples, samples_per_shard):
        n = min(samples_per_shard, samples - start)
        writer.add_samples(rng.integers(4, vocab, size=(n, seq_len)))
    writer.finish()


def one_epoch(url: str, *, workers: int, prefetch: int, world: int, gbs: int, mbs: int) -> tuple[float, float, int]:
    """(startup seconds, steady seconds, steady tokens) for rank 0 reading one epoch with a fresh
    loader: startup is construction to first batch (worker start and first shard included),
    steady is the rest of the epoch."""
    from armd_scale.data.loading.loader import ShardLoader

    start = time.perf_counter()
    mbs = min(mbs, gbs // world)
    with ShardLoader(
        url,
        global_batch_size=gbs,
        micro_batch_size=mbs,
        rank=0,
        world_size=world,
        seed=0,
        num_workers=workers,
        prefetch=prefetch,
        loop=False,
    ) as loader:
        it = iter(loader)
        next(it)
        first = time.perf_counter()
        tokens = sum(batch.numel() for batch in it)
        end = time.perf_counter()
    return first - start, end - first, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--samples-per-shard", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", help="where to write the shards (default: a temporary directory)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.dir or os.path.join(tmp, "bench")
        t0 = time.perf_counter()
        write_set(url, args.samples, args.seq_len, args.samples_per_shard, args.vocab)
        write_s = time.perf_counter() - t0
        shards = -(-args.samples // args.samples_per_shard)
        size_mb = sum(p.stat().st_size for p in Path(url).glob("*.tar")) / 2**20
        configs = [
            ("0 workers, no prefetch", dict(workers=0, prefetch=0, world=1)),
            ("0 workers, prefetch 4", dict(workers=0, prefetch=4, world=1)),
            ("2 workers, prefetch 4", dict(workers=2, prefetch=4, world=1)),
            ("rank 0 of 8, 0 workers, prefetch 4", dict(workers=0, prefetch=4, world=8)),
            ("rank 0 of 8, 2 workers, prefetch 4", dict(workers=2, prefetch=4, world=8)),
        ]
        cpu = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
        print(
            f"Shards: {shards} x {args.samples_per_shard} samples x {args.seq_len} tokens (uint16), "
            f"{size_mb:.0f} MiB, written in {write_s:.1f}s. Global batch {args.global_batch}, micro-batch "
            f"{args.micro_batch} (8 with 8 ranks); median of {args.repeats} epochs; machine: {cpu}.\n"
        )
        print("| configuration | tokens/s after the first batch (rank 0) | first batch after (s) |")
        print("| --- | ---: | ---: |")
        for name, cfg in configs:
            runs = [one_epoch(url, gbs=args.global_batch, mbs=args.micro_batch, **cfg) for _ in range(args.repeats)]
            startup = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[2] / r[1] for r in runs)
            print(f"| {name} | {rate:,.0f} | {startup:.2f} |", flush=True)


if __name__ == "__main__":
    main()
