"""The query stream's input G0: in training a chunk of query rows at a time, recomputed for backward;
in decoding from a running state of the committed tokens (`QueryInputCache`).

Why. G0 (model/armd.py, Forward pass step 2) compares every query with every key: the prefix
aggregation weights <PE_n, PE_i> over strictly earlier blocks are [B, N, N], and neighbour attention
(model/neighbour.py) adds scores and softmax weights of [B, H, N, N + 1] and a [B, N, N] index. No
fused kernel computes them, so evaluated densely autograd would keep all of them for the backward
pass: hundreds of MiB at the GPT-2 small shape (docs/GPU.md), far more than the fused attention
layers keep, and growing with N^2.

How. Row n of G0 reads its own position and block and every key, never another query's row, so G0
can be computed C = `ARMDModel.query_chunk_rows` query rows at a time (QUERY_CHUNK_ROWS by default).
In training with grad enabled each chunk runs under non-reentrant activation checkpointing: autograd
keeps only the chunk's inputs, X0, the positions and the blocks, which every chunk shares, and the
backward pass rebuilds one chunk's N x N terms at a time, so they are only ever transient, C x N per
sequence. Every term is computed exactly as a dense evaluation would compute it, row by row, so the
function is unchanged (tests/model/test_query_input_chunked.py checks outputs and every gradient in
float64 against a dense reference; model/memory.py counts what is kept and what one chunk rebuilds).

Everything that reads a parameter of the model itself (the start, the PE rows) happens inside the
chunk, so nothing but X0, positions and blocks is kept. Outside training, or without grad, the chunks
run plainly: evaluation gets the same bounded transient without the recomputation.

Decoding. A decoding query sees exactly the committed tokens, so its prefix sum is PE_q[n] @ S with
S = sum_i PE[pos i]^T X0[i] kept as it grows (O(1) state, the recurrence of docs/ARCHITECTURE.md),
and neighbour attention reads the committed X0 and positions. Both paths form their sums and hand
them to one function, `query_terms`, which adds the start and every term: the terms are written once.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.checkpoint import checkpoint

from ..model_config import ModelConfig
from .neighbour import NeighbourAttention


class QueryInputModel(Protocol):
    """What G0 reads of the model (ARMDModel, which imports this module, so it is named by shape)."""

    cfg: ModelConfig
    neighbour: NeighbourAttention | None
    query_chunk_rows: int
    training: bool

    def query_start(self, pos: torch.Tensor, empty_prefix: torch.Tensor | bool = True) -> torch.Tensor: ...

    def pe(self, pos: torch.Tensor) -> torch.Tensor: ...

    def pe_query(self, pos: torch.Tensor) -> torch.Tensor: ...

    def finish_aggregate(self, agg: torch.Tensor) -> torch.Tensor: ...


# Query rows per chunk. At N = 1024 with 4 neighbour heads a 256-row chunk's scores are a quarter of
# the dense ones, small next to a layer's activations, and four chunks add few kernel launches.
QUERY_CHUNK_ROWS = 256


def query_input(
    model: QueryInputModel, x: torch.Tensor, pos: torch.Tensor, block: torch.Tensor, doc: torch.Tensor | None = None
) -> torch.Tensor:
    """G0 [B, N, d] for embeddings x [B, N, d] in generation order, positions pos and blocks block
    [B, N], evaluated `model.query_chunk_rows` query rows at a time (module docstring). doc [B, N]
    (generation order) or None: with it every term reads only keys of the query's own document."""
    n, rows = x.shape[1], max(1, int(model.query_chunk_rows))
    recompute = model.training and torch.is_grad_enabled()
    docs = () if doc is None else (doc,)  # without documents, the call is exactly the one before they existed
    chunks = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        if recompute:
            # No randomness in G0, so no RNG state needs stashing for the recomputation.
            out = checkpoint(
                query_rows, model, x, pos, block, start, stop, *docs, use_reentrant=False, preserve_rng_state=False
            )
        else:
            out = query_rows(model, x, pos, block, start, stop, *docs)
        chunks.append(out)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


