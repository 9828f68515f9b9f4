"""Training step time of ARMD vs the AR baseline of the same depth and width (CPU).

Measures forward + backward + AdamW step, interleaving the two archs so machine noise hits both,
and reports the median ratio. Theory (flops.py) predicts about 1.2x for L=4 and 1.3-1.45x for deeper
models (all but the last two-stream layer run two query streams).

    python bench/train_step.py                 # tiny-cpu preset and L=6, d=256, N=256
    python bench/train_step.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from armd_scale.config import load_config
from armd_scale.model import build_model, order_loss
from armd_scale.model.flops import training_flops_per_token
from armd_scale.model.generation_orders import make_order

SETTINGS = {
    "tiny-cpu (L=4, d=128, N=128, B=8)": (["model.max_seq_len=128"], 128, 8),
    "L=6, d=256, N=256, B=4": (
        ["model.n_layers=6", "model.d_model=256", "model.n_heads=8", "model.max_seq_len=256"],
        256,
        4,
    ),
}


def step_time(model, opt, tokens, order, block) -> float:
    t0 = time.perf_counter()
    loss = order_loss(model(tokens, order, block), tokens, order)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def measure(overrides: list[str], seq_len: int, batch: int, repeats: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    models = {}
    for arch in ("armd", "ar"):
        cfg = load_config(overrides=[*overrides, f"model.arch={arch}"])
        model = build_model(cfg.model)
        models[arch] = (cfg, model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    tokens = torch.randint(0, 512, (batch, seq_len))
    order, block = make_order("l2r", batch, seq_len)
    times = {"armd": [], "ar": []}
    for i in range(warmup + repeats):
        for arch, (_, model, opt) in models.items():
            t = step_time(model, opt, tokens, order, block)
            if i >= warmup:
                times[arch].append(t)
    armd, ar = statistics.median(times["armd"]), statistics.median(times["ar"])
    flops = training_flops_per_token(models["armd"][0].model, seq_len) / training_flops_per_token(
        models["ar"][0].model, seq_len
    )
    return {"armd_s": armd, "ar_s": ar, "ratio": armd / ar, "flop_ratio": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, repeats={args.repeats} (median), torch {torch.__version__}\n")
    print("| setting | armd step (s) | ar step (s) | armd/ar time | armd/ar FLOPs |")
    print("|---|---|---|---|---|")
    for name, (overrides, seq_len, batch) in SETTINGS.items():
        r = measure(overrides, seq_len, batch, args.repeats, args.warmup)
        print(f"| {name} | {r['armd_s']:.4f} | {r['ar_s']:.4f} | {r['ratio']:.2f}x | {r['flop_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
