"""Self-check of a conversion: source and result run on one fixed batch; report the logit gap.

Weights that merely "look right" (same names, same shapes) can still be transposed, mis-merged
across tensor-parallel ranks or taken from the wrong copy. Running both models on the same tokens
catches all of that. The batch is fixed (seeded random tokens, left-to-right order, one token per
block) so the check is reproducible and its number comparable across conversions; in fp32 both
sides do the identical computation on CPU, so a correct conversion gives exactly 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..model.generation_orders import l2r_order
from .model_io import build, load_weights

BATCH = 2
SEED = 0
MAX_TOKENS = 64  # long enough to cross several attention blocks, short enough for large models on CPU


@dataclass(frozen=True)
class FixedBatch:
    batch: int
    seq_len: int
    seed: int
    order: str = "l2r"

    def tensors(self, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        tokens = torch.randint(0, vocab_size, (self.batch, self.seq_len), generator=g)
        order, block = l2r_order(self.batch, self.seq_len)
        return tokens, order, block

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fixed_batch(config: Config) -> FixedBatch:
    return FixedBatch(BATCH, min(config.data.seq_len, config.model.max_seq_len, MAX_TOKENS), SEED)


@torch.no_grad()
def logits_of(model: nn.Module, config: Config, batch: FixedBatch) -> torch.Tensor:
    model = model.float().eval()
    tokens, order, block = batch.tensors(config.model.vocab_size)
    return model(tokens, order, block).float()


def model_from_state(config: Config, state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    torch.manual_seed(0)  # initial values are overwritten; seeded only so nothing depends on global state
    return load_weights(build(config), state, origin)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max())
