"""DeepSpeed engine built from our config: the DeepSpeed dict is generated, never hand-written.

Choices:
- The optimizer is torch's AdamW (fused on CUDA) wrapped in `GuardedAdamW`, so the NaN/inf guard can
  skip an update from inside the optimizer whatever ZeRO stage wraps it.
- Tensor parallelism is DeepSpeed AutoTP with the plan in `model/parallelize.py` (q/k/v and the MLP
  up/gate projections column-parallel, attention output and MLP down row-parallel, the rest replicated).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config, ConfigError
from ..model import Model
from ..model.parallelize import TP_LAYER_SPECS, UNIVERSAL_CHECKPOINT_INFO, check_tp_plan
from .distributed import DistInfo
from .schedule import build_scheduler


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is split: data-parallel ranks x gradient-accumulation micro-batches."""

    global_batch: int
    micro_batch: int
    dp_world: int
    grad_accum: int

    @property
    def local_batch(self) -> int:
        return self.micro_batch * self.grad_accum


def batch_layout(cfg: Config, world_size: int) -> BatchLayout:
    tp = cfg.parallel.tp
    if world_size % tp:
        raise ConfigError(f"parallel.tp={tp} must divide the world size {world_size}")
    try:
        check_tp_plan(cfg.model, tp)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    dp = world_size // tp
    per_step = cfg.train.micro_batch_size * dp
    if cfg.train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} must be a multiple of "
            f"train.micro_batch_size x data-parallel ranks = {cfg.train.micro_batch_size} x {dp}"
        )
    return BatchLayout(
        cfg.train.global_batch_size, cfg.train.micro_batch_size, dp, cfg.train.global_batch_size // per_step
    )


def deepspeed_config(cfg: Config, layout: BatchLayout, *, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict for a run (one source of truth: our Config)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.grad_accum,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if cfg.parallel.tp == 1:  # with AutoTP DeepSpeed counts every rank in its batch check: leave it out
        ds["train_batch_size"] = layout.global_batch
    if cfg.parallel.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.parallel.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2}
    if cfg.parallel.tp > 1:
        ds["tensor_parallel"] = {
            "autotp_size": cfg.parallel.tp,
            "partition_config": {"use_default_specs": False, "layer_specs": TP_LAYER_SPECS},
        }
    return merge_user_deepspeed(ds, cfg.parallel.deepspeed)


# Where each DeepSpeed key we generate comes from, for error messages.
_GENERATED_FROM = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / (train.micro_batch_size x data-parallel ranks)",
    "train_batch_size": "train.global_batch_size",
    "gradient_clipping": "train.grad_clip",
    "zero_optimization.stage": "parallel.zero_stage",
    "bf16": "parallel.precision",
    "fp16": "parallel.precision",
    "amp": "parallel.precision",
    "tensor_parallel": "parallel.tp",
    "checkpoint.load_universal": "the resume logic (universal checkpoints)",
}
# Keys DeepSpeed must not own: the optimizer and schedule are ours (GuardedAdamW, train/schedule.py).
_REFUSED = {"optimizer": "train.lr, train.beta1/beta2, train.weight_decay", "scheduler": "train.lr_schedule"}


