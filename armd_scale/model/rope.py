"""Rotary position embeddings indexed by *original* token positions.

ARMD lists tokens in generation order, but every rotation uses the token's position in the text.
That, together with masks that depend only on block indices, makes the model permutation-equivariant:
the order in which tokens are listed never changes what they compute.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_len-1 (half-split rotation, as in GPT-NeoX)."""

    cos_table: torch.Tensor  # registered buffers (not parameters, not saved)
    sin_table: torch.Tensor

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
        self.max_len = max_len
        self.register_buffer("cos_table", angles.cos().float(), persistent=False)
        self.register_buffer("sin_table", angles.sin().float(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [B, 1, T, head_dim/2] for positions [B, T]; computed once per forward."""
        cos = self.cos_table[positions].unsqueeze(1).to(dtype)
        sin = self.sin_table[positions].unsqueeze(1).to(dtype)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by per-position angles (cos/sin [B, 1, T, D/2])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
