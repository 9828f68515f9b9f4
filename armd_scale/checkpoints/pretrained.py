"""Load a trained model for evaluation or generation, without DeepSpeed's engine.

Wherever a command takes `--checkpoint PATH`, PATH is anything `source.open_source` resolves: a run
directory (its newest complete checkpoint), a checkpoint folder, a universal folder or an export
directory. Weights come from `weights.full_state` (pickle-based files only through the restricted
unpickler), and `model_io.load_weights` fits them to the saved config's model strictly, restoring
tied parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import Config
from .model_io import build, config_of, load_weights
from .source import open_source
from .weights import full_state

if TYPE_CHECKING:
    from ..data.tokenizer import Tokenizer


@dataclass
class Pretrained:
    model: nn.Module
    config: Config
    tokenizer_dir: str | None
    source: Path  # the folder the weights came from
    step: int | None
    tokenizer_sha256: str | None

    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer (any backend), or an error saying where it was expected."""
        from ..data.tokenizer import load_tokenizer

        if not self.tokenizer_dir:
            raise FileNotFoundError(f"{self.source} names no tokenizer; pass token ids or train with a tokenizer")
        return load_tokenizer(self.tokenizer_dir)


def load_pretrained(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Pretrained:
    """The model of checkpoint `path` in eval mode on `device` in `dtype`, with its config and identity."""
    source = open_source(path)
    cfg = config_of(source.config, str(source.meta_file))
    model = load_weights(build(cfg), full_state(source), str(source.folder))
    return Pretrained(
        model=model.to(device=device, dtype=dtype).eval(),
        config=cfg,
        tokenizer_dir=source.tokenizer_dir,
        source=source.folder,
        step=source.step,
        tokenizer_sha256=source.meta.get("tokenizer_sha256"),
    )
