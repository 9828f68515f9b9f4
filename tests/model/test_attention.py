"""Attention backends agree with the sdpa reference and never produce NaN for empty rows."""

import sys

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


SINGLE = draw_order("l2r", {}, None, batch=1, n=8)[1]
MULTI = draw_order("sbp", dict(streams=2), None, batch=1, n=8)[1]
BF16, FP32, FP64 = torch.bfloat16, torch.float32, torch.float64
DOCS = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
# (name, spec, device type, dtype, flash imports) -> expected backend. Written out, not derived: this is
# the decision the docs state (ARCHITECTURE.md, "Attention backends").
CHOICES = [
    # auto on CUDA: flash where it applies and imports
    ("auto", causal_spec(SINGLE), "cuda", BF16, True, "flash"),
    ("auto", strict_spec(SINGLE), "cuda", torch.float16, True, "flash"),
    ("auto", full_spec(1, 8), "cuda", BF16, True, "flash"),
    # without flash, single-token blocks (left to right) and bidirectional attention: sdpa's fused kernels
    ("auto", causal_spec(SINGLE), "cuda", BF16, False, "sdpa"),
    ("auto", two_stream_spec(SINGLE), "cuda", BF16, False, "sdpa"),
    ("auto", full_spec(1, 8), "cuda", BF16, False, "sdpa"),
    ("auto", causal_spec(SINGLE), "cuda", FP32, True, "sdpa"),  # flash needs 16-bit inputs
    # block structures: compiled flex, except fp64, which never goes to compiled flex
    ("auto", causal_spec(MULTI), "cuda", BF16, True, "flex"),
    ("auto", two_stream_spec(MULTI), "cuda", FP32, False, "flex"),
    ("auto", BlockMaskSpec(SINGLE[:, :2], SINGLE), "cuda", BF16, True, "flex"),  # general (cached decoding)
    ("auto", causal_spec(MULTI), "cuda", FP64, False, "sdpa"),
    ("auto", causal_spec(SINGLE), "cuda", FP64, True, "sdpa"),
    # the CPU: always sdpa
    ("auto", causal_spec(MULTI), "cpu", BF16, True, "sdpa"),
    # explicit names win, except flash where it cannot run
    ("sdpa", causal_spec(MULTI), "cuda", BF16, True, "sdpa"),
    ("flex", causal_spec(SINGLE), "cuda", FP64, True, "flex"),
    ("flash", causal_spec(SINGLE), "cuda", BF16, True, "flash"),
    ("flash", causal_spec(SINGLE), "cuda", FP32, True, "sdpa"),  # fp32 evaluation of a flash-trained model
    ("flash", causal_spec(SINGLE), "cpu", FP32, False, "sdpa"),  # ... and on the CPU
    ("flash", strict_spec(MULTI), "cuda", BF16, True, "flex"),  # random-order blocks
    ("flash", causal_spec(SINGLE), "cuda", BF16, False, "sdpa"),  # flash_attn missing or broken
    # document masks (data.document_mask): never flash nor sdpa's fused kernels, which take no extra rule
    ("auto", causal_spec(SINGLE, DOCS), "cuda", BF16, True, "flex"),
    ("auto", two_stream_spec(SINGLE, DOCS), "cuda", BF16, False, "flex"),
    ("auto", causal_spec(SINGLE, DOCS), "cuda", FP64, True, "sdpa"),
    ("auto", strict_spec(MULTI, DOCS), "cpu", FP32, True, "sdpa"),
    ("flash", causal_spec(SINGLE, DOCS), "cuda", BF16, True, "flex"),
]


@pytest.mark.parametrize("name, spec, device_type, dtype, flash_imports, expected", CHOICES)
def test_backend_choice_table(name, spec, device_type, dtype, flash_imports, expected):
    chosen, replaced = attention.choose_backend(name, spec, device_type, dtype, flash_imports)
    assert chosen == expected
    assert (replaced is not None) == (name == "flash" and expected != "flash")  # a replaced flash says why


def test_a_flash_trained_model_evaluates_in_fp32_on_the_cpu(recwarn):
    """Before: prepare() raised for 'flash' on the CPU or in fp32, so such a model could not be evaluated
    anywhere but a GPU in 16 bits. Now it runs the sdpa kernels and gives sdpa's numbers."""
    spec = two_stream_spec(SINGLE)
    q, k, v = _qkv(spec.shape[1], spec.shape[2])
    out = attend(q, k, v, prepare(spec, "flash", CPU, torch.float32))
    torch.testing.assert_close(out, attend(q, k, v, prepare(spec, "sdpa", CPU, torch.float32)), rtol=0, atol=0)
    _, random_block = draw_order("random", {}, None, batch=1, n=8)
    general = BlockMaskSpec(random_block[:, :2], random_block)
    assert prepare(general, "flash", CPU, torch.float32).backend == "sdpa"


def test_a_broken_flash_attn_install_falls_back_with_a_warning(tmp_path, monkeypatch):
    """Before: flash-attn was detected with find_spec only, so a build for another torch/CUDA (which
    raises at import) was picked by auto and crashed the first forward. Now it counts as unavailable."""
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text('raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c10")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    attention.flash_imports.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the decision only; nothing runs on CUDA
    try:
        with pytest.warns(UserWarning, match="flash_attn is installed but does not import.*undefined symbol"):
            assert not attention.flash_available()
        assert resolve_backend("auto", causal_spec(SINGLE), torch.device("cuda", 0), BF16) == "sdpa"
    finally:
        attention.flash_imports.cache_clear()


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
