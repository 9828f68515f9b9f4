"""The on-disk layout of armd_scale checkpoints: names, meta.json, completion markers, compatibility.

    RUN_DIR/checkpoints/
      step_00000100/          one folder per saved step: DeepSpeed's engine files + ours
        meta.json             our state in JSON (step, loader cursor, config, tokenizer, topology, ...)
        COMPLETE              written last, after every rank finished: only marked folders are loaded
        universal/            DeepSpeed's universal form (universal.py), made once when needed
      latest                  name of the newest complete folder (for people and scripts)

    EXPORT_DIR/               written by `armd convert --to export` (export.py)
      model.safetensors, config.json, tokenizer/

Every reader and writer of these names imports them from here. docs/CHECKPOINTS.md describes the
fields of meta.json and config.json.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from ..atomic import write_atomic

CHECKPOINTS = "checkpoints"  # the subfolder of a run directory
MARKER = "COMPLETE"
META = "meta.json"
LATEST = "latest"
CHECKPOINT_FORMAT = "armd_scale-checkpoint-1"
TAG_RE = re.compile(r"^step_(\d{8})$")

UNIVERSAL = "universal"  # subfolder holding DeepSpeed's universal form
LATEST_UNIVERSAL = "latest_universal"  # written by ds_to_universal beside the converted tag

EXPORT_FORMAT = "armd_scale-export-1"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_TOKENIZER = "tokenizer"

# Model fields that change parameter shapes or semantics: a resume or a `train.init_from` with a
# different value is refused.
SHAPE_FIELDS = (
    "arch",
    "vocab_size",
    "n_layers",
    "d_model",
    "n_heads",
    "max_seq_len",
    "n_two_stream_layers",
    "d_pe",
    "mlp",
    "mlp_ratio",
    "tie_embeddings",
    "positional_start",
)


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
        raise FileNotFoundError(f"{path} is missing: {folder} is not an armd_scale checkpoint") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    return meta


def mark_complete(folder: Path, meta: dict[str, Any]) -> None:
    """Write meta.json, then the COMPLETE marker, each whole: a folder is loadable only once both are."""
    write_atomic(folder / META, json.dumps(meta, indent=1))
    write_atomic(folder / MARKER, json.dumps({"step": meta.get("step"), "completed_at": time.time()}))


def set_latest(ckpt_dir: Path, tag: str) -> None:
    write_atomic(ckpt_dir / LATEST, tag + "\n")


def shape_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`model.KEY: checkpoint A vs config B` for every shape field that differs."""
    return [
        f"model.{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
        for k in SHAPE_FIELDS
        if saved.get(k) != current.get(k)
    ]


def universal_tag_dir(folder: Path) -> Path | None:
    """`folder/universal/<tag>` named by `latest_universal`, if the folder holds a converted checkpoint."""
    latest = Path(folder) / UNIVERSAL / LATEST_UNIVERSAL
    if not latest.is_file():
        return None
    tag_dir = latest.parent / latest.read_text().strip()
    return tag_dir if tag_dir.is_dir() else None
