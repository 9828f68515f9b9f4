"""Resolve any checkpoint path the package accepts: the one resolver for training, tools and loading.

Accepted paths, and what they resolve to:
- a run directory (RUN_DIR): its newest complete checkpoint folder;
- a DeepSpeed checkpoint folder (RUN_DIR/checkpoints/step_N: meta.json + COMPLETE + engine files);
- a universal folder written by `armd convert --to universal` (meta.json + COMPLETE + universal/<tag>/),
  or DeepSpeed's universal tag folder itself (`.../universal/step_N`, meta.json two levels up);
- an export directory (model.safetensors + config.json);
- a Hugging Face folder written by `armd convert --to hf` (armd_scale.json beside transformers' files).

A folder without COMPLETE is a save that was cut short and is refused. What opening a checkpoint
folder checks depends on what the caller reads (`scope`):
- "weights" (the readers of weights: load_pretrained, the exports, init_from, --diff): a checkpoint
  whose meta.json records a `model.safetensors` (weights_file.WeightsRecord, parsed here and only
  here) has that one file checked against the size and SHA-256 meta.json records; DeepSpeed's files
  are not opened, so no pickle is read and nothing depends on DeepSpeed's layout.
- "folder" (inspect, --to universal, and any checkpoint without model.safetensors): every file is
  checked against its recorded size and SHA-256 (integrity.py), then every pickle-based file with the
  restricted unpickler (safe_load.py), so each caller refuses a tampered folder up front, naming the
  file, and damaged bytes are reported as damage (never fed to an unpickler).
In both, every name meta.json lists must stay inside the folder (safe_paths.py) before any file is
opened. A missing file or meta.json (with COMPLETE present) is damage too. A run directory whose
newest checkpoint fails that check resolves to the newest intact one, with a warning naming the
damaged file; a folder given directly is an error naming it. The weights are read by
`weights.full_state`. Nothing here writes.

Which weights a checkpoint folder's Source reads (`Source.weights`) is decided here and only here: its
EMA of the weights (`ema.safetensors`, written with train.ema_decay > 0) when it has one, else
`model.safetensors`; `weights="raw"` (or `preferred_weights("raw")` around the call, which the
commands' `--raw-weights` sets) takes `model.safetensors` whatever the folder holds. Only the file
read is verified. Exports and Hugging Face folders hold one set of weights (chosen when they were
written) and ignore the choice.

A running trainer's retention may remove the checkpoint a run directory resolved to while a tool
reads it: resolution then looks again (it never falls back to an older one for that), and readers
decorated with `reads_newest` (load_pretrained, summarize, the conversions) read the newest again.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from .integrity import CorruptCheckpointError, listed_paths, verify
from .layout import (
    CHECKPOINTS,
    EXPORT_CONFIG,
    EXPORT_TOKENIZER,
    EXPORT_WEIGHTS,
    FILES,
    HF_META,
    HF_TOKENIZER,
    MARKER,
    META,
    UNIVERSAL,
    WEIGHTS,
    complete_tags,
    files_key,
    read_meta,
    universal_tag_dir,
)
from .safe_load import assert_weights_only_loadable, verify_files
from .weights_file import EMA_WEIGHTS, EMA_WEIGHTS_KEY, WeightsRecord, read_record

Kind = Literal["deepspeed", "universal", "export", "hf"]
Scope = Literal["weights", "folder"]  # what opening a checkpoint folder verifies (module docstring)
Weights = Literal["ema", "raw"]  # which of a checkpoint's weight files a reader gets (module docstring)
P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    kind: Kind
    folder: Path  # the checkpoint folder or export directory
    meta: dict[str, Any]  # meta.json, or an export's config.json
    run_dir: Path | None = None  # set when the path given was a run directory
    universal_dir: Path | None = None  # DeepSpeed's universal tag folder, for kind "universal"
    weights: WeightsRecord | None = None  # the checkpoint's weights file full_state reads (model or EMA)
    averaged: bool = False  # `weights` is the EMA of the weights (ema.safetensors)

    @property
    def meta_file(self) -> Path:
        return self.folder / {"export": EXPORT_CONFIG, "hf": HF_META}.get(self.kind, META)

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    @property
    def config(self) -> dict[str, Any]:
        try:
            return self.meta["config"]
        except KeyError:
            raise ValueError(f"{self.meta_file} has no 'config' (the resolved run config)") from None

    @property
    def topology(self) -> dict[str, Any] | None:
        return self.meta.get("topology")

    @property
    def tokenizer_dir(self) -> str | None:
        """Where the run's tokenizer is: an export's own `tokenizer/`, else the directory meta.json names."""
        if self.kind in ("export", "hf"):
            tok = self.folder / (EXPORT_TOKENIZER if self.kind == "export" else HF_TOKENIZER)
            return str(tok) if tok.is_dir() else None
        return self.meta.get("tokenizer_dir")


# what `open_source` takes when its caller does not say: the commands' --raw-weights sets "raw"
_PREFERRED: ContextVar[Weights] = ContextVar("armd_scale_preferred_weights", default="ema")


@contextlib.contextmanager
def preferred_weights(weights: Weights) -> Iterator[None]:
    """Inside the block, checkpoint folders opened without an explicit `weights` read `weights`."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights={weights!r}: choose 'ema' or 'raw'")
    token = _PREFERRED.set(weights)
    try:
        yield
    finally:
        _PREFERRED.reset(token)


