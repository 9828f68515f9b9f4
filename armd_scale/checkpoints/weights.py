"""Full fp32 weights of any checkpoint, read without a DeepSpeed engine and without writing, and the
tensor-parallel merge.

- a checkpoint with `model.safetensors` (every save writes one; weights_file.py): that file alone,
  verified against its recorded size and SHA-256 when the source was opened (source.py). DeepSpeed's
  files are not opened.
- an older checkpoint, ZeRO-0: the module weights in `mp_rank_XX_model_states.pt`, one file per TP
  rank, merged along each parameter's partition dimension (model/parallelize.py).
- an older checkpoint, ZeRO-1/2/3: through DeepSpeed's universal form (unsharded fp32 weights), read
  from the cache a resume left in the folder, else converted in a temporary directory outside the
  run folder and deleted (universal.universal_state). Reading never writes into a run folder.
- a universal folder: its fp32 weights; an export: its safetensors; a Hugging Face folder: its
  safetensors mapped back to our names (hf_mapping.py).

Tied parameters come back as stored (each shared tensor once for checkpoints with model.safetensors,
universal folders and exports); `model_io.load_weights` restores every alias from the model itself.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import torch

from ..model.parallelize import partition_dim
from .layout import EXPORT_WEIGHTS
from .safe_load import safe_torch_load
from .source import Source
from .universal import read_universal, universal_state
from .weights_file import read_weights


def full_state(source: Source) -> dict[str, torch.Tensor]:
    """Complete fp32 weights of `source` (floating tensors as fp32, detached)."""
    if source.weights is not None:  # verified by open_source; nothing else in the folder is read
        state = read_weights(source.folder / source.weights.file)
    elif source.kind == "export":
        state = read_weights(source.folder / EXPORT_WEIGHTS)
    elif source.kind == "hf":
        from .hf_mapping import read_hf_state
        from .model_io import config_of

        state = read_hf_state(
            source.folder, source.meta["layout"], config_of(source.config, str(source.meta_file)).model
        )
    elif source.kind == "universal":
        assert source.universal_dir is not None  # open_source sets it for every universal source
        state = read_universal(source.universal_dir)
    elif _zero0_files(source.folder, source.topology or {}):
        state = merge_tp_shards(_module_shards(source.folder, source.topology or {}))
    else:
        state = universal_state(source.folder)
    # ZeRO-0 files hold nn.Parameters; plain tensors keep autograd out of comparisons and exports
    return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in state.items()}


def saved_module_state(source: Source) -> dict[str, torch.Tensor] | None:
    """The module weights DeepSpeed saved beside its optimizer state (mp_rank_XX_model_states.pt,
    tensor-parallel shards merged), read without any conversion; None where they are not complete
    (ZeRO-3 saves placeholders). In fp32 they equal the optimizer's master weights exactly, which
    makes them an independent reference for a universal conversion."""
    topo = source.topology or {}
    if source.kind != "deepspeed" or topo.get("zero_stage") == 3:
        return None
    return {k: v.detach().float() for k, v in merge_tp_shards(_module_shards(source.folder, topo)).items()}


def merge_tp_shards(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge AutoTP shards (one state dict per TP rank, in rank order) along each parameter's
    partition dimension (model/parallelize.py); replicated parameters are taken from rank 0."""
    if len(shards) == 1:
        return dict(shards[0])
    return {name: merge_tp_parts(name, [s[name] for s in shards]) for name in shards[0]}


def merge_tp_parts(name: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """Parameter `name` whole, from its AutoTP shards in TP rank order (replicated: rank 0's). The one
    merge rule, for checkpoint files here and for the live engine at save (train/full_weights.py)."""
    dim = partition_dim(name)
    return parts[0] if dim is None else torch.cat(parts, dim=dim)


def _zero0_files(folder: Path, topology: dict[str, Any]) -> bool:
    return topology.get("zero_stage") == 0 and not glob.glob(str(folder / "*optim_states.pt"))


def _module_shards(folder: Path, topology: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    return [safe_torch_load(folder / f"mp_rank_{r:02d}_model_states.pt")["module"] for r in range(topology["tp"])]
