"""KV-cached decoding for ARMD and the AR baseline (docs/GENERATION.md).

Both decoders expose one call,

    logits = decoder.step(commit_tokens, commit_positions, target_positions)

which (a) commits the tokens of the last block and (b) returns the logits of the next block's
targets, in one forward call. All rows of a batch share the block structure of a step (the same
number of commit and target tokens); positions may differ per row.

What the ARMD cache holds, and why it is enough:
- per two-stream layer l < L2s: K/V of the *content stream* X of every committed token. The X stream
  of a token depends only on tokens of its own and earlier blocks, so it never changes once the
  token is committed. Layer L2s-1 only needs X as keys, so X itself is propagated through layers
  0..L2s-2 only.
- per causal layer: K/V computed from the *query stream* G at committed positions. A token's G
  never depends on its own content, so the K/V computed while it was a target is exactly what the
  full forward uses once the token is known. They are written into the cache at prediction time
  ("pending") and become committed when the next step commits those same positions: no recompute.
- the prefix-aggregation state S = sum_i PE[pos i]^T X0[i] ([d_pe, d]) and the count of tokens in
  it: G0[n] = start(pos n) + PE[pos n] @ S / count.

A commit whose positions are not the previous step's targets (a prompt, the known tokens of an
infill, or any caller-chosen block) is a *cold* commit: the same forward call also runs those
tokens' G rows as targets of their own block, with a mask, so their causal-layer K/V exist. Warm
steps need no mask at all: every cached key is visible to every new query.

Cache tensors are preallocated to `max_len` and written in place; a step costs O(new rows x cached
rows) attention plus per-row work, never a recompute of past tokens.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from ..model import Model
from ..model.armd import ARMDModel, ARModel
from ..model.attention import PreparedMask, attend, prepare
from ..model.layers import Block
from ..model.masks import BlockMaskSpec
from ..model.rope import apply_rotary

Rope = tuple[torch.Tensor, torch.Tensor]


class _KVBuffer:
    """Preallocated K/V for one layer: [B, H, max_len, head_dim] each, filled front to back."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)


class StepLayer:
    """One `Block` prepared for decoding: the same math with fused weights.

    Small decoding steps are dominated by per-op overhead, so q/k/v are one matmul and the SwiGLU
    gate/up another, and the module call machinery is skipped. The arithmetic mirrors
    `Block.forward` term by term (the teacher-forcing tests hold the two together). The fused
    weights are a snapshot: build a new decoder after the model's weights change.
    """

    def __init__(self, layer: Block):
        attn, mlp = layer.attn, layer.mlp
        with torch.no_grad():
            self.w_qkv = torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]).detach()
            self.w_o = attn.wo.weight.detach()
            if mlp.kind == "swiglu":
                self.w_in = torch.cat([mlp.gate.weight, mlp.up.weight]).detach()
            else:
                self.w_in = mlp.up.weight.detach()
            self.w_down = mlp.down.weight.detach()
        self.attn_norm, self.mlp_norm = layer.attn_norm, layer.mlp_norm
        self.swiglu = mlp.kind == "swiglu"
        self.head_dim = attn.head_dim
        self.d_model = self.w_o.shape[0]
        self.heads = self.d_model // self.head_dim

    @staticmethod
    def _norm(norm: torch.nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = F.linear(x, self.w_in).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, self.w_down)
        return F.linear(F.gelu(F.linear(x, self.w_in), approximate="tanh"), self.w_down)

    def __call__(
        self,
        h: torch.Tensor,
        rope: Rope,
        q_rows: slice,
        kv_rows: slice,
        buf: _KVBuffer,
        start: int,
        mask: PreparedMask | None,
    ) -> torch.Tensor:
        """Run rows h [B, R, d] (rotary tables rope for all R rows); return the updated q_rows.

        The kv_rows of h produce keys/values, written into the cache at [start, start + m); the
        q_rows attend to cache rows [0, start + m). mask None means every one of those keys is
        visible to every query (the common case); else a prepared sdpa mask.
        """
        hq = h[:, q_rows]
        b, r, _ = h.shape
        qkv = F.linear(self._norm(self.attn_norm, h), self.w_qkv)
        qkv = qkv.view(b, r, 3 * self.heads, self.head_dim).transpose(1, 2)  # [B, 3H, R, hd]
        qk = apply_rotary(qkv[:, : 2 * self.heads], *rope)
        new = qkv[:, :, kv_rows].shape[2]
        end = start + new
        if new:
            buf.k[:, :, start:end] = qk[:, self.heads :, kv_rows]
            buf.v[:, :, start:end] = qkv[:, 2 * self.heads :, kv_rows]
        t = hq.shape[1]
        if end > 0 and t > 0:  # with no key at all the attention output is exactly zero (see model.attention)
            q, k, v = qk[:, : self.heads, q_rows], buf.k[:, :, :end], buf.v[:, :, :end]
            out = F.scaled_dot_product_attention(q, k, v) if mask is None else attend(q, k, v, mask)
            hq = hq + F.linear(out.transpose(1, 2).reshape(b, t, self.d_model), self.w_o)
        return hq + self._mlp(self._norm(self.mlp_norm, hq))