def open_source(
    path: str | Path, *, check_safe: bool = True, scope: Scope = "weights", weights: Weights | None = None
) -> Source:
    """The checkpoint at `path` (module docstring); `weights` picks a checkpoint folder's EMA or raw weights
    (default: the EMA when present, or what `preferred_weights` says)."""
    weights = weights or _PREFERRED.get()
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights={weights!r}: choose 'ema' (the default) or 'raw'")
    path = Path(path).expanduser().absolute()  # reports and config.json record where the weights came from
    if (path / "zero").is_dir() and glob.glob(str(path / "*model_states.pt")) and not (path / META).exists():
        return _bare_universal(path, check_safe)
    if (path / HF_META).is_file() and (path / EXPORT_CONFIG).is_file():
        return Source("hf", path, _read_export_config(path / HF_META))
    if (path / EXPORT_WEIGHTS).is_file() and (path / EXPORT_CONFIG).is_file():
        config = _read_export_config(path / EXPORT_CONFIG)
        if check_safe:
            verify(path, config.get(FILES), named_by=files_key(EXPORT_CONFIG))
        return Source("export", path, config)
    if (path / META).is_file():
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"{path} is an incomplete checkpoint (no {MARKER} marker): its save was cut short")
        return _checkpoint(path, None, check_safe, scope, weights)
    source = _newest(path, check_safe, scope, weights)
    opened = _OPENED.get()
    if source is not None and opened is not None:
        opened.append(source)
    if source is not None:
        return source
    raise FileNotFoundError(
        f"{path} is not a run directory with a complete checkpoint, a checkpoint folder (with {META} and "
        f"{MARKER}), an export directory (with {EXPORT_WEIGHTS} and {EXPORT_CONFIG}) or a folder written by "
        f"`armd convert --to hf` (with {HF_META})"
    )


