"""Load a trained model for evaluation or generation, without DeepSpeed's engine.

Wherever a command takes `--checkpoint PATH`, PATH is anything `source.open_source` resolves: a run
directory (its newest complete checkpoint), a checkpoint folder, a universal folder or an export
directory. Weights come from `weights.full_state` (pickle-based files only through the restricted
unpickler), and `model_io.load_weights` fits them to the saved config's model strictly, restoring
tied parameters. The weights are read (and verified) before the model is built, and their names
and shapes are compared with the saved config's model built on the meta device (`refuse_unfit`), so
a config that claims another (a huge) model is refused before any memory is spent on it.

A checkpoint that kept an EMA of the weights (train.ema_decay) is read as that EMA unless `weights="raw"`
(or `--raw-weights`, source.preferred_weights) asks for the raw weights; `Pretrained.averaged` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import Config
from .integrity import CorruptCheckpointError
from .model_io import build, config_of, load_weights, parameter_count, tied_aliases
from .source import Source, Weights, open_source, reads_newest
from .weights import full_state

if TYPE_CHECKING:
    from ..data.tokenizers.base import Tokenizer


@dataclass
class Pretrained:
    model: nn.Module
    config: Config
    tokenizer_dir: str | None
    source: Path  # the folder the weights came from
    step: int | None
    tokenizer_sha256: str | None
    averaged: bool = False  # the EMA of the weights (ema.safetensors), not the raw ones

    @property
    def weights(self) -> str:
        """Which weights were loaded, as results record it: "ema" or "raw"."""
        return "ema" if self.averaged else "raw"

    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer (any backend), or an error saying where it was expected."""
        from ..data.tokenizers.ref import open_recorded

        if not self.tokenizer_dir:
            raise FileNotFoundError(f"{self.source} names no tokenizer; pass token ids or train with a tokenizer")
        return open_recorded(self.tokenizer_dir, self.tokenizer_sha256)  # verified: the tokenizer it trained with


@reads_newest
def load_pretrained(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: Weights | None = None,
) -> Pretrained:
    """The model of checkpoint `path` in eval mode on `device` in `dtype`, with its config and identity;
    `weights` as `open_source` takes it (default: the EMA of the weights where the checkpoint has one)."""
    source = open_source(path, weights=weights)
    cfg = config_of(source.config, str(source.meta_file))
    # the weights first (verified, and as large as the files): the saved config is input, and a small
    # folder whose config claims a huge model must be refused before that model is built
    state = full_state(source)
    refuse_unfit(cfg, state, source)
    model = load_weights(build(cfg), state, str(source.folder))
    return Pretrained(
        model=model.to(device=device, dtype=dtype).eval(),
        config=cfg,
        tokenizer_dir=source.tokenizer_dir,
        source=source.folder,
        step=source.step,
        tokenizer_sha256=source.meta.get("tokenizer_sha256"),
        averaged=source.averaged,
    )


def refuse_unfit(cfg: Config, state: dict[str, torch.Tensor], source: Source) -> None:
    """CorruptCheckpointError unless `state` holds exactly the tensors (names, shapes) of the model
    `cfg` describes, tied aliases allowed to be absent; checked on the meta device (no memory)."""
    model = build(cfg, device="meta")
    aliases = tied_aliases(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    for alias, canonical in aliases.items():
        if alias not in found and canonical in found:
            found[alias] = found[canonical]
    if found == expected:
        return
    held = sum(v.numel() for k, v in state.items() if k not in aliases)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: weights {found[k]} vs config {expected[k]}" for k in expected if k in found and found[k] != expected[k]
    ]
    details = "; ".join(
        f"{what} {', '.join(items[:4])}{f' and {len(items) - 4} more' if len(items) > 4 else ''}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
        if items
    )
    raise CorruptCheckpointError(
        f"{source.meta_file} describes a model of {parameter_count(model):,} parameters but the weights in "
        f"{source.folder} hold {held:,} ({details}): the config does not belong to the weights; refusing to "
        "build the model"
    )
