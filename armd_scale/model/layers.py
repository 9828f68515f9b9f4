"""Transformer building blocks shared by every architecture.

One `Block` serves every layer kind because the kinds differ only in *where queries and keys come
from* and in the mask:

- two-stream layer:  queries from [X; G], keys/values from X, mask two_stream (Mc rows, Msc rows);
- last two-stream layer: queries from G only (X is not used after it), keys/values from X, mask Msc;
- block-causal layer: queries and keys/values from G, mask Mc;
- cached decoding (`ARMDModel.decode_step`): the same calls with a per-layer `KVCache`. The rows
  passed as keys/values are only the new ones; `Attention` writes their K/V into the cache and its
  queries attend to every cached row, under a mask only on cold steps (model/kv_cache.py).

Sharing one module per layer between the two streams is the point: the query stream reuses every
weight (attention, norms, MLP) of the content stream, as in XLNet, and adds no parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, PreparedMask, attend
from .rope import apply_rotary


def mlp_hidden(d_model: int, ratio: float, kind: str) -> int:
    """Hidden width; SwiGLU uses 2/3 of it (rounded up to 8) to keep the GELU MLP's parameter count."""
    if kind == "swiglu":
        return int(math.ceil(2 * ratio * d_model / 3 / 8) * 8)
    if kind == "gelu":
        return int(ratio * d_model)
    raise ValueError(f"model.mlp='{kind}' is not one of 'swiglu', 'gelu'")


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: float, kind: str):
        super().__init__()
        self.kind = kind
        hidden = mlp_hidden(d_model, ratio, kind)
        if kind == "swiglu":
            self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, d_model, bias=False)
        self.wv = nn.Linear(d_model, d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, width = x.shape  # width // head_dim: the local heads under tensor parallel (and fine with t = 0)
        return x.view(b, t, width // self.head_dim, self.head_dim).transpose(1, 2)

    def forward(
        self,
        h_q: torch.Tensor,
        h_kv: torch.Tensor,
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_kv: tuple[torch.Tensor, torch.Tensor],
        mask: PreparedMask | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Queries from h_q, keys/values from h_kv. With a cache, h_kv holds only the new rows: their
        K/V are appended to the cache and the queries attend to every cached row. mask None: every
        key is visible to every query (a warm decoding step)."""
        q = apply_rotary(self._heads(self.wq(h_q)), *rope_q)
        k = apply_rotary(self._heads(self.wk(h_kv)), *rope_kv)
        v = self._heads(self.wv(h_kv))
        if cache is not None:
            k, v = cache.append(k, v)
        if k.shape[2] == 0 or q.shape[2] == 0:  # no key at all (an empty cache): the output is exactly zero
            out = torch.zeros_like(q)
        else:
            out = attend(q, k, v, mask)
        b, h, t, d = out.shape
        return self.wo(out.transpose(1, 2).reshape(b, t, h * d))


class Block(nn.Module):
    """Pre-norm transformer layer: h + Attn(norm h, norm kv_src), then h + MLP(norm h)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, mlp: str, norm_eps: float):
        super().__init__()
        self.attn_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.attn = Attention(d_model, n_heads)
        self.mlp_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.mlp = MLP(d_model, mlp_ratio, mlp)

    def forward(
        self,
        h: torch.Tensor,
        kv_src: torch.Tensor | None,
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_kv: tuple[torch.Tensor, torch.Tensor],
        mask: PreparedMask | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """h: query-side rows [B, Q, d]; kv_src: rows that produce keys/values (None = h itself).
        Returns the updated h. cache: this layer's decoding cache (`Attention.forward`)."""
        normed = self.attn_norm(h)
        kv_normed = normed if kv_src is None else self.attn_norm(kv_src)
        h = h + self.attn(normed, kv_normed, rope_q, rope_kv, mask, cache)
        return h + self.mlp(self.mlp_norm(h))


def init_weights(module: nn.Module, std: float, n_layers: int) -> None:
    """GPT-2 style: normal(std) everywhere, residual output projections scaled by 1/sqrt(2L)."""
    for name, p in module.named_parameters():
        if p.dim() < 2 or name.endswith("pos_table") or name.endswith("start"):
            continue
        scale = 1.0 / math.sqrt(2 * n_layers) if name.endswith(("wo.weight", "down.weight")) else 1.0
        nn.init.normal_(p, mean=0.0, std=std * scale)
