"""How tight is the mdlm baseline's bound? A tiny mdlm trained on a Markov chain with a known law.

Trains the model of tests/model/test_mdlm.py (2 layers, d=64, N=16, vocab 8, order-1 chain with
Dirichlet(0.3) rows) for increasing step budgets and prints, per token on 512 held-out sequences:
the training loss (mean of the last 50 steps), the continuous-time NELBO, the T-step NELBO for a few
T, and the exact NLL of the same sequences under the source. Every bound must sit above the source
NLL; how far above is the model's error plus the bound's gap.

    python bench/mdlm_bound.py [--steps 250 500 1000 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armd_scale.config import ModelConfig  # noqa: E402
from armd_scale.data.prepare.corpora import MarkovSource  # noqa: E402
from armd_scale.model import build_model  # noqa: E402
from armd_scale.model import masked_diffusion as md  # noqa: E402

N, VOCAB, BATCH = 16, 8, 64


def source_nll(source: MarkovSource, seqs: torch.Tensor) -> torch.Tensor:
    x = seqs.numpy()
    logp = torch.log(torch.from_numpy(source.stationary()[x[:, 0]]))
    trans = torch.log(torch.from_numpy(source.transitions))
    for t in range(1, x.shape[1]):
        logp += trans[x[:, t - 1], x[:, t]]
    return -logp


def train(steps: int, data: torch.Tensor) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mdlm", vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, max_seq_len=N, init_std=0.02)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss = model.loss(data[torch.randint(0, len(data), (BATCH,), generator=gen)], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def bound(model, val: torch.Tensor, steps: int, draws: int) -> float:
    gen = torch.Generator().manual_seed(5)
    total = torch.zeros(len(val), dtype=torch.float64)
    for _ in range(draws):
        rates = md.stratified_rates(len(val), steps, gen)
        total += md.nelbo_estimate(
            model, val, rates, torch.rand(val.shape, generator=gen, dtype=torch.float64), model.mask_id
        ).double()
    return (total / draws).mean().item() / N


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--draws", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = MarkovSource(VOCAB, 1, seed=0, concentration=0.3)
    data = torch.from_numpy(source.sample(20000, N, seed=1))
    val = torch.from_numpy(source.sample(512, N, seed=2))
    nll = source_nll(source, val).mean().item() / N
    print(
        f"source: entropy rate {source.entropy_rate():.4f}, "
        f"sequence entropy / N {source.sequence_entropy(N) / N:.4f}, "
        f"exact NLL of the 512 validation sequences {nll:.4f} nats/token\n"
    )
    print(
        "| steps | train loss (last 50) | NELBO cont. | NELBO T=128 | NELBO T=16 | NELBO T=4 | cont. - source NLL | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        start = time.perf_counter()
        model, losses = train(steps, data)
        cont = bound(model, val, 0, args.draws)
        row = [bound(model, val, t, args.draws) for t in (128, 16, 4)]
        print(
            f"| {steps} | {sum(losses[-50:]) / len(losses[-50:]):.4f} | {cont:.4f} | "
            + " | ".join(f"{r:.4f}" for r in row)
            + f" | {cont - nll:+.4f} | {time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