def merge_user_deepspeed(generated: dict[str, Any], extra: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`generated` with the user's `parallel.deepspeed` dict merged in, recursively.

    New keys are added; nested dicts merge key by key; a key we generate may be repeated only with the
    same value. A different value is an error naming the key, both values and the config key that sets
    it: two sources of truth for one setting is how a run silently trains with the wrong batch size.
    Keys the config owns even where it leaves them out (`bf16` in an fp32 run, `tensor_parallel` without
    TP, `train_batch_size` under TP) cannot be added either.
    """
    out = copy.deepcopy(generated)
    for key, value in extra.items():
        path = f"{prefix}{key}"
        if not prefix and key in _REFUSED:
            raise ConfigError(
                f"parallel.deepspeed.{key} is not allowed: armd_scale builds its own {key} from {_REFUSED[key]}"
            )
        if key not in out:
            if path in _GENERATED_FROM:
                raise ConfigError(
                    f"parallel.deepspeed.{path}={value!r}: this key is armd_scale's to set, from "
                    f"{_GENERATED_FROM[path]}; change that instead"
                )
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge_user_deepspeed(out[key], value, prefix=f"{path}.")
        elif out[key] != value:
            source = _GENERATED_FROM.get(path) or _GENERATED_FROM.get(path.split(".")[0]) or "armd_scale itself"
            raise ConfigError(
                f"parallel.deepspeed.{path}={value!r} contradicts {out[key]!r}, which the generated DeepSpeed "
                f"config sets from {source}; change that instead (or drop the key)"
            )
    return out


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that skips its updates for the rest of an optimizer step once told to, by either of two guards.

    - `skip_next`, set by the trainer before the step: the ranks agreed the step's loss was not finite or a
      spike (train/steps.py).
    - `norm_guard`, asked at the first inner call of a step with the step's global gradient norm (pre-clip,
      `norm_source`): the gradient-norm spike guard. DeepSpeed computes that norm inside its own step, after
      the point where the trainer could still act, but every wrapper (ZeRO-1/2 and ZeRO-3 optimizers,
      BF16_Optimizer, the fp16 optimizers) stores it as `_global_grad_norm` *before* it calls this
      optimizer, and the norm is already reduced over every rank, so all ranks decide alike here.

    The trainer ends the step (`end_step`) after the engine's step, not this method: DeepSpeed's ZeRO
    optimizers call it once per parameter group (ZeRO-1/2) or sub-group (ZeRO-3) within one optimizer
    step, and every one of those calls must skip.

    `clip`, when set, clips gradients and returns their global norm before each step (used where
    DeepSpeed would clip without recording the norm: ZeRO stage 0 in fp32).
    """

    skip_next: bool = False
    clip: Callable[[], torch.Tensor | float] | None = None
    norm_source: Callable[[], Any] | None = None
    norm_guard: Callable[[float], bool] | None = None
    _global_grad_norm: float | None = None
    _norm_seen: float | None = None  # this step's gradient norm, read at its first inner call
    _norm_skip: bool = False  # the gradient-norm guard's decision for this step

    @torch.no_grad()
    def step(self, closure=None):
        if self.clip is not None:
            self._global_grad_norm = float(self.clip())
        if self._norm_seen is None and self.norm_source is not None and self.norm_guard is not None:
            norm = self.norm_source()  # read (a host sync on a GPU) only when a guard will judge it
            self._norm_seen = float(norm) if norm is not None else math.nan
            self._norm_skip = self.norm_guard(self._norm_seen)
        if self.skip_next or self._norm_skip:
            return None
        return super().step(closure)

    @property
    def skipping(self) -> bool:
        """Whether this optimizer step's update is (being) skipped, by either guard."""
        return self.skip_next or self._norm_skip

    def end_step(self) -> tuple[float | None, bool]:
        """(the step's gradient norm as the guard saw it, whether that guard skipped the step); resets both
        guards for the next step. The norm is None where no inner call happened (an fp16 overflow)."""
        seen, skipped = self._norm_seen, self._norm_skip
        self.skip_next, self._norm_seen, self._norm_skip = False, None, False
        return (None if seen is None or math.isnan(seen) else seen), skipped


def param_groups(model: Model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups: which parameters take weight decay is the model's to say
    (`weight_decay_split`: matrices, less the tables it names), not a pattern over parameter names."""
    decay, no_decay = model.weight_decay_split()
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(cfg: Config, model: Model, dist_info: DistInfo, layout: BatchLayout, *, load_universal: bool = False):
    """Wrap the model in a DeepSpeed engine. Returns (engine, optimizer, lr_scheduler)."""
    import deepspeed

    model.activation_checkpointing = cfg.parallel.activation_checkpointing
    # Saved by the engine with every checkpoint (AutoTP overwrites it with its own under TP; passing
    # it in client_state instead would override AutoTP's and corrupt a TP conversion).
    # (an attribute of DeepSpeed's protocol, not of our model classes)
    setattr(model, "universal_checkpoint_info", dict(UNIVERSAL_CHECKPOINT_INFO))  # noqa: B010
    optimizer = GuardedAdamW(
        param_groups(model, cfg.train.weight_decay),
        lr=cfg.train.lr,
        betas=(cfg.train.beta1, cfg.train.beta2),
        eps=cfg.train.eps,
        fused=dist_info.device.type == "cuda",
    )
    scheduler = build_scheduler(optimizer, cfg.train)
    ds_config = deepspeed_config(cfg, layout, load_universal=load_universal)
    self_clip = _clips_itself(cfg)
    if self_clip:
        ds_config["gradient_clipping"] = 0.0
    engine, _, _, ds_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if self_clip:
        from deepspeed.runtime.utils import clip_grad_norm_

        params = [p for p in engine.module.parameters() if p.requires_grad]
        optimizer.clip = lambda: clip_grad_norm_(params, max_norm=cfg.train.grad_clip or float("inf"), mpu=engine.mpu)
    # The step's global gradient norm as the wrapper (or, at ZeRO-0 fp32, `clip` above) stored it before
    # calling the inner optimizer: what the gradient-norm spike guard reads (GuardedAdamW).
    optimizer.norm_source = lambda: getattr(engine.optimizer, "_global_grad_norm", None)
    if cfg.model.compile:
        # DeepSpeed's own path: torch.compile of the module in place (inductor), so parameter names,
        # checkpoints and ZeRO hooks are those of the eager module.
        engine.compile()
    return engine, optimizer, ds_scheduler


def _clips_itself(cfg: Config) -> bool:
    """Stage 0 in fp32: DeepSpeed clips but does not report the norm, so GuardedAdamW does both."""
    return cfg.parallel.zero_stage == 0 and cfg.parallel.precision == "fp32"


def repair_optimizer_after_universal_load(optimizer: torch.optim.Optimizer, train_cfg) -> None:
    """Undo two side effects of DeepSpeed's ZeRO-3 universal load (measured: without this the loss
    two steps after a 2 -> 1 rank resume drifts by 1e-4).

    It copies group 0's hyper-parameters into every group (the no-decay group would get weight
    decay) and gives every parameter the *same* Adam step tensor, which AdamW then increments once
    per group per step. Hyper-parameters come back from the config; step tensors are un-shared.
    """
    for group, decay in zip(optimizer.param_groups, (train_cfg.weight_decay, 0.0), strict=False):
        group["weight_decay"] = decay
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def first_nonfinite(module: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """Where this rank holds a NaN or inf in the weights or the optimizer state (the fp32 master copy and
    the Adam moments DeepSpeed's ZeRO/bf16 wrappers keep in `optimizer`), or None. One host read in the
    common, finite case; the tensor is named only when something is wrong."""
    names = {id(p): name for name, p in module.named_parameters()}
    tensors: list[tuple[str, torch.Tensor]] = [(f"weight {name}", p) for name, p in module.named_parameters()]
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            label = names.get(id(p), f"group {g} tensor {i}")
            tensors.append((f"optimizer weight {label}", p))
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.is_floating_point():
                    tensors.append((f"optimizer state {key} of {label}", value))
    tensors = [(n, t.detach()) for n, t in tensors if t.numel()]  # ZeRO-3 leaves empty placeholders
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
        return None
    return next(n for n, t in tensors if not bool(torch.isfinite(t).all()))


def data_parallel_coords(dist_info: DistInfo, tp: int) -> tuple[int, int]:
    """(dp_rank, dp_world) of this process; ranks of one TP group read the same data."""
    if tp == 1:
        return dist_info.rank, dist_info.world_size
    from deepspeed.utils import groups

    return groups._get_data_parallel_rank(), groups._get_data_parallel_world_size()
