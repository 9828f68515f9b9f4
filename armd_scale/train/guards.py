"""The state a run's guards keep across steps, and the statistics they judge a step by: the NaN streak, the
loss spike (a ratio to the running mean), the gradient-norm spike (standard deviations over a window), and
the finite divergence (far above the best running mean). `TrainingRun` (steps.py) acts on the verdicts:
skips, logs, sets checkpoints aside, raises `TrainingDiverged`. The state is saved with every checkpoint
(`to_dict`), so a resumed run judges its next step by the same statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import TrainConfig


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss, or with a loss far above its best level."""


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps completed
    bad_steps: int = 0  # consecutive non-finite steps
    loss_ema: float | None = None
    wandb_run_id: str | None = None
    best_loss_ema: float | None = None  # the lowest running mean so far: the sane level of the loss
    high_steps: int = 0  # consecutive finite steps with a loss far above best_loss_ema
    high_since: int = 0  # the first step of that streak (0: none)
    spike_steps: int = 0  # consecutive spikes whose updates were skipped (train.spike_action=skip)
    spike_since: int = 0  # the first step of that streak (0: none)
    grad_norms: list[float] = field(default_factory=list)  # the last train.grad_spike_window accepted norms

    def to_dict(self) -> dict:
        return dict(
            step=self.step,
            bad_steps=self.bad_steps,
            loss_ema=self.loss_ema,
            wandb_run_id=self.wandb_run_id,
            best_loss_ema=self.best_loss_ema,
            high_steps=self.high_steps,
            high_since=self.high_since,
            spike_steps=self.spike_steps,
            spike_since=self.spike_since,
            grad_norms=list(self.grad_norms),
        )

    def is_loss_spike(self, step_loss: float, train_cfg: TrainConfig) -> bool:
        """A finite loss above train.spike_factor x the running mean of the losses before it."""
        ema = self.loss_ema
        return ema is not None and math.isfinite(step_loss) and step_loss > train_cfg.spike_factor * ema

    def is_grad_norm_spike(self, norm: float, train_cfg: TrainConfig) -> bool:
        """A finite gradient norm more than train.grad_spike_sigma standard deviations above the mean of the
        last accepted norms, once half of train.grad_spike_window of them are known (0 sigma: off)."""
        window = self.grad_norms
        if not train_cfg.grad_spike_sigma or not math.isfinite(norm):
            return False
        if len(window) < max(2, train_cfg.grad_spike_window // 2):
            return False
        mean, std = _mean_std(window)
        return norm - mean > train_cfg.grad_spike_sigma * std

    def grad_norm_summary(self) -> str:
        mean, std = _mean_std(self.grad_norms)
        return f"mean {mean:.4g} and std {std:.3g} of the last {len(self.grad_norms)} accepted norms"

    def is_far_above_best(self, step_loss: float, train_cfg: TrainConfig) -> bool:
        """Whether a finite loss is far above the sane level of this run: its best running mean so far plus
        max(train.diverge_margin nats, train.diverge_ratio x that mean). One such step is noise or a spike;
        `diverge_steps` of them in a row are a divergence (`TrainingRun.diverged`)."""
        best = self.best_loss_ema
        if best is None or not train_cfg.diverge_steps:
            return False
        return step_loss > best + max(train_cfg.diverge_margin, train_cfg.diverge_ratio * abs(best))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1) of at least one value."""
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
