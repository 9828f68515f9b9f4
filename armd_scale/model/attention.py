"""Attention backends over block masks (docs/ARCHITECTURE.md, Attention backends).

- sdpa:  torch SDPA with a dense boolean mask. Works everywhere; the reference in tests.
- flex:  FlexAttention with a `BlockMask` (cached per pattern). GPU path for any block structure;
         on CPU it runs forward only (eager), which is enough to test it against sdpa.
- flash: flash-attn, single-token blocks only (Mc = causal; Msc = causal over shifted keys).
- auto:  on CUDA, flash where it applies and imports, else sdpa's fused causal kernels for
         single-token blocks (left to right) and bidirectional attention, else flex (compiled) for
         block structures in 16/32-bit, else sdpa (fp64: a dense mask, never compiled flex in fp64);
         on the CPU, sdpa.

Every backend computes the same function, so a backend is a speed choice, never a model property:
a model trained with `flash` is evaluated in fp32 on a GPU, on a CPU, or in random orders by the
backend `auto` would choose there (one warning says so), instead of failing. `choose_backend` is the
whole decision as a table of its inputs. A spec with document ids (data.document_mask) is never given
to flash or to sdpa's fused causal/unmasked kernels, which cannot AND in another rule: it runs sdpa
with a dense mask (CPU, fp64) or flex (CUDA).

The `full` pattern (bidirectional, arch `mdlm`) runs every backend's unmasked kernel.

A query row with no visible key (the first block under a strict mask) returns zeros, never NaN:
that row's output then carries no information, which is exactly what "nothing to condition on" means.

Masks are prepared once per forward (`prepare`) and shared by every layer.

Decoding keeps each layer's keys and values in a `KVCache` (model/kv_cache.py says what the whole
decoding cache holds); `attend` with mask None is a warm decoding step, every key visible.
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
    """flash-attn can run here: a CUDA device and a flash_attn package that imports."""
    return torch.cuda.is_available() and flash_imports()


@functools.cache
def flash_imports() -> bool:
    """Whether flash_attn imports. A build for another torch or CUDA is found by `find_spec` but fails
    at import (undefined symbols); that must mean "not available" here, with one warning, rather than
    a crash at the first forward."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from flash_attn import flash_attn_func  # noqa: F401
    except Exception as exc:  # ImportError, OSError from the extension, anything the build raises
        warnings.warn(
            f"flash_attn is installed but does not import ({type(exc).__name__}: {exc}); attention uses sdpa "
            "or flex instead. Reinstall flash-attn built for this torch and CUDA to use it.",
            stacklevel=2,
        )
        return False
    return True


def _flash_applies(spec: BlockMaskSpec, device_type: str, dtype: torch.dtype) -> str | None:
    """Why flash cannot run this call (None when it can, the package aside)."""
    if device_type != "cuda":
        return f"it needs CUDA (device {device_type})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it needs 16-bit inputs (dtype {str(dtype).replace('torch.', '')})"
    if spec.has_documents:
        return "it cannot take document masks (data.document_mask)"
    if spec.pattern == "general" or not (spec.single_token_blocks or spec.pattern == "full"):
        return "it supports single-token blocks and bidirectional attention only"
    return None


def choose_backend(
    name: str, spec: BlockMaskSpec, device_type: str, dtype: torch.dtype, flash_usable: bool
) -> tuple[str, str | None]:
    """(backend, why the named one was replaced or None): the whole choice as a table of its inputs.

    flash_usable says whether flash_attn imports on a CUDA device (`flash_available`)."""
    if name not in BACKENDS:
        raise ValueError(f"attention backend '{name}' is not one of {', '.join(BACKENDS)}")
    flash_blocker = _flash_applies(spec, device_type, dtype) or (None if flash_usable else "flash_attn is not usable")
    if name == "flash" and flash_blocker is None:
        return "flash", None
    if name not in ("auto", "flash"):
        return name, None
    if device_type != "cuda":
        chosen = "sdpa"
    elif name == "auto" and flash_blocker is None:
        chosen = "flash"
    elif spec.pattern == "full" or (spec.single_token_blocks and spec.pattern != "general"):
        chosen = "sdpa"  # fused causal / unmasked kernels; flex would only add a compile
    elif dtype == torch.float64:
        chosen = "sdpa"  # a dense fp64 mask: compiled flex in fp64 is neither fast nor the reference
    else:
        chosen = "flex"
    if name == "flash":
        return chosen, f"attention backend 'flash' cannot run here: {flash_blocker}; using {chosen}"
    return chosen, None


