"""The model's complete fp32 weights, gathered from a live DeepSpeed engine for a checkpoint's
`model.safetensors` (checkpoints/weights_file.py says why every checkpoint carries one).

One parameter at a time, on every rank in the same order (each step is a collective):
- the fp32 master weights through DeepSpeed's `safe_get_full_fp32_param` wherever an optimizer wrapper
  keeps them (ZeRO-1/2: the owning rank's fragment, all-reduced over the data-parallel group; ZeRO-3:
  the partitions all-gathered; bf16/fp16 training: the fp32 copy, not the rounded module weights);
  elsewhere the module's own parameter, gathered with `GatheredParameters` if ZeRO-3 partitions it
  outside the optimizer. ZeRO-0 hands out no master copy: in fp32 the module's parameters are the
  weights; in bf16/fp16 they are its rounded copies, as DeepSpeed's own file holds them;
- under tensor parallelism the shards of a split parameter are all-gathered over the TP group and
  merged by the same rule the checkpoint reader uses (weights.merge_tp_parts).
Only rank 0 keeps a copy, on the CPU. No rank ever holds more than one full parameter on its device
beyond its own shard, so the gather does not grow device memory with the model; rank 0's host memory
holds the fp32 model once (4 bytes per parameter) while the file is written.

The EMA of the weights (train/ema.py) is gathered by the same function, swapped into the master
tensors for the duration: `ema.safetensors` is assembled exactly as `model.safetensors` is.

Tied parameters are visited once, under their first name (what `model_io.tied_aliases` calls canonical);
the saver drops any alias left (`model_io.without_aliases`, as an export does), so the file stores each
shared tensor once and readers restore the aliases.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoints.weights import merge_tp_parts
from ..model.parallelize import partition_dim


def gather_full_weights(engine, *, tp: int, keep: bool) -> dict[str, torch.Tensor] | None:
    """Collective: every rank calls it. The engine's full fp32 weights on the CPU, each tied tensor once,
    where `keep` (rank 0); None elsewhere."""
    module: nn.Module = engine.module
    state: dict[str, torch.Tensor] | None = {} if keep else None
    for name, param in module.named_parameters():  # duplicates (tied aliases) skipped
        full = _full_fp32(param)
        if tp > 1 and partition_dim(name) is not None:
            full = merge_tp_parts(name, _tp_all_gather(full))
        if state is not None:
            state[name] = full.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
        del full
    return state


def _full_fp32(param: nn.Parameter) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)
    if full is not None:
        return full
    if hasattr(param, "ds_id"):  # partitioned by ZeRO-3 but outside the optimizer (requires_grad=False)
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().float().clone()
    return param.detach().float()


def _tp_all_gather(shard: torch.Tensor) -> list[torch.Tensor]:
    """This parameter's shard from every rank of this rank's tensor-parallel group, in TP rank order."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    group = groups.get_tensor_model_parallel_group()
    shard = shard.contiguous()
    parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group=group))]
    dist.all_gather(parts, shard, group=group)
    return parts