def _newest(
    path: Path, check_safe: bool, scope: Scope, weights: Weights, *, removed: Path | None = None
) -> Source | None:
    """The newest intact complete checkpoint of run directory `path`, None if it has none. One that
    disappears while it is checked (a running trainer's retention removed it) is looked for again
    once among the checkpoints then present: it gives way to a newer one, not to an older one."""
    tags = complete_tags(path / CHECKPOINTS)
    first_error: CorruptCheckpointError | None = None
    for tag in reversed(tags):  # newest first; a damaged one gives way to the newest intact one
        folder = path / CHECKPOINTS / tag
        try:
            return _checkpoint(folder, path, check_safe, scope, weights)
        except Exception as e:
            if _removed(folder, None):
                if removed is not None:
                    raise _removed_twice(folder, removed, path) from None
                log.warning("checkpoint %s was removed while it was read (%s); looking for the newest again", folder, e)
                return _newest(path, check_safe, scope, weights, removed=folder)
            if not isinstance(e, CorruptCheckpointError):
                raise
            first_error = first_error or e
            log.warning("skipping damaged checkpoint %s: %s", folder, e)
    if first_error is not None:
        raise CorruptCheckpointError(f"no intact checkpoint in {path}; the newest: {first_error}")
    return None


class CheckpointRemovedError(FileNotFoundError):
    """The checkpoint a run directory resolved to was removed while it was read, twice."""


# the sources open_source resolved from run directories inside the innermost `reads_newest` call
_OPENED: ContextVar[list[Source] | None] = ContextVar("armd_scale_opened_sources", default=None)


def _removed(folder: Path, meta: dict[str, Any] | None, wait: float = 1.0) -> bool:
    """Whether complete checkpoint `folder` is being or was removed: it or its COMPLETE is gone.
    Retention's rmtree removes the files in no fixed order, so while only some file is missing this
    waits up to `wait` seconds for COMPLETE to go too; a folder that keeps COMPLETE is damage."""
    deadline = time.monotonic() + wait
    while True:
        if not folder.is_dir() or not (folder / MARKER).exists():
            return True
        if meta is None:
            try:
                meta = json.loads((folder / META).read_text())
            except (OSError, ValueError):
                meta = {}
        listed = (meta or {}).get(FILES)
        names = [META, *(listed if isinstance(listed, dict) else ())]
        if all((folder / name).exists() for name in names) or time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _removed_twice(folder: Path, before: Path, run_dir: Path | None) -> CheckpointRemovedError:
    return CheckpointRemovedError(
        f"checkpoint {folder} was removed while it was read, as was {before} before it: a trainer running in "
        f"{run_dir} removes checkpoints (train.keep_last) faster than they can be read; pass a checkpoint "
        "folder copied aside"
    )