@dataclass
class PreparedMask:
    """A mask in the form one backend consumes; built once per forward and reused by every layer."""

    backend: str
    spec: BlockMaskSpec
    dense: torch.Tensor | None = None  # [B, 1, Q, K] (sdpa), rows with no key unmasked
    has_key: torch.Tensor | None = None  # [B, 1, Q, 1] False for rows that must output zeros
    flex: Any = None


class KVCache:
    """K/V of one layer: [B, H, max_len, head_dim] each, rows [0, filled) valid, filled front to back."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.filled = 0

    def truncate(self, rows: int) -> None:
        """Keep rows [0, rows): what is committed, plus pending rows the caller has just committed."""
        if rows > self.filled:
            raise ValueError(f"cannot keep {rows} cache rows: only {self.filled} are written")
        self.filled = rows

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, H, m, hd] at rows [filled, filled + m); return every valid row's K and V."""
        start, end = self.filled, self.filled + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"decoding needs {end} cache rows but the cache holds max_len={self.k.shape[2]}")
        if end > start:
            self.k[:, :, start:end] = k
            self.v[:, :, start:end] = v
        self.filled = end
        return self.k[:, :, :end], self.v[:, :, :end]


def resolve_backend(name: str, spec: BlockMaskSpec, device: torch.device, dtype: torch.dtype) -> str:
    """The backend for one call (`choose_backend`); a replaced `flash` is reported once per reason."""
    usable = device.type == "cuda" and name in ("auto", "flash") and flash_available()
    chosen, replaced = choose_backend(name, spec, device.type, dtype, usable)
    if replaced:
        _warn_once(replaced)
    return chosen


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def prepare(spec: BlockMaskSpec, backend: str, device: torch.device, dtype: torch.dtype) -> PreparedMask:
    chosen = resolve_backend(backend, spec, device, dtype)
    if spec.pattern == "full":  # unmasked kernels; nothing to build
        return PreparedMask(chosen, spec)
    if chosen == "sdpa":
        if spec.single_token_blocks and spec.pattern != "general":
            return PreparedMask("sdpa", spec)  # causal kernels (see attend); no O(N^2) mask in memory
        allowed = spec.dense()
        has_key = allowed.any(dim=-1, keepdim=True)
        return PreparedMask("sdpa", spec, dense=allowed | ~has_key, has_key=has_key)
    if chosen == "flex":
        return PreparedMask("flex", spec, flex=flex_block_mask(spec))
    if chosen == "flash":  # choose_backend returned it only where it applies and imports
        return PreparedMask("flash", spec)
    raise AssertionError(chosen)  # pragma: no cover


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: PreparedMask | None) -> torch.Tensor:
    """q [B, H, Q, D], k/v [B, H, K, D] -> [B, H, Q, D]. mask None: every key visible to every query
    (a warm decoding step, whose queries all come after every cached key)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
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
        flash_attn_func = _flash_attn_func()
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _flash_attn_func():
    """flash_attn's kernel (an optional dependency; layout [B, T, H, D]). Imported in a try block, the one
    place transformers' check_imports does not look, so the Hugging Face export that ships this module
    loads where flash-attn is not installed (checkpoints/hf_code_files.py)."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:
        raise RuntimeError("model.attention_backend=flash needs the flash_attn package") from exc
    return flash_attn_func


def _flash_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    flash_attn_func = _flash_attn_func()
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
