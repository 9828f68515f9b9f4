"""The on-disk layout of armd_scale checkpoints: names, meta.json, completion markers, compatibility.

    RUN_DIR/checkpoints/
      step_00000100/          one folder per saved step: DeepSpeed's engine files + ours
        model.safetensors     the model's full fp32 weights, what every reader loads (weights_file.py)
        meta.json             our state in JSON (step, loader cursor, config, tokenizer, topology, ...)
        COMPLETE              written last, after every rank finished: only marked folders are loaded
        universal/            DeepSpeed's universal form (universal.py), made when a resume needs it
      latest                  name of the newest complete folder (for people and scripts)
      step_00000050.corrupt/  a folder whose files failed verification, set aside by a resume (never read)
      step_00000040.nonfinite/  weights that gave train.max_bad_steps non-finite losses, set aside (never read)
      step_00000060.diverged/   weights taken after the loss left its sane range for good, set aside (never read)

    EXPORT_DIR/               written by `armd convert --to export` (export.py)
      model.safetensors, config.json, tokenizer/

    HF_DIR/                   written by `armd convert --to hf` (hf_export.py)
      config.json, model.safetensors, tokenizer.json, ..., armd_scale.json, armd_tokenizer/

Every reader and writer of these names imports them from here. docs/CHECKPOINTS.md describes the
fields of meta.json and config.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from ..config import saved_model_fields
from ..model_config import DERIVED, INIT, RUNTIME, SHAPE, declarations, fields_with_role
from ..safe_paths import contained_path
from .integrity import CorruptCheckpointError, fsync_dir, listed_paths, write_durable

CHECKPOINTS = "checkpoints"  # the subfolder of a run directory
MARKER = "COMPLETE"
META = "meta.json"
FILES = "files"  # meta.json key: {relative path: {bytes, sha256}} of every file the save wrote (integrity.py)
WEIGHTS = "weights"  # meta.json key: the record of the checkpoint's model.safetensors (weights_file.py)
MODEL_WEIGHTS = "model.safetensors"  # a checkpoint's full weights, as an export's and a transformers folder's
CHECKSUMS = "checksums.json"  # the same list for a cached universal/ form, which meta.json predates
CORRUPT_SUFFIX = ".corrupt"  # a resume sets a damaged step folder aside under this suffix
NONFINITE_SUFFIX = ".nonfinite"  # ... and the trainer one whose weights gave only non-finite losses
DIVERGED_SUFFIX = ".diverged"  # ... and those taken while the loss stayed far above its best (finite divergence)
LATEST = "latest"
CHECKPOINT_FORMAT = "armd_scale-checkpoint-1"
TAG_RE = re.compile(r"^step_(\d{8})$")

UNIVERSAL = "universal"  # subfolder holding DeepSpeed's universal form
LATEST_UNIVERSAL = "latest_universal"  # written by ds_to_universal beside the converted tag

EXPORT_FORMAT = "armd_scale-export-1"
EXPORT_WEIGHTS = MODEL_WEIGHTS
EXPORT_CONFIG = "config.json"
EXPORT_TOKENIZER = "tokenizer"

# a Hugging Face transformers folder written by `armd convert --to hf` (hf_export.py): transformers' own
# files (config.json, model.safetensors, tokenizer.json, ...) plus ours, which let armd_scale read it back
HF_FORMAT = "armd_scale-hf-1"
HF_META = "armd_scale.json"  # the resolved run config, provenance and the validation record
HF_TOKENIZER = "armd_tokenizer"  # the run's own tokenizer files, as an export's tokenizer/

# Model fields that change parameter shapes or what the weights mean (role SHAPE in model_config.py): a
# `train.init_from` with a different value is refused (a resume is stricter: `function_differences`).
# Fields such as rope_theta may change on purpose when fine-tuning from trained weights.
SHAPE_FIELDS = fields_with_role(SHAPE)


def files_key(file: str) -> str:
    """How messages name the checksum list (FILES) that `file` (meta.json, an export's config.json) holds."""
    return f"{file} key '{FILES}'"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    m = TAG_RE.match(tag)
    if not m:
        raise ValueError(f"'{tag}' is not a checkpoint folder name like step_00000100")
    return int(m.group(1))


def step_folders(ckpt_dir: Path) -> list[Path]:
    """Every step_N folder, complete or not, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if TAG_RE.match(p.name)), key=lambda p: step_of(p.name))


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint folders, oldest first."""
    return [p.name for p in step_folders(ckpt_dir) if is_complete(p)]


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        if is_complete(folder):  # marked complete, so it was written: a copy cut short, a file deleted
            raise CorruptCheckpointError(
                f"{path} is missing although {folder / MARKER} is present: the checkpoint's copy or save is incomplete",
                path,
            ) from None
        raise FileNotFoundError(f"{path} is missing: {folder} is not an armd_scale checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    _check_meta_digest(folder, path, meta)
    return meta


def _check_meta_digest(folder: Path, path: Path, meta: dict[str, Any]) -> None:
    """meta.json against the SHA-256 its COMPLETE marker records (saves since the marker records it): a
    changed byte in meta.json (a loader cursor, an lr) would otherwise be read as the truth. A marker that
    is not the JSON a save writes is damage too. Folders without COMPLETE (a save under way) are not checked."""
    marker = folder / MARKER
    if not marker.is_file():
        return
    try:
        record = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{marker} is damaged (not valid JSON: {e})", marker) from None
    if not isinstance(record, dict):
        raise CorruptCheckpointError(f"{marker} is damaged (not a JSON object)", marker)
    expected = record.get("meta_sha256")
    if expected is None:  # written before the marker recorded it
        return
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        # A name that leads out of the folder is tampering, whatever else changed: refused, never a fallback.
        listed_paths(folder, meta.get(FILES), named_by=files_key(META))
        raise CorruptCheckpointError(
            f"{path} does not match the checksum {marker.name} records (sha256 {found[:16]}..., written as "
            f"{str(expected)[:16]}...): its bytes changed after the save",
            path,
        )


def mark_complete(folder: Path, meta: dict[str, Any]) -> None:
    """Write meta.json, then the COMPLETE marker, each whole and durable: a folder is loadable only once
    both are, and COMPLETE reaches the disk only after meta.json and the folder's names (the caller
    fsynced the files the marker vouches for)."""
    fsync_dir(folder)
    text = json.dumps(meta, indent=1)
    _write_named(folder / META, text)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()  # meta.json's own checksum (read_meta checks it)
    _write_named(
        folder / MARKER, json.dumps({"step": meta.get("step"), "completed_at": time.time(), "meta_sha256": digest})
    )
    fsync_dir(folder.parent)


def set_latest(ckpt_dir: Path, tag: str) -> None:
    _write_named(ckpt_dir / LATEST, tag + "\n")


def _write_named(path: Path, data: str) -> None:
    """`write_durable`, whose OSError (a full disk at the write, or only at the fsync, which carries no
    file name) names `path`, not its temporary sibling, so the message can say which file was not written."""
    try:
        write_durable(path, data)
    except OSError as e:
        e.filename = str(path)
        raise


def shape_differences(saved: dict[str, Any], current: dict[str, Any], fields_of: type | None = None) -> list[str]:
    """`model.KEY: checkpoint A vs config B` for every shape field (of ModelConfig, or of `fields_of`, a
    subclass) that differs. A field the saved config lacks did not exist when it was written: it counts
    as its value of the time."""
    saved = saved_model_fields(saved, fields_of)
    shape = SHAPE_FIELDS if fields_of is None else fields_with_role(SHAPE, cls=fields_of)
    return [
        f"model.{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
        for k in shape
        if saved.get(k) != current.get(k)
    ]


# Model fields that change neither a parameter's shape nor the function trained weights compute (roles
# RUNTIME, INIT and DERIVED in model_config.py): how the same function is evaluated (the attention
# kernel, torch.compile), how weights were first drawn (only read when a run starts), and query_input, a
# name for a combination of fields that are checked themselves. Every other ModelConfig field, including
# any added later without a declared role, is protected on resume.
NON_FUNCTION_FIELDS = frozenset(fields_with_role(RUNTIME, INIT, DERIVED))


def function_differences(saved: dict[str, Any], current: dict[str, Any], fields_of: type | None = None) -> list[str]:
    """`model.KEY: checkpoint A vs config B` for every model field that changes the function the model
    computes (roles SHAPE and FUNCTION of ModelConfig, or of `fields_of`, a subclass). A key missing from
    `saved` (a checkpoint written before the field existed) counts as its value of the time (its legacy
    declaration), else as the field's default, which reproduces the old behaviour."""
    saved = saved_model_fields(saved, fields_of)
    unguarded = (RUNTIME, INIT, DERIVED)
    defaults = {d.name: d.default for d in declarations(fields_of) if d.role not in unguarded}
    return [
        f"model.{k}: checkpoint {saved.get(k, default)!r} vs config {current.get(k, default)!r}"
        for k, default in defaults.items()
        if saved.get(k, default) != current.get(k, default)
    ]


def universal_tag_dir(folder: Path) -> Path | None:
    """`folder/universal/<tag>` named by `latest_universal`, if the folder holds a converted checkpoint.
    The name is input: it must be a folder inside `universal/` (safe_paths), else UnsafePathError."""
    latest = Path(folder) / UNIVERSAL / LATEST_UNIVERSAL
    if not latest.is_file():
        return None
    tag_dir = contained_path(latest.parent, latest.read_text().strip(), named_by=LATEST_UNIVERSAL, kind="dir")
    return tag_dir if tag_dir.is_dir() else None