def reads_newest(read: Callable[Concatenate[Any, P], T]) -> Callable[Concatenate[Any, P], T]:
    """For a reader whose first argument is a checkpoint path: when that path is a run directory and
    the checkpoint it resolved to is removed while the reader reads it (the retention of a trainer
    still running there: `train.keep_last`), whatever error that caused, the reader runs once more
    on the newest checkpoint then present, with a warning naming the removed one. A second removal
    is a CheckpointRemovedError naming both; any other error is the reader's own."""

    @functools.wraps(read)
    def wrapper(path: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        removed: Path | None = None
        while True:
            opened: list[Source] = []
            token = _OPENED.set(opened)
            try:
                return read(path, *args, **kwargs)
            except Exception as e:
                gone = [s for s in opened if s.run_dir is not None and _removed(s.folder, s.meta)]
                if not gone:
                    raise
                if removed is not None:
                    raise _removed_twice(gone[0].folder, removed, gone[0].run_dir) from None
                removed = gone[0].folder
                log.warning(
                    "checkpoint %s was removed while it was read (%s: the retention of a trainer running in %s?); "
                    "reading the newest checkpoint of %s again",
                    removed,
                    e,
                    gone[0].run_dir,
                    gone[0].run_dir,
                )
            finally:
                _OPENED.reset(token)

    return wrapper


def check_intact(folder: Path, meta: dict[str, Any], *, checksums: bool = True) -> None:
    """Refuse a tampered folder (UnsafeCheckpointError, or UnsafePathError for a listed name outside the
    folder; never a fallback) and a damaged one (CorruptCheckpointError naming the file): the listed
    names first (even without `checksums`), then the sizes and checksums, and only then restricted
    unpickling, so damaged bytes never reach an unpickler (they fail there in arbitrary ways) and a
    file that matches its checksum but holds a disallowed global is refused as tampered. With
    `checksums=False` the caller verified them already (the trainer shares that work among its ranks).

    The universal form a training checkpoint caches is not part of it: it is checked, and rebuilt if
    damaged, where it is used (universal.convert_to_universal; the trainer's load)."""
    cache = () if (meta.get("topology") or {}).get("layout") == UNIVERSAL else (UNIVERSAL,)
    listed_by = files_key(META)
    listed_paths(folder, meta.get(FILES), named_by=listed_by)  # every name is inside the folder: UnsafePathError
    if checksums:
        verify_files(folder, meta.get(FILES), named_by=listed_by)
    try:
        assert_weights_only_loadable(folder, skip=cache)
    except FileNotFoundError as e:  # COMPLETE and meta.json, but no weights: a copy or a save cut short
        raise CorruptCheckpointError(f"{e}, although {folder / MARKER} and {folder / META} are present") from None


def check_weights(folder: Path, meta: dict[str, Any], record: WeightsRecord, *, checksum: bool = True) -> None:
    """What a reader of the weights needs of checkpoint `folder`: every listed name inside the folder
    (UnsafePathError, never a fallback), a size and SHA-256 recorded for the weights file, and (with
    `checksum`) the file matching them (CorruptCheckpointError naming the file). No other file is opened."""
    listed_by = files_key(META)
    files = meta.get(FILES)
    listed_paths(folder, files, named_by=listed_by)
    if not isinstance(files, dict) or record.file not in files:
        raise CorruptCheckpointError(
            f"{folder / META} key '{EMA_WEIGHTS_KEY if record.file == EMA_WEIGHTS else WEIGHTS}' names "
            f"{record.file}, but its key '{FILES}' records no size and "
            "SHA-256 for it",
            folder / META,
        )
    if checksum:
        verify(folder, {record.file: files[record.file]}, named_by=listed_by)


def _checkpoint(folder: Path, run_dir: Path | None, check_safe: bool, scope: Scope, weights: Weights) -> Source:
    meta = read_meta(folder)
    record = read_record(meta, folder / META)
    ema = read_record(meta, folder / META, key=EMA_WEIGHTS_KEY)
    averaged = weights == "ema" and ema is not None and record is not None
    record = ema if averaged else record
    if check_safe and record is not None:
        check_weights(folder, meta, record, checksum=scope == "weights")  # "folder": checked with every file next
    if check_safe and (record is None or scope == "folder"):
        check_intact(folder, meta)
    if (meta.get("topology") or {}).get("layout") == UNIVERSAL:
        tag_dir = universal_tag_dir(folder)
        if tag_dir is None:
            raise FileNotFoundError(f"{folder}: meta.json says universal but {folder / UNIVERSAL} holds no tag folder")
        return Source("universal", folder, meta, run_dir, tag_dir, weights=record, averaged=averaged)
    return Source("deepspeed", folder, meta, run_dir, weights=record, averaged=averaged)


def _bare_universal(tag_dir: Path, check_safe: bool) -> Source:
    folder = tag_dir.parent.parent  # step_N/universal/step_N
    if not (folder / META).is_file():
        raise FileNotFoundError(
            f"{tag_dir} looks like a DeepSpeed universal checkpoint but {folder / META} (its run config, step "
            "and tokenizer) is missing; pass the checkpoint folder that holds it"
        )
    meta = read_meta(folder)
    if check_safe:
        verify_files(folder, meta.get(FILES), named_by=files_key(META))
        assert_weights_only_loadable(tag_dir)
    return Source("universal", folder, meta, None, tag_dir)


def _read_export_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise ValueError(f"{path} must be a JSON object with at least 'config' (the resolved run config)")
    return data
