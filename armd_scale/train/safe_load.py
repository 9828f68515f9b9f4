"""Refuse checkpoints that would run code when loaded.

DeepSpeed reads its own files with full unpickling. Before handing a folder to it we open every
pickle-based file with `torch.load(weights_only=True)`, which only rebuilds tensors and plain
containers; a file carrying any other object (a malicious `__reduce__`, say) fails here, with the
file and the offending global named, and nothing from it is executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds objects other than tensors and plain containers."""


def assert_weights_only_loadable(folder: Path) -> None:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no checkpoint files (*.pt) under {folder}")
    for path in files:
        safe_torch_load(path)


def deepspeed_safe_globals() -> list:
    """The few DeepSpeed classes its ZeRO optimizer files store: an enum, a plain record type and a
    loss-scaler object whose state is restored by attribute assignment (no code runs)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu"):
    """torch.load restricted to tensors, plain containers and `deepspeed_safe_globals`;
    raises UnsafeCheckpointError for anything else."""
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains objects that are not tensors or plain containers "
            f"({str(e).splitlines()[0]})"
        ) from None
