"""Validation during training: the objective's loss per token on the first validation batches."""

from __future__ import annotations

import torch

from ..config import Config
from .distributed import DistInfo, all_reduce_sum
from .objective import Objective
from .run_data import TrainData


@torch.no_grad()
def evaluate(
    engine, objective: Objective, data: TrainData, cfg: Config, dist_info: DistInfo, dp_rank: int, dp_world: int
) -> float | None:
    """The objective's validation loss per token (exact l2r NLL, or a negative ELBO for mdlm) on the
    first `train.eval_batches` validation micro-batches of every rank."""
    micro = cfg.train.micro_batch_size
    loader = data.val_loader(micro, dp_rank, dp_world)
    if loader is None:
        return None
    engine.eval()
    nll, count = 0.0, 0
    try:
        for i, tokens in enumerate(loader):
            if i >= cfg.train.eval_batches:
                break
            first_index = (i * dp_world + dp_rank) * micro  # this batch's position in the validation order
            batch_nll, batch_count = objective.eval_batch(engine, tokens.to(dist_info.device), first_index)
            nll += batch_nll
            count += batch_count
    finally:
        loader.close()
        engine.train()
    total, tokens_total = all_reduce_sum([nll, count], dist_info.device)
    return total / tokens_total if tokens_total else None