def query_rows(
    model: QueryInputModel,
    x: torch.Tensor,
    pos: torch.Tensor,
    block: torch.Tensor,
    start: int,
    stop: int,
    doc: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows start..stop-1 of G0 over all N keys: [B, stop - start, d]. With start = 0 and stop = N this
    is the dense evaluation of G0. With doc, a key outside the query's document is not visible to any
    term (prefix sum, count, neighbour attention, previous block), and a document's first block gets
    the empty-prefix start, as the first block of a window does."""
    cfg = model.cfg
    q_pos, q_block = pos[:, start:stop], block[:, start:stop]
    visible = block[:, None, :] < q_block[:, :, None]  # [B, C (queries), N (keys)]: strictly earlier blocks
    same_doc = None
    if doc is not None:
        same_doc = doc[:, None, :] == doc[:, start:stop, None]
        visible = visible & same_doc
    agg = count = neighbour = previous = None
    if cfg.prefix_agg != "none":
        pe = model.pe(pos)  # [B, N, d_pe], the keys' rows
        weights = torch.bmm(model.pe_query(q_pos), pe.transpose(1, 2)) * visible.to(pe.dtype)
        agg, count = torch.bmm(weights.to(x.dtype), x), visible.sum(dim=-1, keepdim=True).clamp(min=1).to(x.dtype)
    if model.neighbour is not None:
        neighbour = model.neighbour(x, q_pos, pos, visible)
    if cfg.previous_block_input:
        prev_mask = block[:, None, :] == q_block[:, :, None] - 1
        if same_doc is not None:  # the document's latest earlier block: block q - 1 may hold other documents only
            seen = torch.where(visible, block[:, None, :], torch.full_like(prev_mask, -1, dtype=block.dtype))
            prev_mask = visible & (block[:, None, :] == seen.max(dim=-1, keepdim=True).values)
        prev = prev_mask.to(x.dtype)  # [B, C, N]
        previous = torch.bmm(prev / prev.sum(dim=-1, keepdim=True).clamp(min=1), x)
    return query_terms(model, q_pos, ~visible.any(dim=-1), agg, count, neighbour, previous, x.dtype)


def query_terms(
    model: QueryInputModel,
    q_pos: torch.Tensor,
    empty_prefix: torch.Tensor | bool,
    agg: torch.Tensor | None,
    count: torch.Tensor | int | None,
    neighbour: torch.Tensor | None,
    previous: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """G0 from its terms: start(pos) + finish(agg [/ count]) + neighbour + previous block's mean.

    The one place the terms are combined, for training's rows (`query_rows`, sums over visible keys)
    and for decoding's (`cached_query_rows`, the same sums read from a running state). agg is
    sum_i <PE_q[n], PE[i]> X0[i] over the query's revealed tokens and count their number; a term that
    is None is absent (its option is off, or nothing is revealed yet)."""
    g = model.query_start(q_pos, empty_prefix).to(dtype)
    if agg is not None:
        if model.cfg.prefix_agg == "mean":
            assert count is not None  # every caller passes the count with the sum
            agg = agg / count
        g = g + model.finish_aggregate(agg)
    if neighbour is not None:
        g = g + neighbour
    if previous is not None:
        g = g + previous
    return g


class QueryInputCache:
    """What G0 reads of the committed tokens, kept incrementally while decoding (docs/GENERATION.md).

    - the prefix-aggregation state S = sum_i PE[pos i]^T X0[i] ([B, d_pe, d]) and the count of
      tokens in it: the sum `query_rows` forms over visible keys is PE_q[n] @ S, O(d_pe * d) per
      query whatever the length (a query's revealed tokens are exactly the committed ones);
    - with neighbour attention, the embeddings X0 and positions of committed tokens, which its
      content-free softmax reads (O(committed) per query, like an attention head);
    - with previous_block_input, the mean X0 of the block committed last."""

    def __init__(self, cfg: ModelConfig, neighbour: bool, batch: int, max_len: int, device, dtype):
        self.state = torch.zeros(batch, cfg.d_pe, cfg.d_model, device=device, dtype=dtype)
        self.count = 0
        self.x0 = self.pos = None
        if neighbour:
            self.x0 = torch.zeros(batch, max_len, cfg.d_model, device=device, dtype=dtype)
            self.pos = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.last_block_mean: torch.Tensor | None = None

    def commit(self, model: QueryInputModel, x: torch.Tensor, pos: torch.Tensor) -> None:
        """Add one committed block: embeddings x [B, c, d] at positions pos [B, c]."""
        c = pos.shape[1]
        if not c:
            return
        self.state += torch.bmm(model.pe(pos).to(x.dtype).transpose(1, 2), x)
        if self.x0 is not None and self.pos is not None:
            self.x0[:, self.count : self.count + c] = x
            self.pos[:, self.count : self.count + c] = pos
        self.count += c
        self.last_block_mean = x.mean(dim=1, keepdim=True) if model.cfg.previous_block_input else None


def cached_query_rows(model: QueryInputModel, cache: QueryInputCache, q_pos: torch.Tensor) -> torch.Tensor:
    """G0 [B, T, d] for queries at q_pos [B, T] that see every committed token (and no other)."""
    dtype, count = cache.state.dtype, cache.count
    if count == 0:  # nothing revealed: the start alone, as `query_rows` gives a first-block row
        return query_terms(model, q_pos, True, None, None, None, None, dtype)
    agg = neighbour = None
    if model.cfg.prefix_agg != "none":
        agg = torch.bmm(model.pe_query(q_pos).to(dtype), cache.state)
    if model.neighbour is not None and cache.x0 is not None and cache.pos is not None:
        neighbour = model.neighbour(cache.x0[:, :count], q_pos, cache.pos[:, :count], None)
    return query_terms(model, q_pos, False, agg, count, neighbour, cache.last_block_mean, dtype)
