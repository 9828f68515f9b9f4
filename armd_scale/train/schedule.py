"""Learning-rate schedule: linear warm-up, then cosine, linear, constant or warmup-stable-decay (wsd).

wsd holds the peak lr and decays only at the end (MiniCPM, Hu et al. 2024; OLMo-core's WSD), so a run can be
extended while stable, or cooled down from any checkpoint of its stable phase: resume it with a larger
train.steps and train.decay_start set to the step the decay begins at (docs/TRAINING.md).
"""

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
    if cfg.lr_schedule == "wsd":
        return _wsd_factor(step, cfg)
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    if cfg.lr_schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress)  # linear


def decay_begins(cfg: TrainConfig) -> int:
    """The optimizer step at which a wsd schedule leaves its stable phase (never inside the warm-up)."""
    start = cfg.decay_start or cfg.steps - round(cfg.decay_fraction * cfg.steps)
    return max(start, cfg.warmup_steps)


def _wsd_factor(step: int, cfg: TrainConfig) -> float:
    start = decay_begins(cfg)
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, cfg.steps - start))
    floor = cfg.min_lr_ratio
    if cfg.decay_shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.decay_shape == "sqrt":  # 1 - sqrt: the cool-down shape Hägele et al. (2024) found best for WSD
        remaining = 1.0 - math.sqrt(progress)
    else:
        remaining = 1.0 - progress
    return floor + (1.0 - floor) * remaining


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
