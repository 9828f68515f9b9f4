"""What any-order validation and the validation samples cost, against a training step (docs/TRAINING.md,
"Validation in any order, and samples").

Times, on one thread with the plain model of a preset (no DeepSpeed, random tokens): a training step (the
global batch in micro-batches, forward and backward of random orders, AdamW), one validation kind
(`train.eval_batches` forward passes of a micro-batch, each sample under its own validation order, as
train/validation.py scores it) and the samples of one evaluation (train/eval_samples.py). Best of `--reps`,
so other load on the machine inflates the numbers less.

    OMP_NUM_THREADS=1 python bench/eval_cost.py [--preset tiny-cpu] [--reps 9]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from armd_scale.config import load_config
from armd_scale.model import build_model, order_loss, token_nll
from armd_scale.model.generation_orders import make_order
from armd_scale.rng import seeded
from armd_scale.train.eval_samples import EvalSamples
from armd_scale.train.validation import ValLikelihood


class _Say:
    is_main = True

    def message(self, text: str) -> None:
        print(text)


def best_of(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-cpu")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.preset, ["train.eval_samples=2"])
    t, n = cfg.train, cfg.data.seq_len
    micro, accum = t.micro_batch_size, t.global_batch_size // t.micro_batch_size
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, cfg.model.vocab_size, (micro, n))

    def step() -> None:
        model.train()
        for _ in range(accum):
            order, block = make_order("random", micro, n, generator=seeded(1))
            order_loss(model(tokens, order, block), tokens, order).backward()
        opt.step()
        opt.zero_grad()

    @torch.no_grad()
    def validate(kind: ValLikelihood | None) -> None:
        model.eval()
        for i in range(t.eval_batches):
            if kind is None:
                order = block = torch.arange(n).expand(micro, n)
            else:
                rows = [kind.order(i * micro + r, n, t.seed) for r in range(micro)]
                order, block = torch.stack([o for o, _ in rows]), torch.stack([b for _, b in rows])
            token_nll(model(tokens, order, block), tokens, order).sum()
        model.train()

    samples = EvalSamples(cfg, Path("/nonexistent"), None, _Say())  # type: ignore[arg-type]
    results = {
        "training step": best_of(step, args.reps),
        "validation l2r": best_of(lambda: validate(None), args.reps),
        "validation random": best_of(lambda: validate(ValLikelihood("random")), args.reps),
        "validation diffusion:64": best_of(lambda: validate(ValLikelihood("diffusion", 64)), args.reps),
        "samples (draw only)": best_of(lambda: samples.draw(model, 1), args.reps),
    }
    base = results["training step"]
    print(f"{args.preset}: micro {micro} x {t.eval_batches} eval batches, global batch {t.global_batch_size}")
    for name, seconds in results.items():
        print(f"{name:26s} {seconds * 1000:8.1f} ms  {seconds / base:5.2f} steps")


if __name__ == "__main__":
    main()
