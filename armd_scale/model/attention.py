"""Attention backends over block masks (docs/ARCHITECTURE.md, Attention backends).

- sdpa:  torch SDPA with a dense boolean mask. Works everywhere; the reference in tests.
- flex:  FlexAttention with a `BlockMask` (cached per pattern). GPU path for any block structure;
         on CPU it runs forward only (eager), which is enough to test it against sdpa.
- flash: flash-attn, single-token blocks only (Mc = causal; Msc = causal over shifted keys).
- auto:  flash if installed and applicable, else flex on CUDA, else sdpa.

The `full` pattern (bidirectional, arch `mdlm`) runs every backend's unmasked kernel.

A query row with no visible key (the first block under a strict mask) returns zeros, never NaN:
that row's output then carries no information, which is exactly what "nothing to condition on" means.

Masks are prepared once per forward (`prepare`) and shared by every layer.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .masks import BlockMaskSpec, flex_block_mask

BACKENDS = ("sdpa", "flex", "flash", "auto")


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


@dataclass
class PreparedMask:
    """A mask in the form one backend consumes; built once per forward and reused by every layer."""

    backend: str
    spec: BlockMaskSpec
    dense: torch.Tensor | None = None  # [B, 1, Q, K] (sdpa), rows with no key unmasked
    has_key: torch.Tensor | None = None  # [B, 1, Q, 1] False for rows that must output zeros
    flex: Any = None


def resolve_backend(name: str, spec: BlockMaskSpec, device: torch.device, dtype: torch.dtype) -> str:
    if name not in BACKENDS:
        raise ValueError(f"attention backend '{name}' is not one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    if (
        device.type == "cuda"
        and flash_available()
        and (spec.single_token_blocks or spec.pattern == "full")
        and spec.pattern != "general"
        and dtype in (torch.float16, torch.bfloat16)
    ):
        return "flash"
    if device.type == "cuda":
        return "flex"
    return "sdpa"


def prepare(spec: BlockMaskSpec, backend: str, device: torch.device, dtype: torch.dtype) -> PreparedMask:
    chosen = resolve_backend(backend, spec, device, dtype)
    if spec.pattern == "full":  # unmasked kernels; nothing to build
        if chosen == "flash" and not flash_available():
            raise RuntimeError("attention backend 'flash' needs CUDA and flash-attn (pip install 'armd_scale[gpu]')")
        return PreparedMask(chosen, spec)
    if chosen == "sdpa":
        if spec.single_token_blocks and spec.pattern != "general":
            return PreparedMask("sdpa", spec)  # causal kernels (see attend); no O(N^2) mask in memory
        allowed = spec.dense()
        has_key = allowed.any(dim=-1, keepdim=True)
        return PreparedMask("sdpa", spec, dense=allowed | ~has_key, has_key=has_key)
    if chosen == "flex":
        return PreparedMask("flex", spec, flex=flex_block_mask(spec))
    if chosen == "flash":
        if not spec.single_token_blocks or spec.pattern == "general":
            raise ValueError(
                "attention backend 'flash' supports single-token blocks with causal/strict/two-stream "
                f"patterns only; got pattern={spec.pattern}, single_token_blocks={spec.single_token_blocks}"
            )
        if not flash_available():
            raise RuntimeError("attention backend 'flash' needs CUDA and flash-attn (pip install 'armd_scale[gpu]')")
        return PreparedMask("flash", spec)
    raise AssertionError(chosen)  # pragma: no cover


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: PreparedMask) -> torch.Tensor:
    """q [B, H, Q, D], k/v [B, H, K, D] -> [B, H, Q, D]."""
    if mask.spec.pattern == "full":
        return _full(q, k, v, mask.backend)
    if mask.backend == "sdpa":
        if mask.dense is None:  # single-token blocks: causal kernels, no mask tensor
            return _single_token_blocks(q, k, v, mask.spec.pattern, _sdpa_causal)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
        assert mask.has_key is not None  # prepare() builds it with every dense mask
        return out.masked_fill(~mask.has_key, 0.0)
    if mask.backend == "flex":
        return _flex_fn(q.device.type)(q, k, v, block_mask=mask.flex)
    if mask.backend == "flash":
        return _single_token_blocks(q, k, v, mask.spec.pattern, _flash_causal)
    raise AssertionError(mask.backend)  # pragma: no cover


@functools.cache
def _flex_fn(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cuda":
        return torch.compile(flex_attention, dynamic=False)

    def eager(q, k, v, block_mask):
        # Eager FlexAttention is a reference implementation (CPU, forward only); silence its advice to compile.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return flex_attention(q, k, v, block_mask=block_mask)

    return eager


def _full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Bidirectional attention: every query sees every key."""
    if backend == "flex":
        return _flex_fn(q.device.type)(q, k, v, block_mask=None)
    if backend == "flash":
        from flash_attn import flash_attn_func

        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _flash_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func  # optional dependency; layout [B, T, H, D]

    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)


def _single_token_blocks(q, k, v, pattern: str, causal) -> torch.Tensor:
    """With one token per block, Mc is the causal mask and Msc is causal attention of queries 1..N-1
    over keys 0..N-2 (row 0 sees nothing and is zero), so fused causal kernels do all the work."""

    def strict(qq):
        out = torch.zeros_like(qq)
        if qq.shape[2] > 1:
            out[:, :, 1:] = causal(qq[:, :, 1:], k[:, :, :-1], v[:, :, :-1])
        return out

    if pattern == "causal":
        return causal(q, k, v)
    if pattern == "strict":
        return strict(q)
    if pattern == "two_stream":
        n = k.shape[2]
        return torch.cat([causal(q[:, :, :n], k, v), strict(q[:, :, n:])], dim=2)
    raise ValueError(f"no single-token-block kernel for pattern '{pattern}'")
