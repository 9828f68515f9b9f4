"""How random the loader's sample order is: which shards and regions a global batch draws from,
and how much consecutive steps repeat the same neighbourhood of the data.

No data is read: the order is computed from the shard geometry alone. The metrics, per global
batch of one epoch:

- shards per batch: distinct shards the G samples come from;
- regions per batch: distinct 128 KiB regions (runs of `--region` consecutive records of a shard);
- near the previous batch: fraction of step k+1's samples that lie within `--region` records of a
  sample of step k in the same shard (the same document neighbourhood on consecutive steps);
- regions reused: fraction of step k+1's regions that step k also drew from.

A full shuffle of all samples is the chunked order with chunks of one sample and windows of one.

    python bench/order_randomness.py [--tree PATH_OF_ANOTHER_CHECKOUT]

With `--tree` pointing at a checkout from before chunked reads, it measures that loader's
shard-by-shard order (`GlobalOrder`, in `armd_scale.data.sample_order` or, older still,
`armd_scale.data.order`) instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np


def batches_chunked(sizes: list[int], chunk: int, window_chunks: int, gbs: int, seed: int, epoch: int):
    """(shard, row) of every place of every step, [steps, G] each, for the chunked order."""
    from armd_scale.data.loading.sample_order import ChunkTable, SampleOrder

    table = ChunkTable.of(sizes, chunk)
    order = SampleOrder([table], [table.num_samples], seed=seed, global_batch_size=gbs, window=window_chunks * chunk)
    keys, rows = order.epoch_matrix(epoch)
    return table.shard[keys], table.first[keys] + rows


def batches_by_shard(sizes: list[int], gbs: int, seed: int, epoch: int):
    """The same for the shard-by-shard order of the loader before chunked reads."""
    module = importlib.import_module("armd_scale.data.sample_order")
    if not hasattr(module, "GlobalOrder"):  # before the module was renamed
        module = importlib.import_module("armd_scale.data.order")
    order = module.GlobalOrder(sizes, seed)
    steps = order.num_samples // gbs
    shard = np.empty((steps, gbs), dtype=np.int64)
    row = np.empty((steps, gbs), dtype=np.int64)
    for k in range(steps):
        col = 0
        for _, s, idx in order.locate(epoch, k * gbs, (k + 1) * gbs):
            shard[k, col : col + len(idx)] = s
            row[k, col : col + len(idx)] = idx
            col += len(idx)
    return shard, row


def near_previous(position: np.ndarray, region: int) -> float:
    """Fraction of each step's samples within `region` of a sample of the step before."""
    near = []
    for before, after in zip(position[:-1], position[1:], strict=True):
        ref = np.sort(before)
        i = np.clip(np.searchsorted(ref, after), 1, len(ref) - 1)
        gap = np.minimum(np.abs(after - ref[i - 1]), np.abs(ref[i] - after))
        near.append(np.mean(gap < region))
    return float(np.mean(near))


def metrics(shard: np.ndarray, row: np.ndarray, region: int) -> dict[str, float]:
    position = shard * 10**9 + row  # one line of all shards, far apart
    regions = shard * 10**9 + row // region
    pairs = zip(regions[:-1], regions[1:], strict=True)
    reused = [len(set(a.tolist()) & set(b.tolist())) / len(set(b.tolist())) for a, b in pairs]
    return {
        "shards": float(np.mean([len(set(s.tolist())) for s in shard])),
        "shards_min": float(min(len(set(s.tolist())) for s in shard)),
        "regions": float(np.mean([len(set(r.tolist())) for r in regions])),
        "near": near_previous(position, region),
        "reused": float(np.mean(reused)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", help="another checkout whose order to measure")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--gbs", type=int, default=64)
    ap.add_argument("--region", type=int, default=51, help="records per region (51 = 128 KiB at seq_len 1024)")
    ap.add_argument("--window-chunks", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    sizes = [args.per_shard] * args.shards
    chunked = importlib.util.find_spec("armd_scale.data.loading.sample_order") is not None
    if chunked:
        variants = {
            f"chunks of {args.region}, windows of {args.window_chunks} chunks (default)": (
                args.region,
                args.window_chunks,
            ),
            f"chunks of {args.region}, windows of 1 chunk": (args.region, 1),
            f"chunks of {args.region}, windows of 16 chunks": (args.region, 16),
            "full shuffle (chunks of 1 sample, windows of 1)": (1, 1),
        }
        runs = {
            name: [batches_chunked(sizes, c, w, args.gbs, seed=0, epoch=e) for e in range(args.epochs)]
            for name, (c, w) in variants.items()
        }
    else:
        runs = {
            "shard by shard (before chunked reads)": [
                batches_by_shard(sizes, args.gbs, 0, e) for e in range(args.epochs)
            ]
        }
    print(
        f"{args.shards} shards x {args.per_shard} samples, global batch {args.gbs}, regions of {args.region} records, "
        f"mean over {args.epochs} epochs\n"
    )
    print("| order | shards per batch (mean / min) | regions per batch | near the previous batch | regions reused |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, epochs in runs.items():
        ms = [metrics(s, r, args.region) for s, r in epochs]
        m = {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}
        print(
            f"| {name} | {m['shards']:.1f} / {m['shards_min']:.0f} | {m['regions']:.1f} | "
            f"{100 * m['near']:.1f}% | {100 * m['reused']:.1f}% |"
        )


if __name__ == "__main__":
    main()