ALL = slice(None)
NONE = slice(0, 0)


def _general_mask(q_limit: list[int], k_block: list[int], batch: int, like: torch.Tensor):
    """A prepared sdpa mask from per-row limits and per-key block ids (rows with no key give zeros)."""
    dev = like.device
    spec = BlockMaskSpec(
        torch.tensor(q_limit, device=dev).expand(batch, -1), torch.tensor(k_block, device=dev).expand(batch, -1)
    )
    return prepare(spec, "sdpa", dev, like.dtype)


class _Decoder:
    """Shared bookkeeping: shapes, input checks, the forward-call counter."""

    def __init__(self, model: ARMDModel | ARModel, batch_size: int, max_len: int | None):
        cfg = model.cfg
        self.model = model
        self.batch_size = batch_size
        self.max_len = cfg.max_seq_len if max_len is None else max_len
        if not 1 <= self.max_len <= cfg.max_seq_len:
            raise ValueError(f"max_len={self.max_len} must be in [1, model.max_seq_len={cfg.max_seq_len}]")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.head_dim = cfg.d_model // cfg.n_heads
        self.layers = [StepLayer(cast(Block, layer)) for layer in model.layers]  # ModuleList items are Blocks
        self.n_committed = 0
        self.forward_calls = 0

    def _buffers(self, count: int) -> list[_KVBuffer]:
        shape = (self.batch_size, self.model.cfg.n_heads, self.max_len, self.head_dim)
        return [_KVBuffer(*shape, self.device, self.dtype) for _ in range(count)]

    def _check(self, commit_tokens, commit_positions, target_positions) -> tuple[torch.Tensor, ...]:
        """Default missing parts to empty [B, 0], validate shapes and positions, and return
        (tokens, commit positions, target positions) on the model's device plus both position tensors on
        the host. Positions are validated and compared (warm or cold step) on the host: a sampler that
        passes host positions (as `generate` does) costs no device synchronisation per step."""
        empty = torch.empty(self.batch_size, 0, dtype=torch.long)
        commit_tokens = empty if commit_tokens is None else commit_tokens
        commit_positions = empty if commit_positions is None else commit_positions.cpu()
        target_positions = empty if target_positions is None else target_positions.cpu()
        named = (
            ("commit_tokens", commit_tokens),
            ("commit_positions", commit_positions),
            ("target_positions", target_positions),
        )
        for name, t in named:
            if t.dim() != 2 or t.shape[0] != self.batch_size:
                raise ValueError(f"{name} must be [batch={self.batch_size}, k], got {tuple(t.shape)}")
        if commit_tokens.shape != commit_positions.shape:
            shapes = f"{tuple(commit_tokens.shape)} and {tuple(commit_positions.shape)}"
            raise ValueError(f"commit_tokens and commit_positions shapes differ: {shapes}")
        limit = self.model.cfg.max_seq_len
        for name, t in (("commit_positions", commit_positions), ("target_positions", target_positions)):
            if t.numel() and ((t < 0) | (t >= limit)).any():
                raise ValueError(f"{name} must lie in [0, model.max_seq_len={limit})")
        move = {"device": self.device, "non_blocking": True}
        return (
            commit_tokens.to(**move),
            commit_positions.to(**move),
            target_positions.to(**move),
            commit_positions,
            target_positions,
        )

    def _room(self, needed: int) -> None:
        if needed > self.max_len:
            raise ValueError(f"decoding needs {needed} cache rows but the cache holds max_len={self.max_len}")


