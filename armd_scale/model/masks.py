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

Document masking (`data.document_mask`, docs/ARCHITECTURE.md, Document masking) adds one more
comparison: with per-query and per-key document ids a key is visible iff `k_block <= q_limit` AND
`k_doc == q_doc`, so every rule above holds inside each document and nothing crosses a boundary.
Document ids come from the window's EOS tokens (`document_ids`). A spec with documents never claims
`single_token_blocks`: the fused causal kernels cannot take the extra rule, so backends fall back to
a mask they build (model/attention.py, `choose_backend`).
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
    q_doc, k_doc: [B, Q] / [B, K] document ids, or None (one document): a key is visible only to
      queries of its own document.
    """

    q_limit: torch.Tensor
    k_block: torch.Tensor
    pattern: Pattern = "general"
    single_token_blocks: bool = False
    q_doc: torch.Tensor | None = None
    k_doc: torch.Tensor | None = None

    @property
    def has_documents(self) -> bool:
        return self.q_doc is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.q_limit.shape[0], self.q_limit.shape[1], self.k_block.shape[1]

    def dense(self) -> torch.Tensor:
        """Boolean [B, 1, Q, K] mask, True where attention is allowed."""
        allowed = self.k_block[:, None, None, :] <= self.q_limit[:, None, :, None]
        if self.q_doc is not None and self.k_doc is not None:
            allowed = allowed & (self.k_doc[:, None, None, :] == self.q_doc[:, None, :, None])
        return allowed

    def cache_key(self) -> tuple:
        """Content key for reusing a compiled mask across steps with the same block pattern."""
        if self.single_token_blocks or self.pattern == "full":  # the pattern is fully determined by its shape
            return (self.pattern, tuple(self.q_limit.shape), tuple(self.k_block.shape), str(self.q_limit.device))
        docs: tuple = ()
        if self.q_doc is not None and self.k_doc is not None:
            docs = (self.q_doc.detach().cpu().numpy().tobytes(), self.k_doc.detach().cpu().numpy().tobytes())
        return (
            self.pattern,
            tuple(self.q_limit.shape),
            tuple(self.k_block.shape),
            str(self.q_limit.device),
            self.q_limit.detach().cpu().numpy().tobytes(),
            self.k_block.detach().cpu().numpy().tobytes(),
            *docs,
        )


def is_single_token_blocks(block: torch.Tensor) -> bool:
    n = block.shape[1]
    return bool(torch.equal(block, torch.arange(n, device=block.device).expand_as(block)))


def causal_spec(block: torch.Tensor, doc: torch.Tensor | None = None) -> BlockMaskSpec:
    """Mc over one sequence in generation order (within each document when doc [B, N] is given,
    doc in generation order like block)."""
    if doc is not None:
        return BlockMaskSpec(block, block, "causal", False, doc, doc)
    return BlockMaskSpec(block, block, "causal", is_single_token_blocks(block))


def strict_spec(block: torch.Tensor, doc: torch.Tensor | None = None) -> BlockMaskSpec:
    """Msc over one sequence in generation order (within each document when doc is given)."""
    if doc is not None:
        return BlockMaskSpec(block - 1, block, "strict", False, doc, doc)
    return BlockMaskSpec(block - 1, block, "strict", is_single_token_blocks(block))


def two_stream_spec(block: torch.Tensor, doc: torch.Tensor | None = None) -> BlockMaskSpec:
    """Queries [X; G] (length 2N) against keys X (length N): Mc rows for X, Msc rows for G."""
    q_limit = torch.cat([block, block - 1], dim=1)
    if doc is not None:
        return BlockMaskSpec(q_limit, block, "two_stream", False, torch.cat([doc, doc], dim=1), doc)
    return BlockMaskSpec(q_limit, block, "two_stream", is_single_token_blocks(block))


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, N] document index of each window position: 0 up to and including the first EOS, then 1, ...

    A window is documents packed with EOS after each (data/prepare/shard_writer.py), so the boundaries
    are where the previous token is EOS; no shard format change is needed. The EOS belongs to the
    document it ends: that document's last conditional predicts EOS from its own tokens only."""
    after_eos = torch.zeros_like(tokens, dtype=torch.long)
    after_eos[:, 1:] = (tokens[:, :-1] == eos_id).long()
    return torch.cumsum(after_eos, dim=1)


def document_positions(doc: torch.Tensor) -> torch.Tensor:
    """[B, N] position of each window position within its document (0 at a document's first token).

    doc must hold each document as one contiguous run of positions, as `document_ids` gives."""
    n = doc.shape[1]
    idx = torch.arange(n, device=doc.device).expand_as(doc)
    first = torch.ones_like(doc, dtype=torch.bool)
    first[:, 1:] = doc[:, 1:] != doc[:, :-1]
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), dim=1).values
    return idx - start


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

    q_doc, k_doc = spec.q_doc, spec.k_doc
    if q_doc is None or k_doc is None:

        def mask_mod(b, h, q_idx, kv_idx):
            return k_block[b, kv_idx] <= q_limit[b, q_idx]

    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return (k_block[b, kv_idx] <= q_limit[b, q_idx]) & (k_doc[b, kv_idx] == q_doc[b, q_idx])

    batch, q_len, k_len = spec.shape
    block_mask = create_block_mask(mask_mod, batch, None, q_len, k_len, device=q_limit.device)
    _FLEX_CACHE[key] = block_mask
    if len(_FLEX_CACHE) > _FLEX_CACHE_SIZE:
        _FLEX_CACHE.popitem(last=False)
    return block_mask


def clear_flex_cache() -> None:
    _FLEX_CACHE.clear()
