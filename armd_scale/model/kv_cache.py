"""The decoding cache the model's own layers read and write (docs/GENERATION.md, What the cache holds).

Why it lives in the model. Cached decoding must compute exactly what `model(tokens, order, block)`
computes. Keeping the cache beside `Attention` lets decoding call the very `Block`s, `Attention`s and
query-input code of the training forward (`ARMDModel.decode_step`, `ARModel.decode_step`), so there
is one copy of the forward arithmetic; the generate package only orchestrates steps.

What is here:
- `KVCache` (defined in model/attention.py, beside the attention that fills it, so the layers need
  nothing else): one layer's K/V, preallocated to `max_len` rows and written in place. `Attention`
  appends the keys of its call at `filled` and attends to rows [0, filled). Rows past what the
  decoder has committed are *pending* (a causal layer's query-stream K/V computed for the last
  targets); `truncate` keeps them when the next commit is those targets and drops them otherwise.
- `ARMDCache`: the K/V of every layer (content stream for the two-stream layers, query stream for
  the causal ones) plus the query input's running state (`query_input.QueryInputCache`).
- `ARCache`: an ordinary KV cache for the AR baseline, plus the last committed token.
- `block_mask`: the sdpa mask of a cold step from per-row limits and per-key block ids.
"""

from __future__ import annotations

import torch

from ..model_config import ModelConfig
from .attention import KVCache, PreparedMask, prepare
from .masks import BlockMaskSpec
from .query_input import QueryInputCache


def _layer_caches(cfg: ModelConfig, count: int, batch: int, max_len: int, device, dtype) -> list[KVCache]:
    head_dim = cfg.d_model // cfg.n_heads
    return [KVCache(batch, cfg.n_heads, max_len, head_dim, device, dtype) for _ in range(count)]


class ARMDCache:
    """Everything an ARMD decoding step reads of the past (docs/GENERATION.md, What the cache holds)."""

    def __init__(self, cfg: ModelConfig, n_two_stream: int, neighbour: bool, batch: int, max_len: int, device, dtype):
        self.batch, self.dtype = batch, dtype
        self.x_cache = _layer_caches(cfg, n_two_stream, batch, max_len, device, dtype)  # content stream
        self.g_cache = _layer_caches(cfg, cfg.n_layers - n_two_stream, batch, max_len, device, dtype)  # query stream
        self.query = QueryInputCache(cfg, neighbour, batch, max_len, device, dtype)
        self.n_committed = 0


class ARCache:
    """The AR baseline's cache: one K/V row per generation index, and the last committed token."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        self.batch, self.dtype = batch, dtype
        self.layers = _layer_caches(cfg, cfg.n_layers, batch, max_len, device, dtype)
        self.last_token: torch.Tensor | None = None  # [B, 1]
        self.n_committed = 0


def block_mask(q_limit: list[int], k_block: list[int], batch: int, like: torch.Tensor) -> PreparedMask:
    """A prepared sdpa mask from per-row limits and per-key block ids (rows with no key give zeros).

    Always sdpa, whatever `model.attention_backend` is: a decoding step has a few rows, and the
    training backends (flex, flash) are built for long sequences."""
    dev = like.device
    spec = BlockMaskSpec(
        torch.tensor(q_limit, device=dev).expand(batch, -1), torch.tensor(k_block, device=dev).expand(batch, -1)
    )
    return prepare(spec, "sdpa", dev, like.dtype)