class ARMDDecoder(_Decoder):
    """Cached decoding for `ARMDModel`: content-stream cache, query-stream cache, prefix state."""

    model: ARMDModel

    def __init__(self, model: ARMDModel, batch_size: int, max_len: int | None = None):
        super().__init__(model, batch_size, max_len)
        cfg = model.cfg
        self.n_two_stream = model.n_two_stream
        self.x_cache = self._buffers(self.n_two_stream)  # content-stream K/V, committed tokens only
        self.g_cache = self._buffers(cfg.n_layers - self.n_two_stream)  # query-stream K/V, + pending targets
        self.prefix_state = torch.zeros(batch_size, cfg.d_pe, cfg.d_model, device=self.device, dtype=self.dtype)
        self.prefix_count = 0
        self.pending: torch.Tensor | None = None  # target positions (host) whose G K/V sit at [n_committed, ...)

    def _g0(self, pos: torch.Tensor) -> torch.Tensor:
        """Prefix aggregation from the running state (O(d_pe * d) per target, independent of length)."""
        model = self.model
        g0 = model.query_start(pos).to(self.dtype)
        if self.prefix_count == 0:
            return g0
        agg = torch.bmm(model.pos_table[pos].to(self.dtype), self.prefix_state)
        if model.cfg.prefix_agg == "mean":
            agg = agg / self.prefix_count
        return g0 + agg

    @torch.inference_mode()
    def step(
        self,
        commit_tokens: torch.Tensor | None,
        commit_positions: torch.Tensor | None,
        target_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        """Commit one block and return logits [B, T, V] for the next block's target positions."""
        tokens, cpos, tpos, cpos_host, tpos_host = self._check(commit_tokens, commit_positions, target_positions)
        model, n = self.model, self.n_committed
        c, t = cpos.shape[1], tpos.shape[1]
        warm = c == 0 or (self.pending is not None and torch.equal(self.pending, cpos_host))
        self._room(n + c + t)
        self.forward_calls += 1

        x = model.embed(tokens)
        g_rows = [] if warm else [self._g0(cpos)]  # a cold commit also runs its G rows (targets of its block)
        if c:
            pe = model.pos_table[cpos].to(self.dtype)
            self.prefix_state += torch.bmm(pe.transpose(1, 2), x)
            self.prefix_count += c
        g_rows.append(self._g0(tpos))
        g = torch.cat(g_rows, dim=1)
        g_pos = tpos if warm else torch.cat([cpos, tpos], dim=1)
        cg = g.shape[1] - t  # number of cold-commit G rows in front of the targets
        rope_g = model.rope.tables(g_pos, self.dtype)
        rope_xg = model.rope.tables(torch.cat([cpos, g_pos], dim=1), self.dtype) if c else rope_g

        # Relative block ids for cold masks: cache 0, commit block 1, target block 2.
        # Query rows: X commit (Mc), G commit (Msc: cache only), G targets (cache + commit).
        two_mask = last_mask = causal_mask = None
        if not warm:
            x_keys, g_keys = [0] * n + [1] * c, [0] * n + [1] * c + [2] * t
            two_mask = _general_mask([1] * c + [0] * c + [1] * t, x_keys, self.batch_size, g)
            last_mask = _general_mask([0] * c + [1] * t, x_keys, self.batch_size, g)  # G rows only
            causal_mask = _general_mask([1] * c + [2] * t, g_keys, self.batch_size, g)

        # Two-stream layers: rows [X (commit); G], keys/values from the X rows only.
        keys = slice(0, c)
        for i in range(self.n_two_stream):
            layer, buf, xg = self.layers[i], self.x_cache[i], torch.cat([x, g], dim=1)
            if i < self.n_two_stream - 1:  # both streams advance
                xg = layer(xg, rope_xg, ALL, keys, buf, n, two_mask)
                x, g = xg[:, :c], xg[:, c:]
            else:  # the last one: X is needed only as keys, so only G rows advance
                g = layer(xg, rope_xg, slice(c, None), keys, buf, n, last_mask)
        # Causal layers on G. Warm: the commit block's G K/V are already at [n, n + c) (pending).
        for layer, buf in zip(self.layers[self.n_two_stream :], self.g_cache, strict=True):
            g = layer(g, rope_g, ALL, ALL, buf, n + c - cg, causal_mask)

        self.n_committed = n + c
        self.pending = tpos_host.clone() if t else None
        return model.head(g[:, cg:])


class ARDecoder(_Decoder):
    """An ordinary KV cache for `ARModel`: one row per generation index, causal over indices.

    Row k holds the input "token generated at k-1" (a learned start vector at k = 0) at the rotary
    position of the token it predicts, so the row for a target is computed once, when the target is
    predicted, and reused when that token is committed.
    """

    model: ARModel

    def __init__(self, model: ARModel, batch_size: int, max_len: int | None = None):
        super().__init__(model, batch_size, max_len)
        self.caches = self._buffers(model.cfg.n_layers)
        self.last_token: torch.Tensor | None = None  # [B, 1] most recently committed token
        self.pending: torch.Tensor | None = None  # [B, 1] position (host) of the row at index n_committed

    @torch.inference_mode()
    def step(
        self,
        commit_tokens: torch.Tensor | None,
        commit_positions: torch.Tensor | None,
        target_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        """Commit tokens (each its own block, in the order given) and predict at most one target."""
        tokens, cpos, tpos, cpos_host, tpos_host = self._check(commit_tokens, commit_positions, target_positions)
        if tpos.shape[1] > 1:
            raise ValueError(
                f"arch 'ar' predicts one token per step (single-token blocks); got {tpos.shape[1]} targets"
            )
        model, n = self.model, self.n_committed
        c = cpos.shape[1]
        reuse = c > 0 and self.pending is not None and torch.equal(self.pending, cpos_host[:, :1])
        # rows [n + reuse, n + c + t): inputs are the previous tokens, positions the tokens they predict
        prev = [] if self.last_token is None else [self.last_token]
        inputs = torch.cat(prev + [tokens], dim=1)
        row_pos = torch.cat([cpos, tpos], dim=1)
        skip = int(reuse)
        start_row = n + skip
        embeds = model.embed(inputs)
        if self.last_token is None:
            embeds = torch.cat([model.start.to(self.dtype).expand(self.batch_size, 1, -1), embeds], dim=1)
        h = embeds[:, skip : row_pos.shape[1]]
        row_pos = row_pos[:, skip:]
        q = row_pos.shape[1]
        self._room(start_row + q)
        if c:
            self.last_token = tokens[:, -1:].clone()
        self.n_committed = n + c
        self.pending = tpos_host.clone() if tpos.shape[1] else None
        if q == 0:
            return h.new_zeros(self.batch_size, 0, model.cfg.vocab_size)
        self.forward_calls += 1
        rope = model.rope.tables(row_pos, self.dtype)
        mask = None
        if q > 1:  # causal among the new rows; every cached row is visible
            ids = list(range(start_row + q))
            mask = _general_mask(ids[start_row:], ids, self.batch_size, h)
        for layer, buf in zip(self.layers, self.caches, strict=True):
            h = layer(h, rope, ALL, ALL, buf, start_row, mask)
        return model.head(h[:, q - tpos.shape[1] :])


def make_decoder(model: Model, batch_size: int, max_len: int | None = None) -> ARMDDecoder | ARDecoder:
    """The cached decoder for a model's architecture."""
    if isinstance(model, ARMDModel):
        return ARMDDecoder(model, batch_size, max_len)
    if isinstance(model, ARModel):
        return ARDecoder(model, batch_size, max_len)
    raise TypeError(f"no cached decoder for {type(model).__name__}; expected ARMDModel or ARModel")
