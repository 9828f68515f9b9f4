"""Neighbour attention: a sharp, content-free path from the query stream to the nearest revealed tokens.

Why it exists. In an autoregressive transformer the residual stream at position n holds the previous
token x_{n-1} exactly from layer 0, so every layer can condition on it at no cost. ARMD's query stream
starts from the prefix sum sum_i <PE_n, PE_i> x_i. That kernel *can* single out x_{n-1}: the strict
mask never uses the diagonal <PE_n, PE_n>, so a table with <PE_n, PE_{n-1}> = 1 and <PE_n, PE_i> = 0
for i < n - 1 exists (model/pe_init.py builds the best rank-d_pe one). The recency initialisation
(pe_init=recency) does not start there: it weights n - 1 only 1.8x above n - 2 (0.61 vs 0.35 at
tau 2), so the paper's model must learn the shift, by reshaping the table or by attention. Neighbour
heads give it at initialisation instead, in any order. How much each start costs or gains is measured
in docs/REPRODUCTION.md ("The paper's model and ours").

What it computes. For every query n, H heads of softmax attention over the tokens of strictly earlier
blocks whose scores depend only on the relative position pos(n) - pos(i) (a learned table per head)
and whose values are the token embeddings X0[i]; head h's output is scaled per channel by a learned
gain and the heads are summed:

    N(n) = sum_h gain_h * sum_{i: block[i] < block[n]} softmax_i(bias_h[pos n - pos i]) X0[i]

Head h starts as exp(-4^(1-h) |pos n - pos i|) weights, so head 0 puts ~98% of its weight on the
nearest revealed position: exactly AR's input shift under the left-to-right order, and the nearest
revealed neighbour (either side) under any other order. Only head 0's gain starts non-zero.

Why it keeps the contract. The weights are a function of positions and block indices only and the
values are contents of strictly earlier blocks, so the output is strictly causal (no leakage); it
depends on the *set* of revealed (position, token) pairs, not on how they are listed, so it is
permutation-equivariant; it adds no forward call. Decoding caches X0 and the positions of committed
tokens (`query_input.QueryInputCache`), O(committed) per step like any attention layer.

What it costs. The scores are dense [B, H, queries, keys] (no fused kernel takes a per-head table of
relative scores and a sink), so training computes them a chunk of query rows at a time, recomputed in
the backward pass (model/query_input.py): autograd never keeps an N x N tensor of this module.
"""

from __future__ import annotations

import torch
from torch import nn


def initial_slopes(heads: int) -> torch.Tensor:
    """Decay rate of each head's initial scores per position of distance: 4, 1, 1/4, 1/16, ..."""
    return 4.0 ** (1 - torch.arange(heads, dtype=torch.float32))


def initial_scores(heads: int, max_len: int, kind: str) -> torch.Tensor:
    """rel_bias at initialisation, [heads, 2 max_len - 1], indexed by (pos n - pos i) + max_len - 1.

    symmetric: head h scores -4^(1-h) |pos n - pos i|, either side alike.
    directional: even heads look left (keys before the query), odd heads right, with slopes 4, 4, 1,
    1, 1/4, ...; on its side a head scores slope * (2 - distance) against a "nothing" logit of 0, so
    head 0 takes ~98% of the token at n - 1 when it is revealed and fades out when it is not; the
    other side starts at -16 (excluded until training says otherwise)."""
    offset = torch.arange(-(max_len - 1), max_len).float()  # pos n - pos i: > 0 = key left of the query
    if kind == "symmetric":
        return -initial_slopes(heads)[:, None] * offset.abs()[None, :]
    # built with torch.where, not boolean-mask assignment, so it also runs on the meta device (dry run)
    rows = []
    for h in range(heads):
        slope = 4.0 ** (1 - h // 2)
        side = offset > 0 if h % 2 == 0 else offset < 0
        rows.append(torch.where(side, slope * (2 - offset.abs()), torch.full_like(offset, -16.0)))
    return torch.stack(rows)


class NeighbourAttention(nn.Module):
    """H content-free relative-position softmax heads over revealed token embeddings (module docstring)."""

    def __init__(self, d_model: int, heads: int, max_len: int, kind: str = "symmetric"):
        super().__init__()
        if kind not in ("symmetric", "directional"):
            raise ValueError(f"neighbour attention kind '{kind}' is not one of 'symmetric', 'directional'")
        self.max_len = max_len
        # rel_bias[h, (pos n - pos i) + max_len - 1]: the score of key i for query n
        self.rel_bias = nn.Parameter(initial_scores(heads, max_len, kind))
        # directional: a learned "nothing" logit per head, a key whose value is 0
        self.sink = nn.Parameter(torch.zeros(heads)) if kind == "directional" else None
        gain = torch.zeros(heads, d_model)
        gain[0] = 1.0
        self.gain = nn.Parameter(gain)

    @property
    def heads(self) -> int:
        return self.rel_bias.shape[0]

    def forward(
        self, x: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, visible: torch.Tensor | None
    ) -> torch.Tensor:
        """x [B, K, d] values (embeddings of keys), q_pos [B, Q], k_pos [B, K], visible [B, Q, K] bool
        or None (every key visible to every query). Returns [B, Q, d]; a query with no visible key gets 0.

        Each query row is computed from its own position and visibility only, so any subset of the
        queries may be passed: the cache passes the targets of one step, training passes one chunk of
        rows at a time (model/query_input.py), and the rows equal those of a call with every query."""
        # int32, not int64: the index is the one [B, Q, K] tensor here that is not in x's dtype, and the
        # training path (model/query_input.py) rebuilds it one chunk of queries at a time
        q_pos, k_pos = q_pos.to(torch.int32), k_pos.to(torch.int32)
        rel = q_pos[:, :, None] - k_pos[:, None, :] + (self.max_len - 1)  # [B, Q, K]
        scores = self.rel_bias[:, rel].transpose(0, 1).to(x.dtype)  # [B, H, Q, K]
        if visible is not None:
            scores = scores.masked_fill(~visible[:, None], float("-inf"))
        if self.sink is not None:  # softmax over the keys and "nothing"; nothing's weight is dropped
            b, h, q, _ = scores.shape
            sink = self.sink.to(x.dtype)[None, :, None, None].expand(b, h, q, 1)
            weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        else:
            weights = torch.softmax(scores, dim=-1)
            if visible is not None:  # rows with no visible key are all -inf -> NaN; they carry nothing
                weights = weights.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)
        # one [B, H Q, K] x [B, K, d] product: a broadcast matmul would copy x once per head
        b, h, q, k = weights.shape
        mixed = torch.bmm(weights.reshape(b, h * q, k), x).view(b, h, q, x.shape[-1])  # [B, H, Q, d]
        return (mixed * self.gain.to(x.dtype)[None, :, None, :]).sum(dim=1)
