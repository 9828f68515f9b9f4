"""model/memory.py's activation count against what autograd really keeps.

The reference is measured: every tensor the forward pass hands to autograd for the backward pass
(`torch.autograd.graph.saved_tensors_hooks`), counted once per storage, parameters excluded."""

from __future__ import annotations

import pytest
import torch

from armd_scale.config import ModelConfig
from armd_scale.model import build_model, order_loss
from armd_scale.model.generation_orders import l2r_order, sbp_order
from armd_scale.model.memory import DTYPE_BYTES, activation_bytes, query_input_chunk_bytes
from armd_scale.model.query_input import query_rows

from .conftest import saved_for_backward

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def saved_bytes(cfg: ModelConfig, batch: int, precision: str, order_kind: str) -> int:
    torch.manual_seed(0)
    model = build_model(cfg).to(DTYPES[precision]).train()
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    n = cfg.max_seq_len
    tokens = torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(0))
    order, block = l2r_order(batch, n) if order_kind == "l2r" else sbp_order(batch, n, streams=4)
    with saved_for_backward(owned) as saved:
        logits = model(tokens) if cfg.arch == "mdlm" else model(tokens, order, block)
        order_loss(logits, tokens, order)
    return saved.bytes


SHAPES = [dict(n_layers=2, d_model=64, n_heads=4, max_seq_len=64, vocab_size=256),
          dict(n_layers=6, d_model=96, n_heads=3, max_seq_len=96, vocab_size=1000)]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=["L2", "L6"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_activation_formula_matches_what_autograd_keeps(arch, precision, shape):
    cfg = ModelConfig(arch=arch, d_pe=16, **shape)
    measured = saved_bytes(cfg, 2, precision, "l2r")
    estimate = activation_bytes(cfg, 2, cfg.max_seq_len, precision).total
    assert estimate == pytest.approx(measured, rel=0.02)


def test_activation_formula_with_multi_token_blocks_and_dense_masks():
    cfg = ModelConfig(arch="armd", n_layers=4, d_model=64, n_heads=4, max_seq_len=64, vocab_size=256, d_pe=16)
    measured = saved_bytes(cfg, 2, "fp32", "sbp")
    estimate = activation_bytes(cfg, 2, 64, "fp32", multi_token_blocks=True).total
    assert estimate == pytest.approx(measured, rel=0.05)


def test_activation_checkpointing_keeps_layer_inputs_and_one_layer():
    cfg = ModelConfig(arch="ar", n_layers=8, d_model=64, n_heads=4, max_seq_len=64, vocab_size=256)
    plain = activation_bytes(cfg, 4, 64, "bf16")
    per_layer = plain.layers // 8
    assert plain.layers_checkpointed == 8 * (4 * 64 * 64 * 2) + per_layer  # 8 inputs of T x d x 2 bytes + one layer
    assert plain.total_checkpointed < plain.total


@pytest.mark.parametrize("kind", ["symmetric", "directional"])
@pytest.mark.parametrize("heads", [1, 3])
def test_neighbour_attention_keeps_nothing_in_training(kind, heads):
    """G0 runs in checkpointed chunks (model/query_input.py): with or without neighbour heads it keeps
    the same inputs, so the heads' [B, H, N, N] scores add nothing to what autograd keeps."""
    shape = dict(arch="armd", d_pe=16, n_layers=2, d_model=64, n_heads=4, max_seq_len=32, vocab_size=256)
    without = ModelConfig(**shape, neighbour_heads=0)
    with_heads = ModelConfig(**shape, neighbour_heads=heads, neighbour_kind=kind)
    measured = saved_bytes(with_heads, 3, "bf16", "l2r") - saved_bytes(without, 3, "bf16", "l2r")
    estimate = activation_bytes(with_heads, 3, 32, "bf16").total - activation_bytes(without, 3, 32, "bf16").total
    assert estimate == measured == 0


def chunk_saved_bytes(cfg: ModelConfig, batch: int, precision: str, rows: int) -> int:
    """What one chunk of G0 (query rows 0..rows-1 over every key) keeps for its backward pass beyond
    its inputs: the transient a checkpointed chunk rebuilds. Measured on a plain (not checkpointed) call."""
    torch.manual_seed(0)
    model = build_model(cfg).to(DTYPES[precision]).train()
    n = cfg.max_seq_len
    order, block = l2r_order(batch, n)
    x = torch.randn(batch, n, cfg.d_model, dtype=DTYPES[precision], requires_grad=True)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), x, order, block]}
    with saved_for_backward(owned) as saved:
        query_rows(model, x, order, block, 0, rows)
    return saved.bytes


@pytest.mark.parametrize("rows", [7, 40])  # a chunk of 7 rows; all 40 rows (a dense evaluation)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "variant",
    [dict(), dict(neighbour_kind="symmetric", neighbour_heads=1), dict(neighbour_kind="symmetric"),
     dict(neighbour_heads=3), dict(query_input="paper")],
    ids=["default", "symmetric1", "symmetric4", "directional3", "paper"],
)  # fmt: skip
def test_query_input_chunk_is_counted(variant, precision, rows):
    """The transient of one chunk (model.memory.query_input_chunk_bytes) is exactly what a chunk keeps;
    every dimension differs (B 2, C 7, N 40, d 24, d_pe 8) so no term can stand in for another."""
    cfg = ModelConfig(arch="armd", d_pe=8, n_layers=2, d_model=24, n_heads=4, max_seq_len=40, vocab_size=256, **variant)
    measured = chunk_saved_bytes(cfg, 2, precision, rows)
    assert query_input_chunk_bytes(cfg, 2, 40, DTYPE_BYTES[precision], rows) == measured
