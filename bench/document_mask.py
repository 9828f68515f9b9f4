"""Training step time with and without document masking (data.document_mask), tiny-cpu preset (CPU).

Forward + backward + AdamW step of one ARMD model on the same packed windows, with document ids
(`forward(..., doc=)`) and without, interleaved so machine noise hits both; median ratio. Under the
l2r order the unmasked step runs sdpa's fused causal kernels and the masked one a dense mask, so
that is where document masking costs most on the CPU; under a random order both use dense masks.

    python bench/document_mask.py --threads 1 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from armd_scale.config import load_config
from armd_scale.model import build_model, order_loss
from armd_scale.model.generation_orders import make_order
from armd_scale.model.masks import document_ids

EOS = 3


def packed_windows(batch: int, seq_len: int, mean_doc: int, gen: torch.Generator) -> torch.Tensor:
    """Random ids with an EOS ending a document about every `mean_doc` tokens."""
    tokens = torch.randint(4, 512, (batch, seq_len), generator=gen)
    tokens[torch.rand(batch, seq_len, generator=gen) < 1.0 / mean_doc] = EOS
    return tokens


def step_time(model, opt, tokens, order, block, doc) -> float:
    t0 = time.perf_counter()
    loss = order_loss(model(tokens, order, block, doc), tokens, order)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def measure(kind: str, batch: int, seq_len: int, mean_doc: int, repeats: int, warmup: int) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = load_config("tiny-cpu")
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    tokens = packed_windows(batch, seq_len, mean_doc, gen)
    order, block = make_order(kind, batch, seq_len, generator=gen)
    doc = document_ids(tokens, EOS)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(warmup + repeats):
        pair = (("off", None), ("on", doc))
        for name, d in pair if i % 2 else pair[::-1]:  # alternate which runs first
            t = step_time(model, opt, tokens, order, block, d)
            if i >= warmup:
                times[name].append(t)
    return statistics.median(times["off"]), statistics.median(times["on"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mean-doc", type=int, default=32, help="mean document length in tokens")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, repeats={args.repeats} (median), warmup={args.warmup}, torch {torch.__version__}")
    print("| order | off step (s) | on step (s) | on/off |")
    print("|---|---|---|---|")
    for kind in ("l2r", "random"):
        off, on = measure(kind, 8, 128, args.mean_doc, args.repeats, args.warmup)
        print(f"| {kind} | {off:.4f} | {on:.4f} | {on / off:.2f}x |")


if __name__ == "__main__":
    main()
