"""A training run once set up (`TrainingRun`): the steps it takes, its metrics, validation, checkpoints
and the divergence guards; set up by `loop.py`.

    a step:   draw this step's orders or noise -> micro-batches (forward, backward) -> agree on NaN
              -> optimizer step -> metrics -> validation -> checkpoint -> stop if preempted or out of time

What a step minimises and what validation reports depend on the architecture family and live in
`objective.py` (orders and exact l2r NLL for armd/ar; masked-diffusion loss and ELBO for mdlm).

Everything a step does is a function of (config, step, data cursor), so a run stopped at step k and
resumed continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..checkpoints.layout import DIVERGED_SUFFIX, NONFINITE_SUFFIX, complete_tags, is_complete, tag_for
from ..config import Config
from ..data.loading.loader import ShardLoader
from ..model.flops import peak_flops, training_flops_per_token
from . import EXIT_PREEMPTED
from .checkpoint import Checkpointer
from .distributed import DistInfo, all_reduce_max, all_reduce_sum
from .ema import WeightEMA
from .engine import (
    BatchLayout,
    GuardedAdamW,
    first_nonfinite,
)
from .eval_samples import EvalSamples
from .guards import TrainerState, TrainingDiverged
from .metrics import MetricsLogger
from .objective import Objective
from .preemption import StopRequest
from .profiler import StepProfiler
from .run_data import TrainData, loader_state_of_all_ranks
from .validation import evaluate, validation_report


@dataclass
class TrainingRun:
    """Everything one training invocation holds, and the steps it takes."""

    cfg: Config
    dist: DistInfo
    layout: BatchLayout
    data: TrainData
    engine: Any  # deepspeed.DeepSpeedEngine
    optimizer: GuardedAdamW
    scheduler: Any
    loader: ShardLoader
    batches: Iterator[torch.Tensor]
    checkpointer: Checkpointer
    objective: Objective
    metrics: MetricsLogger
    profiler: StepProfiler
    state: TrainerState
    dp_rank: int
    dp_world: int
    unconfirmed_save: bool = False  # a checkpoint whose retention waits for the next finite loss
    ema: WeightEMA | None = None  # train.ema_decay > 0: the EMA of the weights (train/ema.py)
    samples: EvalSamples | None = None  # the validation samples' writer, made at the first validation

    def __post_init__(self) -> None:
        if self.cfg.train.grad_spike_sigma:  # asked inside every optimizer step (0: no gradient-norm guard)
            self.optimizer.norm_guard = self.skips_grad_norm

    def steps(self, stop: StopRequest) -> int:
        """Optimizer steps until train.steps, a stop request or train.stop_at_step; the exit code."""
        cfg = self.cfg
        if not self.finished and stop.should_stop(self.dist.device):  # requested during set-up: the engine exists now
            if not is_complete(self.checkpointer.dir / tag_for(self.state.step)):
                self.save()
            self.metrics.message(f"stopping at step {self.state.step} ({stop.reason}) before training; exit 75")
            return EXIT_PREEMPTED
        self.profiler.start()
        while self.state.step < cfg.train.steps:
            t0 = time.perf_counter()
            step_loss, step_info, data_wait, grad = self.optimizer_step()
            self.state.step += 1
            self.metrics.advance()
            self.profiler.step()
            self.record(step_loss, {**step_info, "data_wait_s": data_wait}, time.perf_counter() - t0, grad)
            if cfg.train.eval_every and (self.state.step % cfg.train.eval_every == 0 or self.finished):
                self.validate()
            if self.save_or_stop(stop):
                return EXIT_PREEMPTED
        return 0

    @property
    def finished(self) -> bool:
        return self.state.step >= self.cfg.train.steps

    def optimizer_step(self) -> tuple[float, dict[str, float], float, tuple[float | None, bool]]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss over the global batch, the
        objective's schedule state, seconds waited for data, (the global gradient norm the step saw,
        whether the gradient-norm guard skipped it))."""
        layout, device = self.layout, self.dist.device
        rows = slice(self.dp_rank * layout.local_batch, (self.dp_rank + 1) * layout.local_batch)
        step_info = self.objective.begin_step(self.state.step, rows, device)  # orders or noise, this rank's rows
        self.engine.train()
        # Summed on the device: one host sync per step, not per micro-batch.
        nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        data_wait, tokens_per_micro = 0.0, 0
        for micro in range(layout.grad_accum):
            tw = time.perf_counter()
            tokens = next(self.batches).to(device, non_blocking=True)
            data_wait += time.perf_counter() - tw
            tokens_per_micro = tokens.numel()
            mrows = slice(micro * layout.micro_batch, (micro + 1) * layout.micro_batch)
            # Per-micro mean; DeepSpeed divides by grad_accum and averages over data-parallel ranks,
            # so the update is the mean over every token of the global batch.
            loss = self.objective.micro_loss(self.engine, tokens, mrows)
            nll_sum += loss.detach().double() * tokens.numel()
            self.engine.backward(loss)
            if micro == layout.grad_accum - 1:
                # All ranks agree before the optimizer step whether to skip it: the global loss is NaN/inf
                # (a sum over ranks stays non-finite if any term is) or a spike. Read after the backward is
                # queued, so the GPU computes it while the host waits.
                total_nll, total_tokens = all_reduce_sum([float(nll_sum), tokens_per_micro * layout.grad_accum], device)
                step_loss = total_nll / total_tokens
                self.optimizer.skip_next = not math.isfinite(step_loss) or self.skips(step_loss)
            self.engine.step()
        grad = self.optimizer.end_step()  # after every inner call of the step (GuardedAdamW)
        return step_loss, step_info, data_wait, grad

    def is_spike(self, step_loss: float) -> bool:
        return self.state.is_loss_spike(step_loss, self.cfg.train)

    def skips(self, step_loss: float) -> bool:
        """Whether this step's update is skipped as a spike (train.spike_action=skip)."""
        return self.cfg.train.spike_action == "skip" and self.is_spike(step_loss)

    def is_grad_spike(self, norm: float) -> bool:
        return self.state.is_grad_norm_spike(norm, self.cfg.train)

    def skips_grad_norm(self, norm: float) -> bool:
        """The gradient-norm guard, asked inside the optimizer step (GuardedAdamW.norm_guard)."""
        return self.cfg.train.spike_action == "skip" and self.is_grad_spike(norm)

    def record(
        self, step_loss: float, extra: dict[str, Any], seconds: float, grad: tuple[float | None, bool] = (None, False)
    ) -> None:
        """The NaN/inf count, the spike checks and the running means; metrics on logging steps."""
        cfg, state = self.cfg, self.state
        norm, norm_skipped = grad
        if not math.isfinite(step_loss):
            state.bad_steps += 1
            self.metrics.message(
                f"step {state.step}: non-finite loss ({step_loss}); update skipped "
                f"({state.bad_steps}/{cfg.train.max_bad_steps})"
            )
            if state.bad_steps >= cfg.train.max_bad_steps:
                # Skipped updates leave the weights as they were before the streak: a checkpoint of that
                # step would repeat the streak whatever the lr, so it is set aside too (with those taken
                # since, if the loss had already left its sane range before it became non-finite).
                first = state.high_since or state.step - state.bad_steps + 1  # the first step of the divergence
                aside = self.checkpointer.set_aside_since(first - 1, NONFINITE_SUFFIX)
                raise TrainingDiverged(
                    f"loss was not finite for {state.bad_steps} consecutive steps, the last at step {state.step}; "
                    "lower train.lr, check the data, or raise train.max_bad_steps"
                    + (
                        " (the checkpoint of the weights that produced them is set aside as "
                        f"{', '.join(a.name for a in aside)})"
                        if aside
                        else ""
                    )
                )
            return
        state.bad_steps = 0
        if self.skips(step_loss):
            self.skipped_spike(
                f"loss spike {step_loss:.4f} vs running mean {state.loss_ema:.4f}", step_loss, seconds, extra
            )
            return
        if norm_skipped:
            assert norm is not None  # the guard only skips on a finite norm
            self.skipped_spike(
                f"gradient norm spike {norm:.4g} vs the {state.grad_norm_summary()}",
                step_loss,
                seconds,
                extra | {"grad_norm_spike": True},
            )
            return
        state.spike_steps, state.spike_since = 0, 0
        grad_spike = norm is not None and self.is_grad_spike(norm)  # only logged (spike_action=log)
        if grad_spike:
            self.metrics.message(
                f"step {state.step}: gradient norm spike {norm:.4g} vs the {state.grad_norm_summary()}"
            )
            extra = extra | {"grad_norm_spike": True}
        if norm is not None and math.isfinite(norm):
            state.grad_norms = (state.grad_norms + [norm])[-cfg.train.grad_spike_window :]  # the accepted ones
        far = self.far_above_best(step_loss)
        if far:
            state.high_steps += 1
            state.high_since = state.high_since or state.step
            if state.high_steps == 1:
                self.metrics.message(
                    f"step {state.step}: loss {step_loss:.4f} far above its best running mean "
                    f"{state.best_loss_ema:.4f}; older checkpoints are kept until it returns"
                )
        else:
            state.high_steps, state.high_since = 0, 0
            if self.unconfirmed_save:  # the last checkpoint's weights gave a finite, sane loss: older ones may go
                self.checkpointer.apply_retention()
                self.unconfirmed_save = False
        spike = self.is_spike(step_loss)
        if spike:
            self.metrics.message(f"step {state.step}: loss spike {step_loss:.4f} vs running mean {state.loss_ema:.4f}")
        state.loss_ema = step_loss if state.loss_ema is None else 0.9 * state.loss_ema + 0.1 * step_loss
        if state.best_loss_ema is None or state.loss_ema < state.best_loss_ema:
            state.best_loss_ema = state.loss_ema
        if state.step % cfg.train.log_every == 0 or self.finished or spike or grad_spike:
            self.metrics.log(state.step, self.step_metrics(step_loss, spike, seconds) | extra)
        window = cfg.train.diverge_steps
        if far and window and state.high_steps >= window:
            self.diverged(step_loss)

    def skipped_spike(self, what: str, step_loss: float, seconds: float, extra: dict[str, Any]) -> None:
        """A spike (`what`: of the loss or of the gradient norm) whose update was skipped: logged, kept out of
        the running means and the gradient-norm window; `max_spike_skips` in a row, of either kind, stop the
        run. The weights then give a spike on every batch, so they are bad themselves: the checkpoints of the
        weights that produced the first spike and since are set aside (`step_N.diverged`), and the newest
        checkpoint is again one from before it (saves during the streak kept older ones)."""
        state, train_cfg = self.state, self.cfg.train
        state.spike_steps += 1
        state.spike_since = state.spike_since or state.step
        self.metrics.message(
            f"step {state.step}: {what}; update skipped ({state.spike_steps}/{train_cfg.max_spike_skips})"
        )
        loss_spike = self.is_spike(step_loss)
        self.metrics.log(
            state.step, self.step_metrics(step_loss, loss_spike, seconds) | extra | {"update_skipped": True}
        )
        if state.spike_steps < train_cfg.max_spike_skips:
            return
        first = state.spike_since
        aside = self.checkpointer.set_aside_since(first - 1, DIVERGED_SUFFIX)
        tags = complete_tags(self.checkpointer.dir)
        spiked = (
            f"loss spiked above {train_cfg.spike_factor:g}x its running mean {state.loss_ema:.4f}"
            if loss_spike
            else f"gradient norm spiked above {train_cfg.grad_spike_sigma:g} sigma over its mean"
        )
        raise TrainingDiverged(
            f"{spiked} on {state.spike_steps} consecutive steps, from step {first} to step "
            f"{state.step} (updates skipped): "
            "the weights themselves are bad; "
            + (f"checkpoints set aside: {', '.join(a.name for a in aside)}; " if aside else "")
            + (f"the newest checkpoint is {tags[-1]}, from before the spikes; " if tags else "")
            + "resume with a lower train.lr, or check the data"
        )

    def far_above_best(self, step_loss: float) -> bool:
        return self.state.is_far_above_best(step_loss, self.cfg.train)

    def diverged(self, step_loss: float) -> None:
        """Stop a finite divergence: the checkpoints of the weights that produced it and of every later step
        are set aside (`step_N.diverged`), so the newest checkpoint is again the last one before it; the run
        fails naming the step where the loss left its sane range (retention was held since then)."""
        state, train_cfg = self.state, self.cfg.train
        first = state.high_since
        aside = self.checkpointer.set_aside_since(first - 1, DIVERGED_SUFFIX)
        tags = complete_tags(self.checkpointer.dir)
        margin = train_cfg.diverge_margin
        ratio = train_cfg.diverge_ratio
        raise TrainingDiverged(
            f"training diverged at step {first}: the loss stayed more than max({margin:g} nats, {ratio:.0%}) above "
            f"its best running mean {state.best_loss_ema:.4f} for {state.high_steps} consecutive steps "
            f"(now {step_loss:.4f} at step {state.step}); "
            + (f"checkpoints set aside: {', '.join(a.name for a in aside)}; " if aside else "")
            + (f"the newest checkpoint is {tags[-1]}, from before the divergence; " if tags else "")
            + "resume with a lower train.lr, or check the data"
        )

    def step_metrics(self, step_loss: float, spike: bool, seconds: float) -> dict[str, Any]:
        cfg, world = self.cfg, self.dist.world_size
        tokens_per_s = self.layout.global_batch * cfg.data.seq_len / seconds
        values = {
            "loss": step_loss,
            "grad_norm": _grad_norm(self.engine),
            "lr": self.scheduler.get_last_lr()[0] if self.scheduler is not None else cfg.train.lr,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": tokens_per_s / world,
            "step_time_s": seconds,
            "tokens_seen": self.state.step * self.layout.global_batch * cfg.data.seq_len,
            "loss_spike": spike,
            **_memory(self.dist),
        }
        if torch.cuda.is_available():
            peak = peak_flops(torch.cuda.get_device_name(), cfg.parallel.precision)
            if peak:
                values["mfu"] = tokens_per_s * training_flops_per_token(cfg.model, cfg.data.seq_len) / (peak * world)
        return values

    def validate(self) -> None:
        """The objective's validation and `train.eval_orders`' likelihoods, then the samples (train/eval_samples.py)."""
        val = evaluate(self.engine, self.objective, self.data, self.cfg, self.dist, self.dp_rank, self.dp_world)
        if val is not None:
            values, line = validation_report(self.objective, self.cfg, val)
            self.metrics.log(self.state.step, values)
            self.metrics.message(f"step {self.state.step}: validation {line}")
        if self.ema is not None:  # the same batches and orders, computed with the EMA of the weights
            with self.ema.in_model():
                val = evaluate(self.engine, self.objective, self.data, self.cfg, self.dist, self.dp_rank, self.dp_world)
            if val is not None:
                values, line = validation_report(self.objective, self.cfg, val)
                self.metrics.log(self.state.step, {f"{k}_ema": v for k, v in values.items()})
                self.metrics.message(f"step {self.state.step}: validation, EMA weights: {line}")
        if self.samples is None:
            run_dir = self.checkpointer.dir.parent
            self.samples = EvalSamples(self.cfg, run_dir, self.data.tokenizer.location, self.metrics)
        self.samples.log(self.engine.module, self.state.step)

    def save_or_stop(self, stop: StopRequest) -> bool:
        """Checkpoint on schedule, at the end and before stopping; True when the run must stop now.
        Collective: every rank calls it at every step boundary."""
        cfg, step = self.cfg, self.state.step
        stopping = not self.finished and (stop.should_stop(self.dist.device) or step == cfg.train.stop_at_step)
        if stopping and step == cfg.train.stop_at_step:
            stop.reason = stop.reason or f"train.stop_at_step={cfg.train.stop_at_step}"
        saved = False
        if self.finished or stopping or step % cfg.train.checkpoint_every == 0:
            saved = self.save(retain=self.finished or stopping)
        if stopping:
            what = "checkpoint saved" if saved else "no checkpoint (non-finite losses), the newest one stays"
            self.metrics.message(f"stopping at step {step} ({stop.reason}); {what}, exit {EXIT_PREEMPTED}")
        return stopping

    def save(self, retain: bool = True) -> bool:
        """A checkpoint of this step, if its state is sound; False when postponed. Collective.

        Never while the newest losses are non-finite (the weights are those that produced them) nor while
        any weight or optimizer tensor holds NaN/inf on any rank: such a checkpoint would become the newest,
        push finite ones out through retention, and be useless to resume from. With `retain=False` older
        checkpoints are deleted only once the next step's loss, computed with these weights, is finite and not
        far above its best level: an update that wrecks the weights without a NaN in them cannot cost the
        checkpoints before it. While the loss is far above that level (`far_above_best`), no save applies
        retention, not even the last one; a divergence sets the checkpoints taken since aside (`diverged`)."""
        step, bad = self.state.step, self.state.bad_steps
        tags = complete_tags(self.checkpointer.dir)
        last = f"the newest checkpoint, {tags[-1]}," if tags else "no checkpoint"
        if bad:
            if self.finished:
                raise TrainingDiverged(
                    f"train.steps reached at step {step} during {bad} steps of non-finite loss: no final checkpoint "
                    f"({last} stays the last sound state); resume from it with a lower train.lr"
                )
            self.metrics.message(f"step {step}: checkpoint postponed, the last {bad} step(s) had a non-finite loss")
            return False
        local = first_nonfinite(self.engine.module, self.optimizer)
        if all_reduce_max(1.0 if local else 0.0, self.dist.device) > 0:
            raise TrainingDiverged(
                f"step {step}: {local or 'a tensor on another rank'} holds NaN or inf, so no checkpoint was written "
                f"({last} stays the last finite state); resume with a lower train.lr"
            )
        if self.state.spike_steps:  # the weights gave a spike: they must not displace the checkpoints before
            retain = False
            self.metrics.message(
                f"step {step}: checkpoint saved with the older ones kept: updates skipped as spikes since step "
                f"{self.state.spike_since}"
            )
        elif self.state.high_steps:  # taken after the loss left its sane range: it must not displace the sane ones
            retain = False
            self.metrics.message(
                f"step {step}: checkpoint saved with the older ones kept: the loss has been far above its best "
                f"running mean since step {self.state.high_since}"
            )
        state, loader = self.state.to_dict(), loader_state_of_all_ranks(self.loader)
        self.checkpointer.save(self.engine, step, trainer=state, loader=loader, retain=retain)
        self.unconfirmed_save = not retain
        return True

    def close(self) -> None:
        self.profiler.stop()
        self.metrics.close()
        self.loader.close()


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm)


def _memory(dist_info: DistInfo) -> dict[str, float]:
    if dist_info.device.type == "cuda":
        return {"memory/max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30}
    import psutil

    return {"memory/rss_gb": psutil.Process().memory_info().rss / 2**30}
