"""Load a trained model for evaluation or generation, without DeepSpeed's engine.

Wherever a command takes `--checkpoint PATH`, PATH may be
- a run directory (RUN_DIR): its newest complete checkpoint;
- one checkpoint folder (RUN_DIR/checkpoints/step_N, with COMPLETE and meta.json);
- a universal folder written by `armd convert --to universal` (meta.json, COMPLETE, universal/);
- an export directory (model.safetensors + config.json [+ tokenizer/]), written by `armd convert --to export`.

DeepSpeed folders are read with torch's restricted unpickler only (see train/safe_load.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, config_from_dict

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_TOKENIZER = "tokenizer"


@dataclass
class Pretrained:
    model: nn.Module
    config: Config
    tokenizer_dir: str | None
    source: Path  # the folder the weights came from
    step: int | None
    tokenizer_sha256: str | None

    def tokenizer(self):
        """The run's tokenizer (any backend), or an error saying where it was expected."""
        from .data.tokenizer import Tokenizer

        if not self.tokenizer_dir:
            raise FileNotFoundError(f"{self.source} names no tokenizer; pass token ids or train with a tokenizer")
        return Tokenizer.load(self.tokenizer_dir)


@dataclass(frozen=True)
class ResolvedCheckpoint:
    kind: str  # "deepspeed" or "export"
    folder: Path


def resolve_checkpoint(path: str | Path) -> ResolvedCheckpoint:
    from .train.checkpoint import MARKER, META, complete_tags

    path = Path(path).expanduser()
    if (path / EXPORT_WEIGHTS).is_file() and (path / EXPORT_CONFIG).is_file():
        return ResolvedCheckpoint("export", path)
    if (path / META).is_file():
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"{path} is an incomplete checkpoint (no {MARKER} marker): its save was cut short")
        return ResolvedCheckpoint("deepspeed", path)
    tags = complete_tags(path / "checkpoints")
    if tags:
        return ResolvedCheckpoint("deepspeed", path / "checkpoints" / tags[-1])
    raise FileNotFoundError(
        f"{path} is not a run directory with a complete checkpoint, a checkpoint folder (with {META} and "
        f"{MARKER}) or an export directory (with {EXPORT_WEIGHTS} and {EXPORT_CONFIG})"
    )


def checkpoint_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], ResolvedCheckpoint]:
    """Full fp32 weights and metadata (config dict, step, tokenizer) of any checkpoint PATH."""
    resolved = resolve_checkpoint(path)
    if resolved.kind == "export":
        from safetensors.torch import load_file

        meta = json.loads((resolved.folder / EXPORT_CONFIG).read_text())
        if not isinstance(meta, dict) or "config" not in meta:
            raise ValueError(f"{resolved.folder / EXPORT_CONFIG} has no 'config' (the resolved run config)")
        state = load_file(str(resolved.folder / EXPORT_WEIGHTS))
        for alias, canonical in (meta.get("tied") or {}).items():  # tied tensors are stored once
            if alias not in state and canonical in state:
                state[alias] = state[canonical]
        tok = resolved.folder / EXPORT_TOKENIZER
        meta["tokenizer_dir"] = str(tok) if tok.is_dir() else None
        return state, meta, resolved
    from .train.checkpoint import read_meta
    from .train.universal import full_state_dict

    meta = read_meta(resolved.folder)
    state = full_state_dict(resolved.folder, meta["topology"])
    return state, meta, resolved


def load_pretrained(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Pretrained:
    from .model import build_model

    state, meta, resolved = checkpoint_state(path)
    cfg = config_from_dict(meta["config"], origin=str(resolved.folder))
    model = build_model(cfg.model)
    if cfg.model.tie_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["embed.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{resolved.folder}: weights do not fit model.{cfg.model.arch}: missing {missing}, unexpected {unexpected}"
        )
    model = model.to(device=device, dtype=dtype).eval()
    return Pretrained(
        model=model,
        config=cfg,
        tokenizer_dir=meta.get("tokenizer_dir"),
        source=resolved.folder,
        step=meta.get("step"),
        tokenizer_sha256=meta.get("tokenizer_sha256"),
    )
