"""Refuse checkpoints that would run code when loaded: the one place pickle-based files are opened.

Our reads go through `safe_torch_load`: `torch.load(weights_only=True)`, which only rebuilds tensors
and plain containers (plus three DeepSpeed record types). DeepSpeed reads its own files with full
unpickling, so before handing a folder to it every pickle-based file is opened here first
(`assert_weights_only_loadable`), and DeepSpeed's own loads run inside `weights_only_loading()`, which
forces the restricted unpickler on them too. A file carrying any other object (a malicious
`__reduce__`, say) fails with the file and the offending global named, and nothing from it runs.
A file that cannot be read at all (cut short, bytes damaged) is a `CorruptCheckpointError` naming it,
not a raw zip, pickle, mmap or decoding error: callers fall back to an older checkpoint on that, never
on an unsafe one.

Order: a folder that records checksums is verified first (`verify_files`: sizes, then SHA-256), and only
files that match are unpickled. Damaged bytes fed to an unpickler fail in any of a dozen ways
(UnicodeDecodeError, IndexError, KeyError, an `mmap` EINVAL on a file cut short, or a flipped global name
such as `collecuions.OrderedDict` that looks like tampering), so they must never reach it. A file that
matches its checksum and holds a disallowed global was written that way: a tamper refusal. A file that
does not match its checksum is damage, unless its pickle names a callable that really exists outside
torch (`io.open`, `posix.system`): that is a payload planted without updating meta.json, refused too.

Hidden entries (names starting with a dot) are the staging folders of writes that were interrupted;
they are never part of a checkpoint and are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import pickletools
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .integrity import CorruptCheckpointError, verify

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects other than tensors and plain containers.

    A ValueError (bad input), so the resume planner, which turns ValueErrors on rank 0 into one error
    every rank raises, reports it instead of leaving the other ranks waiting."""


def pickle_files(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Every pickle-based file under `folder`, staging debris (hidden entries) and the top-level
    names in `skip` excluded."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in PICKLE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.relative_to(folder).parts[0] not in skip
    )


def assert_weights_only_loadable(folder: Path, skip: tuple[str, ...] = ()) -> None:
    folder = Path(folder)
    files = pickle_files(folder, skip)
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
    try:
        mmap = zipfile.is_zipfile(path)
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = _reason(e) or _foreign_globals(path)
        if not reason:  # the restricted unpickler stopped, but at damaged bytes, not at a foreign object
            raise CorruptCheckpointError(
                f"{path} is damaged: its pickle stream holds invalid opcodes", Path(path)
            ) from None
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains objects that are not tensors or plain containers ({reason})"
        ) from None
    except OSError as e:  # EIO, EACCES, a lost mount: the reader's, not the file's ...
        if e.errno != errno.EINVAL:
            raise
        # ... but torch maps the file, and a zip cut short (its directory points past the end) fails there
        raise CorruptCheckpointError(f"{path} is corrupt or truncated: {_first_line(e)}", Path(path)) from None
    except Exception as e:  # noqa: BLE001 - damaged bytes make the unpickler fail in arbitrary ways
        raise CorruptCheckpointError(
            f"{path} is corrupt or truncated: {type(e).__name__}: {_first_line(e)}", Path(path)
        ) from None


def verify_files(folder: Path, files: dict | None, *, named_by: str) -> None:
    """`integrity.verify` (sizes and SHA-256, before anything is unpickled) that tells tampering from
    damage: a file that differs from its record and whose pickle names a callable that exists outside torch
    (a planted payload; meta.json left as it was) is an UnsafeCheckpointError, anything else that differs
    a CorruptCheckpointError naming the file. Nothing is unpickled: the opcodes are only read."""
    try:
        verify(folder, files, named_by=named_by)
    except CorruptCheckpointError as e:
        path = e.path
        if path is not None and path.suffix in PICKLE_SUFFIXES and path.is_file():
            planted = _planted_globals(path)
            if planted:
                raise UnsafeCheckpointError(
                    f"refusing to load {path}: it does not match its checksum and contains objects that are not "
                    f"tensors or plain containers (Unsupported global: GLOBAL {', '.join(planted)})"
                ) from None
        raise


def _planted_globals(path: Path) -> list[str]:
    """The foreign globals of a pickle (see `_foreign_globals`) that name an attribute of a module this
    process has already imported: real callables, as a payload needs. A flipped bit in a global's name
    (`collecuions.OrderedDict`) names nothing that exists. No module is imported and nothing is run."""
    found = _foreign_globals(path)
    names = found.removeprefix("Unsupported global: GLOBAL ").split(", ") if found else []
    real = []
    for name in names:
        module, _, attr = name.rpartition(".")
        while module and module not in sys.modules:  # `a.b.C` may be the class C of module a.b, or a.b.C
            module, _, head = module.rpartition(".")
            attr = f"{head}.{attr}"
        obj = sys.modules.get(module) if module else None
        for part in attr.split(".") if obj is not None else ():
            obj = getattr(obj, part, None)
        if obj is not None and callable(obj):
            real.append(name)
    return real


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _reason(error: Exception) -> str:
    """The restricted unpickler's own finding (e.g. "Unsupported global: GLOBAL builtins.open"), without
    torch's advice to retry with full unpickling, which is exactly what must not be done here."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\n|$)", text)
    if found:
        return found.group(1).strip()
    blocked = re.search(r"unsupported GLOBAL (\S+)", text)  # "... GLOBAL posix.system whose module posix is blocked"
    return f"Unsupported global: GLOBAL {blocked.group(1)}" if blocked else ""


def _foreign_globals(path: Path) -> str:
    """The globals a pickle names outside torch and the allowed DeepSpeed classes, found by reading its
    opcodes (nothing is executed); "" when there are none or the pickle cannot be parsed."""
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in deepspeed_safe_globals()}
    found: list[str] = []
    for data in _pickles_of(path):
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(io.BytesIO(data)):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # noqa: BLE001 - damaged bytes: report what was found before them
            pass
    foreign = [g for g in dict.fromkeys(found) if not g.startswith(("torch.", "collections.")) and g not in allowed]
    return f"Unsupported global: GLOBAL {', '.join(foreign)}" if foreign else ""


def _pickles_of(path: Path) -> list[bytes]:
    """The pickle streams of a torch file: data.pkl of the zip format, or the legacy file itself."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
        return [Path(path).read_bytes()]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
