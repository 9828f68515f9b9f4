"""safetensors weight files: the one writer and reader, and the record a checkpoint keeps of its own.

Every `model.safetensors` the package writes goes through `write_weights`: a training checkpoint's
(train/full_weights.py), an export's (export.py) and a transformers folder's (hf_export.py). It is
written to a hidden temporary sibling, fsynced, renamed into place and its directory fsynced, so a
crash never leaves a partial file under the final name; a failed write (a full disk) is an OSError
naming the final path, as torch's writers report it, because safetensors reports it as its own
`SafetensorError` carrying only `(os error N)` in its text.

Why a checkpoint carries one: DeepSpeed's files are its private layout (pickles, sharded by ZeRO and
by tensor parallelism, readable only through its universal conversion, which writes). A checkpoint
folder therefore also holds the model's complete fp32 weights as `model.safetensors` (tensor-parallel
shards merged, ZeRO-3 partitions gathered, each tied tensor once), and meta.json describes it under
`weights` (`WeightsRecord`); its size and SHA-256 are in meta.json `files` with every other file's.
Readers load only that file (source.py, weights.full_state); DeepSpeed's files serve a resume.

With `train.ema_decay` > 0 a checkpoint also holds the exponential moving average of the weights
(train/ema.py) as `ema.safetensors`, written the same way and described by a WeightsRecord of its own
under meta.json `ema_weights` (its size and SHA-256 in `files` too); source.py decides which of the
two a reader gets (the EMA when present, unless it asks for the raw weights).

The record is versioned: `read_record` is the one place that parses it, and a version it does not
know is an `UnsupportedWeightsError` naming meta.json (never a fallback to an older checkpoint: a
newer format is not damage).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, fsync_dir
from .integrity import CorruptCheckpointError, digest
from .layout import MODEL_WEIGHTS, WEIGHTS

WEIGHTS_VERSION = 1
CHECKPOINT_WEIGHTS_FORMAT = "armd_scale-checkpoint-weights-1"  # the file's own safetensors metadata
EMA_WEIGHTS = "ema.safetensors"  # the EMA of the weights (train.ema_decay > 0), beside model.safetensors
EMA_WEIGHTS_KEY = "ema_weights"  # meta.json key of its WeightsRecord


class UnsupportedWeightsError(ValueError):
    """A checkpoint's weights record has a version this armd_scale cannot read (written by a newer one)."""


@dataclass(frozen=True)
class WeightsRecord:
    """meta.json `weights`: what the checkpoint's safetensors file holds, for readers."""

    version: int  # WEIGHTS_VERSION when written
    file: str  # relative to the checkpoint folder (model.safetensors); size and SHA-256 in meta.json `files`
    dtype: str  # "fp32": the optimizer's master weights, whatever parallel.precision trained in
    tied: dict[str, str]  # {alias: stored name}: tied tensors are stored once, loading restores the alias
    tensors: int  # tensors in the file
    parameters: int  # parameter count, each shared tensor once

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES: dict[str, type] = {"version": int, "file": str, "dtype": str, "tied": dict, "tensors": int, "parameters": int}


def read_record(meta: dict[str, Any], meta_file: Path, *, key: str = WEIGHTS) -> WeightsRecord | None:
    """The WeightsRecord under `key` in `meta` (the contents of `meta_file`; `weights`, or EMA_WEIGHTS_KEY
    for the EMA), or None for a checkpoint saved without that file. An unknown version is an
    UnsupportedWeightsError, a record that is not the object a save writes a CorruptCheckpointError,
    both naming `meta_file` and `key`."""
    raw = meta.get(key)
    if raw is None:
        return None
    where = f"{meta_file} key '{key}'"
    if not isinstance(raw, dict):
        raise CorruptCheckpointError(f"{where} is not a JSON object", meta_file)
    version = raw.get("version")
    if version != WEIGHTS_VERSION:
        raise UnsupportedWeightsError(
            f"{where} has version {version!r}, but this armd_scale reads version {WEIGHTS_VERSION} only: the "
            "checkpoint was written by another armd_scale; read it with that version (or a newer one)"
        )
    wrong = [k for k, kind in _TYPES.items() if not isinstance(raw.get(k), kind) or isinstance(raw.get(k), bool)]
    if wrong:
        raise CorruptCheckpointError(f"{where} lacks or mistypes {', '.join(wrong)}", meta_file)
    return WeightsRecord(**{k: raw[k] for k in _TYPES})


def write_weights(tensors: dict[str, torch.Tensor], path: Path, *, metadata: dict[str, str]) -> None:
    """Write `tensors` (contiguous, no two sharing storage) to the safetensors file `path`, whole and
    durably: temporary sibling, fsync, rename, fsync of the directory. An OSError names `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            try:
                save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 - SafetensorError: an I/O error as text
                raise _as_os_error(e, path) from None
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # safetensors creates 0600: readable by its writer alone otherwise
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(path.parent)
    except OSError as e:
        e.filename = str(path)  # the final name, not the temporary sibling
        raise


def write_checkpoint_weights(
    folder: Path, state: dict[str, torch.Tensor], *, tied: dict[str, str], file: str = MODEL_WEIGHTS
) -> tuple[WeightsRecord, dict[str, Any]]:
    """Write a checkpoint's `file` (`model.safetensors`, or EMA_WEIGHTS) from its full fp32 `state` (each
    tied tensor once, under the name `tied` maps its aliases to); returns its record and its digest for
    meta.json `files`."""
    record = WeightsRecord(
        version=WEIGHTS_VERSION,
        file=file,
        dtype="fp32",
        tied=dict(tied),
        tensors=len(state),
        parameters=sum(t.numel() for t in state.values()),
    )
    path = Path(folder) / record.file
    write_weights(state, path, metadata={"armd_scale": CHECKPOINT_WEIGHTS_FORMAT})
    return record, digest(path)  # read back at once: still in the page cache


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file `path` (no code can run: a JSON header and raw bytes)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def _as_os_error(error: Exception, path: Path) -> OSError:
    """safetensors' write failure as the OSError it stands for (`... (os error 28)` is ENOSPC)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    found = re.search(r"os error (\d+)", text)
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code) if found else text, str(path))
