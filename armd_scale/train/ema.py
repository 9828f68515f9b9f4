"""An exponential moving average (EMA) of the weights, kept where DeepSpeed keeps the fp32 master weights.

SEDD, MDLM and BD3-LM evaluate and sample from `ema = decay * ema + (1 - decay) * w`, updated after
every optimizer step (decay 0.9999) and started from the initial weights; `train.ema_decay` turns it
on here (0 = off). Plain: no bias correction and no warm-up of the decay, as in those code bases.

Where the average lives. One fp32 tensor beside each fp32 master tensor of this rank, of the same
shape: the flat partitions of ZeRO-1/2 (`single_partition_of_fp32_groups`), of ZeRO-3
(`fp32_partitioned_groups_flat`) and of DeepSpeed's BF16_Optimizer (`fp32_groups_flat_partition`), or
the module's own parameters at ZeRO-0 in fp32 (no wrapper: the torch optimizer's params). ZeRO-0 in
bf16/fp16 (DeepSpeed's FP16_UnfusedOptimizer) is refused: its masters are not reachable through
`safe_get/set_full_fp32_param`, so they could be neither saved nor restored exactly. So it is
partitioned exactly as the master weights are (under ZeRO-1/2/3 each rank holds 1/dp of it, no rank a
full copy) and costs 4 bytes per parameter divided by the data-parallel size, on the device. It is
updated right after the wrapper's step (the engine calls it once per optimizer step, at the gradient
accumulation boundary; the step is wrapped on the instance), unless the NaN or spike guards skipped that step
(GuardedAdamW.skipping, read after the step: the gradient-norm guard decides inside it) or the fp16 loss
scaler dropped it (`overflow`): the weights did not move.

Reading and writing it without a second code path: the average and the master weights are swapped
in place (`swapped`), the code that reads or writes master weights runs, and they are swapped back.
A checkpoint's `ema.safetensors` is gathered by `full_weights.gather_full_weights` while swapped,
exactly as `model.safetensors` is (TP shards merged, ZeRO-3 partitions gathered); a resume sets each
parameter's slice from that file through DeepSpeed's `safe_set_full_fp32_param` while swapped, so it
is exact on any world size, ZeRO stage and TP degree (the file is full and fp32; DeepSpeed's own
files, and their universal conversion, never see the average). Validation evaluates the average by
swapping it in and refreshing the working (bf16, or ZeRO-3 partitioned) weights from the masters.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..checkpoints.layout import META, read_meta
from ..checkpoints.weights_file import EMA_WEIGHTS_KEY, read_record
from ..config import Config, ConfigError
from .distributed import gather_objects
from .full_weights import gather_full_weights

_SWAP_CHUNK = 1 << 22  # elements swapped through one temporary buffer (16 MiB of fp32)


class WeightEMA:
    """The EMA of this rank's fp32 master tensors (module docstring). Build it once the engine holds
    the weights it starts from (after `build_engine`, and after a resume's `load`)."""

    def __init__(self, engine, optimizer: torch.optim.Optimizer, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema_decay={decay} must be in (0, 1) to keep an average (0 turns it off)")
        self.engine = engine
        self.optimizer = optimizer
        self.decay = decay
        self.averages = [m.detach().clone(memory_format=torch.contiguous_format) for m in self._masters()]
        wrapper = engine.optimizer
        step = wrapper.step

        @functools.wraps(step)  # keeps the marks torch's LR scheduler puts on the step it wrapped
        def stepping(*args, **kwargs):
            return self._stepping(step, *args, **kwargs)

        wrapper.step = stepping  # the instance's attribute; it calls the step it replaces

    # -- the update ---------------------------------------------------------------------------------
    def _masters(self) -> list[torch.Tensor]:
        return _master_tensors(self.engine, self.optimizer)

    def _stepping(self, step, *args, **kwargs):
        result = step(*args, **kwargs)
        skip = bool(getattr(self.optimizer, "skipping", False))  # the trainer clears it after this step
        if not skip and not getattr(self.engine.optimizer, "overflow", False):
            self.update()
        return result

    @torch.no_grad()
    def update(self) -> None:
        """ema = decay * ema + (1 - decay) * w, for every master tensor of this rank (as one lerp: it reads
        each element of both once and writes the average once, 12 bytes per element)."""
        masters = [m.detach() for m in self._masters()]
        self._check_shapes(masters)
        torch._foreach_lerp_(self.averages, masters, 1.0 - self.decay)  # one pass: ema += (1 - d) * (w - ema)

    def _check_shapes(self, masters: list[torch.Tensor]) -> None:
        if [m.shape for m in masters] != [a.shape for a in self.averages]:
            raise RuntimeError(
                "the optimizer's master tensors changed shape since the weight EMA was built "
                f"({[tuple(a.shape) for a in self.averages]} -> {[tuple(m.shape) for m in masters]})"
            )

    def local_numel(self) -> int:
        """Elements of the average this rank holds (its share of the master weights)."""
        return sum(a.numel() for a in self.averages)

    # -- swapping ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The average in the master tensors (and the masters in the average's) inside the block."""
        masters = [m.detach() for m in self._masters()]
        self._check_shapes(masters)
        _swap_all(masters, self.averages)
        try:
            yield
        finally:
            _swap_all(masters, self.averages)

    @contextlib.contextmanager
    def in_model(self) -> Iterator[None]:
        """Collective: the model computes with the average inside the block (validation); the working
        weights are refreshed from the masters on the way in and out."""
        try:
            with self.swapped():
                _refresh_working_weights(self.engine)
                yield
        finally:
            _refresh_working_weights(self.engine)

    # -- checkpoints -------------------------------------------------------------------------------
    def gather(self, *, tp: int, keep: bool) -> dict[str, torch.Tensor] | None:
        """Collective: the full fp32 average, gathered as `model.safetensors` is (rank 0 keeps it)."""
        with self.swapped():
            return gather_full_weights(self.engine, tp=tp, keep=keep)

    def restore(self, folder: Path) -> bool:
        """Collective: the average from checkpoint `folder`'s EMA file (verified with the folder before
        the resume); False, leaving the average at the current weights, where the checkpoint has none
        (saved with train.ema_decay=0, or by an armd_scale without the EMA)."""
        meta = read_meta(folder)
        record = read_record(meta, folder / META, key=EMA_WEIGHTS_KEY)
        if record is None:
            return False
        path = folder / record.file
        with safe_open(str(path), framework="pt") as stored, self.swapped():
            names = set(stored.keys())
            for name, param in self.engine.module.named_parameters():
                if name not in names:
                    raise ValueError(f"{path} (meta.json key '{EMA_WEIGHTS_KEY}') holds no tensor '{name}'")
                _set_master(param, name, stored.get_tensor(name))
        return True


_MASTERS = (  # where DeepSpeed's wrappers keep this rank's fp32 master tensors
    "fp32_partitioned_groups_flat",  # ZeRO-3 (its sub-groups)
    "single_partition_of_fp32_groups",  # ZeRO-1/2
    "fp32_groups_flat_partition",  # DeepSpeed's BF16_Optimizer
)


def _master_tensors(engine, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """This rank's fp32 master tensors, whose values `safe_get/set_full_fp32_param` gather and set."""
    wrapper = engine.optimizer
    if wrapper is optimizer:  # ZeRO-0 in fp32: the module's parameters are the masters
        return [p for group in optimizer.param_groups for p in group["params"]]
    for name in _MASTERS:
        masters = getattr(wrapper, name, None)
        if masters is not None:
            return [m for m in masters if m is not None]
    raise ConfigError(
        f"train.ema_decay: DeepSpeed wraps the optimizer in {type(wrapper).__name__} (parallel.zero_stage=0 with "
        "bf16/fp16), whose fp32 master weights neither the EMA nor the checkpoint's weights file can read back; "
        "use parallel.zero_stage=1 (on one GPU too: it costs nothing there), or fp32"
    )


def _swap_all(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        _swap(x, y)


@torch.no_grad()
def _swap(x: torch.Tensor, y: torch.Tensor) -> None:
    """Exchange the contents of two same-shaped tensors through a buffer of at most _SWAP_CHUNK elements."""
    xf, yf = x.view(-1), y.view(-1)
    n = xf.numel()
    if n == 0:
        return
    buf = torch.empty(min(n, _SWAP_CHUNK), dtype=x.dtype, device=x.device)
    for start in range(0, n, _SWAP_CHUNK):
        end = min(n, start + _SWAP_CHUNK)
        part = buf[: end - start]
        part.copy_(xf[start:end])
        xf[start:end].copy_(yf[start:end])
        yf[start:end].copy_(part)


def _refresh_working_weights(engine) -> None:
    """Collective: the weights the forward pass uses, recomputed from the fp32 masters as a step does."""
    wrapper = engine.optimizer
    if hasattr(wrapper, "update_lp_params"):  # ZeRO-1/2, bf16: copy the own partition, all-gather
        wrapper.update_lp_params()
    elif hasattr(wrapper, "fp32_partitioned_groups_flat"):  # ZeRO-3: the partitions, then persistent params
        wrapper._partition_all_parameters()
        for i in range(len(wrapper.fp32_partitioned_groups_flat)):
            wrapper._reassign_or_swap_out_partitioned_parameters(i)
        if wrapper.persistent_parameters:
            wrapper.persistent_parameters[0].all_gather(wrapper.persistent_parameters)
    # ZeRO-0 in fp32: the module's parameters are the masters


@torch.no_grad()
def _set_master(param: nn.Parameter, name: str, full: torch.Tensor) -> None:
    """Set this rank's fp32 master slice of `param` from its full value (all TP shards merged)."""
    from deepspeed.utils import safe_set_full_fp32_param

    value = _tp_slice(param, name, full.float())
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        safe_set_full_fp32_param(param, value.to(_device_of(param)))
    else:  # ZeRO-0 in fp32: the parameter is the master
        if value.shape != param.shape:
            raise ValueError(f"EMA tensor '{name}' has shape {tuple(value.shape)}, the model {tuple(param.shape)}")
        param.data.copy_(value)


def _device_of(param: nn.Parameter) -> torch.device:
    tensor = getattr(param, "ds_tensor", None)
    return tensor.device if tensor is not None else param.device


def _tp_slice(param: nn.Parameter, name: str, full: torch.Tensor) -> torch.Tensor:
    """This TP rank's shard of a full tensor: the inverse of `weights.merge_tp_parts` (shard sizes are
    those of the live shards, all-gathered over the TP group, so uneven splits are cut the same way)."""
    from ..model.parallelize import partition_dim

    local = tuple(getattr(param, "ds_shape", None) or param.shape)
    dim = partition_dim(name)
    if dim is None or tuple(full.shape) == local:
        if tuple(full.shape) != local:
            raise ValueError(f"EMA tensor '{name}' has shape {tuple(full.shape)}, the model {local}")
        return full
    import torch.distributed as dist
    from deepspeed.utils import groups

    group = groups.get_tensor_model_parallel_group()
    size = torch.tensor([local[dim]], dtype=torch.int64, device=_device_of(param))
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group=group))]
    dist.all_gather(sizes, size, group=group)
    bounds = [int(s) for s in sizes]
    if sum(bounds) != full.shape[dim]:
        raise ValueError(f"EMA tensor '{name}' has {full.shape[dim]} rows on dim {dim}; the TP shards {bounds}")
    rank = dist.get_rank(group=group)
    return full.narrow(dim, sum(bounds[:rank]), bounds[rank]).contiguous()


def attach_ema(engine, optimizer, cfg: Config, checkpointer, tag: str | None, say) -> WeightEMA | None:
    """Collective: the run's EMA with train.ema_decay > 0 (None otherwise), resumed from checkpoint `tag`'s
    EMA when it has one and given to the checkpointer to save; `say` reports where it started from."""
    if not cfg.train.ema_decay:
        return None
    ema = WeightEMA(engine, optimizer, cfg.train.ema_decay)
    resumed = tag is not None and ema.restore(checkpointer.dir / tag)
    checkpointer.ema = ema
    start = (
        f"resumed from {tag}"
        if resumed
        else f"started from the weights of {tag} (it holds no EMA)"
        if tag is not None
        else "started from the initial weights"
    )
    per_rank = gather_objects(ema.local_numel())  # its partitioning, for the log (and the tests)
    say(f"EMA of the weights: decay {ema.decay}, {start}; fp32 elements per rank: {per_rank}")
    return ema
