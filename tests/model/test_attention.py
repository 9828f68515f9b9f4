"""Attention backends agree with the sdpa reference and never produce NaN for empty rows."""

import pytest
import torch

from armd_scale.model import attention
from armd_scale.model.attention import attend, flash_available, prepare, resolve_backend
from armd_scale.model.masks import (
    BlockMaskSpec,
    causal_spec,
    clear_flex_cache,
    dense_causal,
    dense_strict,
    flex_block_mask,
    full_spec,
    strict_spec,
    two_stream_spec,
)

from .conftest import ORDER_CASES, draw_order, tiny_model

CPU = torch.device("cpu")


def test_dense_masks_match_the_definitions():
    block = torch.tensor([[0, 1, 1, 2, 2, 2]])
    mc, msc = dense_causal(block)[0], dense_strict(block)[0]
    for q in range(6):
        for k in range(6):
            assert bool(mc[q, k]) == (block[0, k] <= block[0, q])
            assert bool(msc[q, k]) == (block[0, k] < block[0, q])
    spec = two_stream_spec(block)
    dense = spec.dense()[0, 0]
    assert torch.equal(dense[:6], mc) and torch.equal(dense[6:], msc)


def _qkv(q_len, k_len, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, t, 8, generator=gen, dtype=dtype) for t in (q_len, k_len, k_len)]


@pytest.mark.parametrize("make_spec", [causal_spec, strict_spec, two_stream_spec])
def test_sdpa_first_block_strict_rows_are_zero_not_nan(make_spec):
    _, block = draw_order("sbp", dict(streams=4), None, batch=2, n=16)
    spec = make_spec(block)
    q, k, v = _qkv(spec.shape[1], spec.shape[2])
    out = attend(q, k, v, prepare(spec, "sdpa", CPU, q.dtype))
    assert not torch.isnan(out).any()
    empty = ~spec.dense().any(dim=-1)  # [B, 1, Q]
    assert torch.equal(out.masked_select(empty[..., None].expand_as(out)), torch.zeros(int(empty.sum()) * 2 * 8))
    if make_spec is strict_spec:
        assert bool(empty[:, 0, 0].all())  # the first block has nothing to see


def test_sdpa_matches_a_manual_softmax():
    _, block = draw_order("diffusion", dict(steps=3), None, batch=2, n=10)
    spec = two_stream_spec(block)
    q, k, v = _qkv(20, 10, dtype=torch.float64)
    out = attend(q, k, v, prepare(spec, "sdpa", CPU, q.dtype))
    allowed = spec.dense()
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    torch.testing.assert_close(out, probs @ v)


@pytest.mark.parametrize(
    "kind,params",
    [("l2r", {}), ("random", {}), ("sbp", dict(streams=4)), ("diffusion", dict(steps=4))],
)
@pytest.mark.parametrize("make_spec", [causal_spec, strict_spec, two_stream_spec])
def test_flex_matches_sdpa(kind, params, make_spec):
    _, block = draw_order(kind, params, None, batch=2, n=24, seed=1)
    spec = make_spec(block)
    q, k, v = _qkv(spec.shape[1], spec.shape[2], seed=2)
    ref = attend(q, k, v, prepare(spec, "sdpa", CPU, q.dtype))
    with torch.no_grad():
        out = attend(q, k, v, prepare(spec, "flex", CPU, q.dtype))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in ORDER_CASES if c[0] in ("l2r", "sbp", "diffusion")], ids=str)
def test_whole_model_flex_matches_sdpa(case):
    kind, params, step = case
    order, block = draw_order(kind, params, step, batch=2, n=16, seed=3)
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_model("armd", attention_backend="sdpa")(tokens, order, block)
        out = tiny_model("armd", attention_backend="flex")(tokens, order, block)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flex_block_masks_are_cached_per_pattern():
    clear_flex_cache()
    _, block = draw_order("diffusion", dict(steps=3), None, batch=1, n=16, seed=0)
    first = flex_block_mask(strict_spec(block))
    assert flex_block_mask(strict_spec(block.clone())) is first
    _, other = draw_order("diffusion", dict(steps=3), None, batch=1, n=16, seed=1)
    assert flex_block_mask(strict_spec(other)) is not first


def test_auto_backend_resolution_on_cpu_and_errors():
    _, block = draw_order("l2r", {}, None, batch=1, n=8)
    assert resolve_backend("auto", causal_spec(block), CPU, torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="not one of"):
        resolve_backend("xformers", causal_spec(block), CPU, torch.float32)
    general = BlockMaskSpec(block[:, :2], block)
    with pytest.raises(ValueError, match="single-token blocks"):
        prepare(general, "flash", CPU, torch.float32)


@pytest.mark.parametrize("flash", [False, True])
def test_auto_backend_resolution_on_cuda(flash, monkeypatch):
    """The CUDA branch of `auto`, decided from the device argument alone (no GPU needed): flash where it
    applies (installed, 16-bit, single-token or full pattern), else flex; never sdpa on CUDA."""
    monkeypatch.setattr(attention, "flash_available", lambda: flash)
    cuda = torch.device("cuda", 0)
    _, single = draw_order("l2r", {}, None, batch=1, n=8)
    _, multi = draw_order("sbp", dict(streams=2), None, batch=1, n=8)
    for spec in (causal_spec(single), strict_spec(single), full_spec(1, 8)):
        assert resolve_backend("auto", spec, cuda, torch.bfloat16) == ("flash" if flash else "flex")
        assert resolve_backend("auto", spec, cuda, torch.float16) == ("flash" if flash else "flex")
        assert resolve_backend("auto", spec, cuda, torch.float32) == "flex"  # flash needs 16-bit inputs
    assert resolve_backend("auto", causal_spec(multi), cuda, torch.bfloat16) == "flex"  # flash: one token per block
    assert resolve_backend("auto", BlockMaskSpec(single[:, :2], single), cuda, torch.bfloat16) == "flex"  # general
    assert resolve_backend("auto", causal_spec(single), CPU, torch.bfloat16) == "sdpa"  # the device decides
    assert resolve_backend("sdpa", causal_spec(single), cuda, torch.bfloat16) == "sdpa"  # explicit names win


@pytest.mark.skipif(not flash_available(), reason="flash-attn tests need CUDA and the flash_attn package")
@pytest.mark.parametrize("make_spec", [causal_spec, strict_spec, two_stream_spec])
def test_flash_matches_sdpa_on_gpu(make_spec):
    device = torch.device("cuda")
    _, block = draw_order("random", {}, None, batch=2, n=64)
    spec = make_spec(block.to(device))
    q, k, v = [t.to(device, torch.bfloat16) for t in _qkv(spec.shape[1], spec.shape[2])]
    ref = attend(q.float(), k.float(), v.float(), prepare(spec, "sdpa", device, torch.float32))
    out = attend(q, k, v, prepare(spec, "flash", device, torch.bfloat16))
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
