"""G0 in chunks of query rows (model/query_input.py) is the dense G0, and keeps no N x N tensor.

The reference is the dense evaluation written out here: every query row at once, the [B, N, N]
visibility, prefix weights and neighbour scores built whole, no checkpointing. The chunked path must
give the same G0 and the same gradient for X0 and for every parameter (float64, randomised weights
so every neighbour head, both sides, the sinks and W_s are live), for single-token blocks in the
left-to-right and a random order and for multi-token blocks, with N spanning several chunks and a
remainder. What it keeps for the backward pass is measured with saved_tensors_hooks.
"""

from __future__ import annotations

import copy

import pytest
import torch

from armd_scale.model import order_loss
from armd_scale.model import query_input as query_input_module
from armd_scale.model.masks import dense_strict
from armd_scale.model.neighbour import NeighbourAttention

from .conftest import draw_order, randomise_parameters, saved_for_backward, tiny_model

VARIANTS = [
    pytest.param(dict(query_input="neighbour"), id="neighbour"),
    pytest.param(dict(query_input="paper"), id="paper"),
    pytest.param(dict(query_input="neighbour", neighbour_kind="symmetric"), id="neighbour-symmetric"),
    pytest.param(dict(neighbour_heads=2, prefix_agg="mean", prefix_norm=True), id="mean-norm"),
    pytest.param(
        dict(positional_start=True, positional_start_table="separate", positional_start_scope="first_block"),
        id="start-separate-first-block",
    ),
    pytest.param(dict(neighbour_heads=1, prefix_query_table=True, prefix_agg="none"), id="query-table-no-sum"),
    pytest.param(dict(neighbour_heads=0, previous_block_input=True), id="previous-block"),
]
ORDERS = [("l2r", {}), ("random", {}), ("sbp", dict(streams=2)), ("diffusion", dict(steps=3))]
ORDER_IDS = [kind for kind, _ in ORDERS]
N = 10


def dense_g0(model, x: torch.Tensor, pos: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """G0 evaluated over every query row at once: the [B, N, N] terms built whole."""
    cfg = model.cfg
    visible = dense_strict(block)  # [B, N (queries), N (keys)]
    g = model.query_start(pos, ~visible.any(dim=-1)).to(x.dtype)
    if cfg.prefix_agg != "none":
        pe = model.pe(pos)
        weights = torch.bmm(model.pe_query(pos), pe.transpose(1, 2)) * visible.to(pe.dtype)
        if cfg.prefix_agg == "mean":
            weights = weights / visible.sum(dim=-1, keepdim=True).clamp(min=1).to(pe.dtype)
        g = g + model.finish_aggregate(torch.bmm(weights.to(x.dtype), x))
    if model.neighbour is not None:
        g = g + dense_neighbour(model.neighbour, x, pos, pos, visible)
    if cfg.previous_block_input:
        previous = (block[:, None, :] == block[:, :, None] - 1).to(x.dtype)
        g = g + torch.bmm(previous / previous.sum(dim=-1, keepdim=True).clamp(min=1), x)
    return g


def dense_neighbour(module: NeighbourAttention, x, q_pos, k_pos, visible) -> torch.Tensor:
    """Neighbour attention with an int64 index and per-head values broadcast over the heads."""
    rel = q_pos[:, :, None] - k_pos[:, None, :] + (module.max_len - 1)
    scores = module.rel_bias[:, rel].transpose(0, 1).to(x.dtype)  # [B, H, Q, K]
    if visible is not None:
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
    if module.sink is not None:
        sink = module.sink.to(x.dtype)[None, :, None, None].expand(*scores.shape[:3], 1)
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        weights = torch.softmax(scores, dim=-1)
        if visible is not None:
            weights = weights.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)
    return (torch.matmul(weights, x[:, None]) * module.gain.to(x.dtype)[None, :, None, :]).sum(dim=1)


def _model(variant: dict, seed: int = 0, **overrides):
    model = tiny_model("armd", seed=seed, randomise=True, **variant, **overrides).double().train()
    return model


def _grads(model, *extra: torch.Tensor) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads.update({f"input{i}": t.grad.clone() for i, t in enumerate(extra)})
    return grads


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert got.keys() == want.keys()
    worst = 0.0
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12, msg=name)
        worst = max(worst, (got[name] - value).abs().max().item())
    return worst


