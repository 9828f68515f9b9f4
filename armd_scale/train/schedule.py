"""Learning-rate schedule: linear warm-up, then cosine, linear or constant down to min_lr_ratio * lr."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    if cfg.lr_schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress)  # linear


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose state (its step count) is saved with the engine checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def set_lr_for_step(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    """Set every group's lr for optimizer step `step` from the config.

    A resumed optimizer carries the lr its old schedule computed; recomputing it lets a run resume with
    a changed schedule (say, more train.steps) and otherwise changes nothing.
    """
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(step, cfg)
