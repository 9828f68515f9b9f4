"""Which generation orders a training step uses.

Orders are a pure function of (seed, optimizer step): every rank draws the orders of the whole global
batch from one generator and takes its own rows. So the orders do not depend on the number of ranks,
a resumed run draws exactly what an uninterrupted one would, and no RNG state needs saving.
"""

from __future__ import annotations

import torch

from ..config import OrderConfig
from ..model.generation_orders import make_order, shuffled_count
from ..rng import integers, seeded


def step_generator(seed: int, step: int) -> torch.Generator:
    return seeded((seed * 1_000_003 + step) % (2**63))


def draw_step_orders(
    order_cfg: OrderConfig, *, step: int, global_batch: int, seq_len: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(order, block) for the global batch of optimizer step `step`, plus schedule state to log."""
    gen = step_generator(seed, step)
    kind = order_cfg.kind
    info: dict[str, float] = {}
    if kind == "sbp":
        choices = [s for s in order_cfg.streams]
        streams = choices[int(integers(len(choices), 1, generator=gen))]
        if seq_len % streams:
            raise ValueError(f"train.order.streams contains {streams}, which does not divide seq_len={seq_len}")
        order, block = make_order("sbp", global_batch, seq_len, streams=streams)
        info["order/streams"] = streams
    else:
        order, block = make_order(kind, global_batch, seq_len, generator=gen, step=step, **order_cfg.params())
        if kind == "progressive":
            info["order/shuffled"] = shuffled_count(
                step, ar_steps=order_cfg.ar_steps, rho=order_cfg.rho, ramp_end=order_cfg.ramp_end
            )
    return order, block, info