@pytest.mark.parametrize("rows", [3, 5, 64], ids=["rows3", "rows5", "one-chunk"])
@pytest.mark.parametrize("kind,params", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_g0_equals_dense(variant, kind, params, rows, monkeypatch):
    """G0 and the gradients of X0 and of every parameter: chunks of 3 (N = 10: 3, 3, 3 and a remainder
    of 1), of 5 and one chunk, each checkpointed and recomputed in the backward pass."""
    model = _model(variant)
    model.query_chunk_rows = rows
    order, block = draw_order(kind, params, None, batch=2, n=N, seed=7)
    x = torch.randn(2, N, model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    probe = torch.randn(2, N, model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    calls = []
    real_rows = query_input_module.query_rows

    def spy(m, x_, pos_, block_, start, stop):
        calls.append((start, stop))
        return real_rows(m, x_, pos_, block_, start, stop)

    monkeypatch.setattr(query_input_module, "query_rows", spy)
    x_chunked = x.clone().requires_grad_()
    g = model.prefix_aggregate(x_chunked, order, block)
    forward_calls = list(calls)
    (g * probe).sum().backward()
    chunked = {"g0": g.detach(), **_grads(model, x_chunked)}

    expected_calls = [(s, min(N, s + rows)) for s in range(0, N, rows)]
    assert forward_calls == expected_calls
    assert sorted(calls[len(forward_calls) :]) == expected_calls  # each chunk rebuilt once for backward

    model.zero_grad(set_to_none=True)
    x_dense = x.clone().requires_grad_()
    g = dense_g0(model, x_dense, order, block)
    (g * probe).sum().backward()
    dense = {"g0": g.detach(), **_grads(model, x_dense)}
    _assert_same(chunked, dense)
    if model.neighbour is not None:
        assert {"neighbour.rel_bias", "neighbour.gain"} <= chunked.keys()


@pytest.mark.parametrize("kind,params", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_chunked_model_equals_dense_model(variant, kind, params):
    """The whole model, loss and every parameter's gradient (embedding, PE table, start, W_s, neighbour
    scores, sinks and gains included), chunks of 3 rows against G0 evaluated densely."""
    chunked = _model(variant)
    chunked.query_chunk_rows = 3
    dense = copy.deepcopy(chunked)
    dense.prefix_aggregate = lambda x, pos, block: dense_g0(dense, x, pos, block)
    order, block = draw_order(kind, params, None, batch=2, n=N, seed=3)
    tokens = torch.randint(0, 11, (2, N), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (chunked, dense):
        loss = order_loss(model(tokens, order, block), tokens, order)
        loss.backward()
        results.append({"loss": loss.detach(), **_grads(model)})
    expected = {"embed.weight", "pos_table", "start"}
    if variant["query_input"] == "neighbour":
        expected |= {"start_proj.weight", "neighbour.rel_bias", "neighbour.sink", "neighbour.gain"}
    assert expected <= results[0].keys()
    worst = _assert_same(*results)
    assert worst < 1e-12


@pytest.mark.parametrize("grad", [True, False], ids=["eval-with-grad", "no-grad"])
def test_chunked_g0_outside_training_equals_dense(grad):
    """Evaluation runs the same chunks without checkpointing (and without grad, nothing is kept)."""
    model = _model(dict(query_input="neighbour")).eval()
    model.query_chunk_rows = 4
    order, block = draw_order("random", {}, None, batch=2, n=N, seed=1)
    x = torch.randn(2, N, model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(model.prefix_aggregate(x, order, block), dense_g0(model, x, order, block))


@pytest.mark.parametrize("kind", ["symmetric", "directional"])
@pytest.mark.parametrize("masked", [True, False])
def test_neighbour_int32_index_and_one_product_equal_the_broadcast_form(kind, masked):
    """NeighbourAttention.forward (int32 relative index, one [B, H Q, K] x [B, K, d] product) against
    the int64 index and the per-head broadcast matmul, outputs and gradients, queries a subset of keys."""
    torch.manual_seed(0)
    module = NeighbourAttention(6, 3, 16, kind).double()
    randomise_parameters(module, 1)
    x = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    k_pos = torch.stack([torch.randperm(16)[:9] for _ in range(2)])
    q_pos = torch.stack([torch.randperm(16)[:5] for _ in range(2)])
    visible = torch.rand(2, 5, 9, generator=torch.Generator().manual_seed(0)) < 0.6 if masked else None
    results = []
    for forward in (module, lambda *a: dense_neighbour(module, *a)):
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = forward(x, q_pos, k_pos, visible)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append({"out": out.detach(), **_grads(module, x)})
    _assert_same(*results)


def _g0_saved(model, n: int) -> tuple[int, int]:
    """(bytes, largest tensor's elements) that G0's forward hands autograd for the backward pass."""
    order, block = draw_order("random", {}, None, batch=2, n=n, seed=0)
    x = torch.randn(2, n, model.cfg.d_model, requires_grad=True)
    owned = {t.untyped_storage().data_ptr() for t in model.parameters()}
    with saved_for_backward(owned) as saved:
        g = model.prefix_aggregate(x, order, block)
    g.sum().backward()  # the kept tensors suffice for the backward pass
    return saved.bytes, saved.largest


@pytest.mark.parametrize(
    "variant", [dict(query_input="neighbour"), dict(query_input="paper")], ids=["neighbour", "paper"]
)
def test_chunked_g0_keeps_no_n_by_n_tensor(variant):
    """N = 256: evaluated densely (one chunk, not checkpointed) G0 keeps [B, N, N] and [B, H, N, N + 1]
    tensors; in training, in one chunk of 256 rows or in chunks of 64, it keeps only X0, positions and
    blocks: nothing with N^2 elements and a small fraction of the dense bytes."""
    n = 256
    model = tiny_model("armd", max_seq_len=n, **variant)
    model.query_chunk_rows = n
    dense_bytes, dense_largest = _g0_saved(model.eval(), n)
    model.train()
    for rows in (256, 64):
        model.query_chunk_rows = rows
        chunked_bytes, chunked_largest = _g0_saved(model, n)
        print(f"{variant['query_input']} N={n} rows={rows}: dense {dense_bytes} B, chunked {chunked_bytes} B")
        assert dense_largest >= n * n
        assert chunked_largest < n * n
        assert chunked_bytes * 10 < dense_bytes


@pytest.mark.parametrize("queries,keys", [(0, 4), (3, 0)], ids=["no-queries", "no-keys"])
def test_neighbour_with_no_queries_or_no_keys(queries, keys):
    """The cache may ask for no targets or have nothing committed: empty rows, or rows of 0."""
    module = NeighbourAttention(6, 3, 16, "directional")
    out = module(
        torch.randn(2, keys, 6), torch.zeros(2, queries, dtype=torch.long), torch.zeros(2, keys, dtype=torch.long), None
    )
    assert out.shape == (2, queries, 6) and not out.abs().any()
