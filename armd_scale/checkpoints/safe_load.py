"""Refuse checkpoints that would run code when loaded: the one place pickle-based files are opened.

Our reads go through `safe_torch_load`: `torch.load(weights_only=True)`, which only rebuilds tensors
and plain containers (plus three DeepSpeed record types). DeepSpeed reads its own files with full
unpickling, so before handing a folder to it every pickle-based file is opened here first
(`assert_weights_only_loadable`), and DeepSpeed's own loads run inside `weights_only_loading()`, which
forces the restricted unpickler on them too. A file carrying any other object (a malicious
`__reduce__`, say) fails with the file and the offending global named, and nothing from it runs.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects other than tensors and plain containers.

    A ValueError (bad input), so the resume planner, which turns ValueErrors on rank 0 into one error
    every rank raises, reports it instead of leaving the other ranks waiting."""


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


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force `torch.load(weights_only=True)` for every load inside, DeepSpeed's own included."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu"):
    """torch.load restricted to tensors, plain containers and `deepspeed_safe_globals`;
    raises UnsafeCheckpointError for anything else."""
    # Memory-map torch's zip format; a legacy (bare pickle) file cannot be mapped but must still meet
    # the restricted unpickler, not fail on the mmap option before anything is checked.
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains objects that are not tensors or plain containers ({_reason(e)})"
        ) from None


def _reason(error: Exception) -> str:
    """The restricted unpickler's own finding (e.g. "Unsupported global: GLOBAL builtins.open"), without
    torch's advice to retry with full unpickling, which is exactly what must not be done here."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\n|$)", text)
    return found.group(1).strip() if found else text.strip().splitlines()[-1]
