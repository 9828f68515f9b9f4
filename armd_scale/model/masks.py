"""Block-causal attention masks (docs/ARCHITECTURE.md, Forward pass).

Every mask in the model is a comparison of block indices:

    causal  Mc[q, k]  = block[k] <= block[q]
    strict  Msc[q, k] = block[k] <  block[q]   (= block[k] <= block[q] - 1)

So one representation covers both, and any mix of them in one call: a per-query *limit*
(`block[q]` for causal rows, `block[q] - 1` for strict rows) and per-key block ids. A key is visible
iff `k_block <= q_limit`. The two-stream layer (queries [X; G] against keys X) is then a single
mask, and so is cached decoding (new queries against cached keys).

The bidirectional baseline (arch `mdlm`) uses the same representation with every key in block 0 and
every limit 0 (`full_spec`): all keys visible. Backends recognise that pattern and run unmasked
kernels, so no N x N mask is ever built for it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch

Pattern = Literal["causal", "strict", "two_stream", "full", "general"]


@dataclass(frozen=True)
class BlockMaskSpec:
    """Which keys each query may see, as block-index comparisons.

    q_limit: [B, Q] largest visible key block per query row.
    k_block: [B, K] block index of each key.
    pattern: what the rows are, so backends with fixed patterns (flash) can recognise them:
      causal (Q == K, causal rows), strict (Q == K, strict rows), two_stream (Q == 2K: causal rows
      then strict rows), full (every key visible to every query: bidirectional attention),
      general (anything else, e.g. cached decoding).
    single_token_blocks: every block holds one token and blocks are 0..K-1 in key order.
    """

    q_limit: torch.Tensor
    k_block: torch.Tensor
    pattern: Pattern = "general"
    single_token_blocks: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.q_limit.shape[0], self.q_limit.shape[1], self.k_block.shape[1]

    def dense(self) -> torch.Tensor:
        """Boolean [B, 1, Q, K] mask, True where attention is allowed."""
        return self.k_block[:, None, None, :] <= self.q_limit[:, None, :, None]

    def cache_key(self) -> tuple:
        """Content key for reusing a compiled mask across steps with the same block pattern."""
        if self.single_token_blocks or self.pattern == "full":  # the pattern is fully determined by its shape
            return (self.pattern, tuple(self.q_limit.shape), tuple(self.k_block.shape), str(self.q_limit.device))
        return (
            self.pattern,
            tuple(self.q_limit.shape),
            tuple(self.k_block.shape),
            str(self.q_limit.device),
            self.q_limit.detach().cpu().numpy().tobytes(),
            self.k_block.detach().cpu().numpy().tobytes(),
        )


def is_single_token_blocks(block: torch.Tensor) -> bool:
    n = block.shape[1]
    return bool(torch.equal(block, torch.arange(n, device=block.device).expand_as(block)))


def causal_spec(block: torch.Tensor) -> BlockMaskSpec:
    """Mc over one sequence in generation order."""
    return BlockMaskSpec(block, block, "causal", is_single_token_blocks(block))


def strict_spec(block: torch.Tensor) -> BlockMaskSpec:
    """Msc over one sequence in generation order."""
    return BlockMaskSpec(block - 1, block, "strict", is_single_token_blocks(block))


def two_stream_spec(block: torch.Tensor) -> BlockMaskSpec:
    """Queries [X; G] (length 2N) against keys X (length N): Mc rows for X, Msc rows for G."""
    q_limit = torch.cat([block, block - 1], dim=1)
    return BlockMaskSpec(q_limit, block, "two_stream", is_single_token_blocks(block))


def full_spec(batch: int, length: int, device: torch.device | str = "cpu") -> BlockMaskSpec:
    """Every query sees every key (bidirectional attention over one sequence of `length` tokens)."""
    zeros = torch.zeros(batch, length, dtype=torch.long, device=device)
    return BlockMaskSpec(zeros, zeros, "full", False)


def dense_causal(block: torch.Tensor) -> torch.Tensor:
    """Mc as a boolean [B, N, N] tensor (for tests and readers)."""
    return block[:, None, :] <= block[:, :, None]


def dense_strict(block: torch.Tensor) -> torch.Tensor:
    """Msc as a boolean [B, N, N] tensor (for tests and readers)."""
    return block[:, None, :] < block[:, :, None]


# --------------------------------------------------------------------------------------------------
# FlexAttention BlockMask, cached per pattern
# --------------------------------------------------------------------------------------------------

_FLEX_CACHE: OrderedDict[tuple, object] = OrderedDict()
_FLEX_CACHE_SIZE = 32


def flex_block_mask(spec: BlockMaskSpec):
    """FlexAttention `BlockMask` for a spec; reused while the same pattern repeats (e.g. l2r steps)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = spec.cache_key()
    cached = _FLEX_CACHE.get(key)
    if cached is not None:
        _FLEX_CACHE.move_to_end(key)
        return cached
    q_limit, k_block = spec.q_limit, spec.k_block

    def mask_mod(b, h, q_idx, kv_idx):
        return k_block[b, kv_idx] <= q_limit[b, q_idx]

    batch, q_len, k_len = spec.shape
    block_mask = create_block_mask(mask_mod, batch, None, q_len, k_len, device=q_limit.device)
    _FLEX_CACHE[key] = block_mask
    if len(_FLEX_CACHE) > _FLEX_CACHE_SIZE:
        _FLEX_CACHE.popitem(last=False)
    return block_mask


def clear_flex_cache() -> None:
    _FLEX_CACHE.clear()
