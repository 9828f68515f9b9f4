"""The ARMD model (docs/ARCHITECTURE.md, Forward pass) and the autoregressive baseline.

Contract shared by every architecture:

    logits = model(tokens, order, block)     # logits[b, k] predicts tokens[b, order[b, k]]

`logits[b, k]` depends only on tokens at positions `order[b, j]` with `block[b, j] < block[b, k]`
and on positions (never contents) of anything. The whole computation happens in the *generation
frame*: tokens are gathered into generation order and carry their original positions along.

Forward pass, top to bottom:
1. X0 = embedding of the tokens in generation order (the content stream).
2. G0 = s + mean_{i: block[i] < block[n]} <PE[pos n], PE[pos i]> X0[i] (prefix aggregation: the
   strictly causal input of the query stream; s is a learned start vector so the first block is not 0).
3. Two-stream layers: X attends to X under Mc; G attends to X under Msc; both streams share weights.
   The X output of the last two-stream layer is never read, so that layer runs the G stream only.
4. Block-causal layers on G (Mc), final norm, LM head tied to the embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import prepare
from .generation_orders import l2r_order
from .layers import Block, init_weights
from .masks import causal_spec, dense_strict, strict_spec, two_stream_spec
from .rope import RotaryEmbedding
from .vocab import mask_padded_vocab


class _Transformer(nn.Module):
    """Embedding, rotary tables, a stack of `Block`s, final norm and (tied) LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.layers = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.mlp, cfg.norm_eps) for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.activation_checkpointing = False

    def _run_layer(self, layer: nn.Module, *args) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _mask(self, spec, like: torch.Tensor):
        return prepare(spec, self.cfg.attention_backend, like.device, like.dtype)

    def head(self, g: torch.Tensor) -> torch.Tensor:
        return mask_padded_vocab(self.lm_head(self.final_norm(g)), self.cfg.tokenizer_vocab_size)

    def num_params(self, exclude_embedding: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embedding and name.startswith("embed")):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def _check_inputs(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> None:
        if tokens.dim() != 2 or order.shape != tokens.shape or block.shape != tokens.shape:
            raise ValueError(
                f"tokens {tuple(tokens.shape)}, order {tuple(order.shape)} and block {tuple(block.shape)} "
                "must all be [batch, seq_len]"
            )
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.max_seq_len={self.cfg.max_seq_len}")


def initial_pos_table(max_len: int, d_pe: int, tau: float) -> torch.Tensor:
    """Initial PE table for prefix aggregation.

    tau > 0: deterministic Fourier features of the exponential kernel exp(-|n - i| / tau), so that
    <PE_n, PE_i> starts as a recency kernel and G0 as a decaying average of the nearest earlier
    tokens (frequencies are quantiles of the kernel's Cauchy spectral density; cos/sin pairs make
    the product a function of n - i only). Training is free to reshape it. Measured on the built-in
    corpus: without it the query stream needs hundreds of steps before it uses any context.
    tau = 0: i.i.d. normal with std d_pe^-1/4, so <PE_n, PE_i> has unit variance for n != i.
    """
    if tau <= 0:
        return torch.randn(max_len, d_pe) * d_pe**-0.25
    pairs = d_pe // 2
    quantiles = (torch.arange(pairs, dtype=torch.float64) + 0.5) / pairs
    omega = torch.tan(math.pi * quantiles / 2) / tau
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * omega[None, :]
    table = torch.cat([angles.cos(), angles.sin()], dim=1) / math.sqrt(pairs)
    if d_pe % 2:  # odd width: a constant feature keeps the kernel a function of n - i
        table = torch.cat([table, torch.zeros(max_len, 1, dtype=torch.float64)], dim=1)
    return table.float()


class ARMDModel(_Transformer):
    """Two-stream strictly causal bottom half + block-causal top half (docs/ARCHITECTURE.md, Forward pass)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.n_two_stream = cfg.two_stream_layers
        d_pe = cfg.d_pe
        self.pos_table = nn.Parameter(initial_pos_table(cfg.max_seq_len, d_pe, cfg.pe_init_tau))
        self.start = nn.Parameter(torch.randn(cfg.d_model) * cfg.init_std)
        # Position-conditioned start: without it a first-block query knows nothing about *where* it
        # is (RoPE is relative and there are no keys to attend to), so p(x_n | nothing) could not
        # depend on n. Positions, unlike contents, may be seen by every query.
        self.start_proj = nn.Linear(d_pe, cfg.d_model, bias=False) if cfg.positional_start else None
        init_weights(self, cfg.init_std, cfg.n_layers)

    # -- pieces reused by cached decoding ---------------------------------------------------------

    def query_start(self, pos: torch.Tensor) -> torch.Tensor:
        """The content-free part of G0 for target positions pos [B, T]: s (+ W_s PE[pos])."""
        start = self.start.expand(*pos.shape, -1)
        if self.start_proj is not None:
            start = start + self.start_proj(self.pos_table[pos])
        return start

    def prefix_aggregate(self, x: torch.Tensor, pos: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """G0 = start(pos n) + agg over strictly earlier blocks of <PE[pos n], PE[pos i]> X0[i] (dense form)."""
        pe = self.pos_table[pos]  # [B, N, d_pe]
        visible = dense_strict(block)  # [B, N(query), N(key)]
        weights = torch.bmm(pe, pe.transpose(1, 2)) * visible.to(pe.dtype)
        if self.cfg.prefix_agg == "mean":
            weights = weights / visible.sum(dim=-1, keepdim=True).clamp(min=1).to(pe.dtype)
        return self.query_start(pos).to(x.dtype) + torch.bmm(weights.to(x.dtype), x)

    def forward(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        self._check_inputs(tokens, order, block)
        pos = order
        x = self.embed(torch.gather(tokens, 1, order))
        g = self.prefix_aggregate(x, pos, block)
        rope = self.rope.tables(pos, x.dtype)
        rope2 = (torch.cat([rope[0], rope[0]], dim=2), torch.cat([rope[1], rope[1]], dim=2))

        n = tokens.shape[1]
        both = self._mask(two_stream_spec(block), x)
        strict = self._mask(strict_spec(block), x)
        causal = self._mask(causal_spec(block), x)
        for i, layer in enumerate(self.layers):
            if i < self.n_two_stream - 1:
                xg = self._run_layer(layer, torch.cat([x, g], dim=1), x, rope2, rope, both)
                x, g = xg[:, :n], xg[:, n:]
            elif i == self.n_two_stream - 1:
                g = self._run_layer(layer, g, x, rope, rope, strict)
            else:
                g = self._run_layer(layer, g, None, rope, rope, causal)
        return self.head(g)


class ARModel(_Transformer):
    """Plain causal transformer under the same contract (the FLOP-matched baseline).

    Input at generation index k is the token generated at k-1 (a learned start vector at k = 0), with
    causal attention over generation indices; rotary positions are the *target* positions. With the
    l2r order this is an ordinary GPT. Any order with single-token blocks is accepted (an order-blind
    shifted model); multi-token blocks would leak a block's own tokens and are refused.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.start = nn.Parameter(torch.randn(cfg.d_model) * cfg.init_std)
        init_weights(self, cfg.init_std, cfg.n_layers)

    def shifted_inputs(self, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        x = self.embed(torch.gather(tokens, 1, order))
        start = self.start.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([start, x[:, :-1]], dim=1)

    def forward(self, tokens: torch.Tensor, order: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        self._check_inputs(tokens, order, block)
        n = tokens.shape[1]
        if not torch.equal(block, torch.arange(n, device=block.device).expand_as(block)):
            raise ValueError("arch 'ar' needs single-token blocks (block[b, k] == k); use arch 'armd' for blocks")
        h = self.shifted_inputs(tokens, order)
        rope = self.rope.tables(order, h.dtype)
        causal = self._mask(causal_spec(l2r_order(tokens.shape[0], n)[1].to(tokens.device)), h)
        for layer in self.layers:
            h = self._run_layer(layer, h, None, rope, rope, causal)
        return self.head(h)
