"""The query stream's input G0 in every configuration the left-to-right gap study compares.

Each variant must keep the contract (no leakage, a valid distribution, permutation equivariance; the
cache is checked in tests/generate/test_cache.py), at its initial weights and with every parameter
redrawn at random (conftest.randomise_parameters: all neighbour heads both ways, W_s and the sinks
live), and each knob must do what its name says.
"""

import itertools

import pytest
import torch

from armd_scale.model import build_model, token_nll
from armd_scale.model.masks import dense_strict
from armd_scale.model.neighbour import NeighbourAttention

from .conftest import WEIGHTS, assert_no_leakage, draw_order, randomise_parameters, tiny_model, tiny_model_config

VARIANTS = [
    pytest.param(dict(query_input="paper"), id="query-input-paper"),
    pytest.param(dict(query_input="paper", pe_init="shift"), id="paper-shift-init"),
    pytest.param(dict(query_input="neighbour"), id="query-input-neighbour"),
    pytest.param(dict(neighbour_heads=0, positional_start=True, positional_start_init="normal"), id="old"),
    pytest.param(dict(neighbour_heads=0, positional_start=False), id="paper"),
    pytest.param(dict(neighbour_heads=4, positional_start=False), id="neighbour4"),
    pytest.param(dict(neighbour_heads=3, neighbour_kind="directional"), id="directional3"),
    pytest.param(dict(neighbour_heads=1, prefix_agg="none", positional_start=False), id="neighbour-only"),
    pytest.param(dict(neighbour_heads=2, prefix_agg="mean", prefix_norm=True), id="mean-norm"),
    pytest.param(
        dict(
            positional_start=True,
            positional_start_init="normal",
            positional_start_table="separate",
            positional_start_scope="first_block",
        ),
        id="start-separate-first-block",
    ),
    pytest.param(dict(positional_start=True, positional_start_init="zero", pe_lr_scale=0.0), id="start-zero-frozen"),
    pytest.param(dict(neighbour_heads=0, prefix_query_table=True, pe_init_tau=0.5), id="query-table"),
    pytest.param(dict(neighbour_heads=0, previous_block_input=True), id="previous-block"),
]
ORDERS = [("l2r", {}, None), ("random", {}, None), ("sbp", dict(streams=2), None), ("diffusion", dict(steps=3), None)]


@pytest.mark.parametrize("randomise", WEIGHTS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,params,step", ORDERS, ids=[o[0] for o in ORDERS])
def test_no_leakage(variant, kind, params, step, randomise):
    order, block = draw_order(kind, params, step, batch=2, n=12, seed=5)
    assert_no_leakage(tiny_model("armd", randomise=randomise, **variant), order, block, vocab=11)


@pytest.mark.parametrize("randomise", WEIGHTS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,params,step", ORDERS[::2], ids=[o[0] for o in ORDERS[::2]])
def test_valid_distribution(variant, kind, params, step, randomise):
    """vocab 3, N=4: the probabilities of all 81 sequences sum to 1."""
    model = tiny_model("armd", vocab_size=3, init_std=0.5, randomise=randomise, **variant).double()
    seqs = torch.tensor(list(itertools.product(range(3), repeat=4)))
    order, block = draw_order(kind, params, step, batch=1, n=4, seed=2)
    order, block = order.expand(len(seqs), 4), block.expand(len(seqs), 4)
    with torch.no_grad():
        probs = (-token_nll(model(seqs, order, block), seqs, order).sum(dim=1)).exp()
    assert abs(probs.sum().item() - 1.0) <= 1e-5 and probs.max().item() > 3.0 / 81


@pytest.mark.parametrize("randomise", WEIGHTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_permutation_equivariance(variant, randomise):
    """Relisting the tokens of each block permutes the logits and changes nothing else (float64 for
    randomised weights, whose larger logits would leave float32 rounding near the tolerance)."""
    model = tiny_model("armd", randomise=randomise, **variant)
    model = model.double() if randomise else model
    order, block = draw_order("diffusion", dict(steps=4), None, batch=2, n=16, seed=3)
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(b)) for b in range(2)])
    with torch.no_grad():
        logits = model(tokens, order, block)
        logits2 = model(tokens, torch.gather(order, 1, perm), torch.gather(block, 1, perm))
    expected = torch.gather(logits, 1, perm[..., None].expand_as(logits))
    tol = 1e-10 if randomise else 1e-5
    torch.testing.assert_close(logits2, expected, atol=tol, rtol=tol)


def _one_hot_neighbour(n: int, heads: int = 4):
    """Neighbour attention at its initial values over one-hot values, so outputs read as weights."""
    torch.manual_seed(0)
    return NeighbourAttention(n, heads, n), torch.eye(n)[None]


def test_neighbour_head0_starts_as_the_input_shift():
    """Left to right, head 0 (the only one with a non-zero gain) puts >= 98% of its weight on n - 1."""
    n = 10
    module, x = _one_hot_neighbour(n)
    pos = torch.arange(n)[None]
    with torch.no_grad():
        out = module(x, pos, pos, dense_strict(pos))[0]  # out[q] = weights of query q over keys
    assert torch.equal(out[0], torch.zeros(n))  # nothing revealed: exactly zero, not NaN
    for q in range(1, n):
        assert out[q, q - 1] >= 0.98 and out[q, q:].abs().max() == 0


def test_neighbour_reads_the_nearest_revealed_position_in_any_order():
    """Revealed positions {2, 7} and a query at 6: the nearest revealed token (7, after it) dominates."""
    n = 10
    module, x = _one_hot_neighbour(n)
    k_pos = torch.tensor([[2, 7]])
    with torch.no_grad():
        out = module(x[:, [2, 7]], torch.tensor([[6]]), k_pos, None)[0, 0]
    assert out[7] > 0.95 and out[2] < 0.05


def test_directional_heads_take_the_left_neighbour_or_nothing():
    """Directional kind: head 0 reads the token at n - 1 when it is revealed; with only a right
    neighbour or a far token revealed it gives (almost) nothing instead of a different kind of token.
    The symmetric kind, whose rows always sum to 1, takes whatever is nearest."""
    n = 10
    torch.manual_seed(0)
    directional, symmetric = NeighbourAttention(n, 4, n, "directional"), NeighbourAttention(n, 4, n, "symmetric")
    x, pos = torch.eye(n)[None], torch.arange(n)[None]
    with torch.no_grad():
        out = directional(x, pos, pos, dense_strict(pos))[0]
        assert torch.equal(out[0], torch.zeros(n))
        for q in range(1, n):
            assert out[q, q - 1] >= 0.95
        only_right_and_far = (x[:, [2, 7]], torch.tensor([[6]]), torch.tensor([[2, 7]]), None)
        assert directional(*only_right_and_far)[0, 0].abs().max() < 0.01
        assert symmetric(*only_right_and_far)[0, 0, 7] > 0.95


def test_neighbour_is_a_function_of_the_revealed_set_not_of_its_history():
    """Unlike a shift by generation index, the output for a target depends on which (position, token)
    pairs are revealed, not on the order or blocks in which they were revealed."""
    torch.manual_seed(0)
    module = NeighbourAttention(8, 3, 16, "directional")
    with torch.no_grad():
        module.rel_bias.normal_()
        module.sink.normal_()
        module.gain.normal_()
    x = torch.randn(1, 5, 8)
    pos = torch.tensor([[3, 9, 1, 12, 5]])
    target = torch.tensor([[7]])
    perm = torch.tensor([4, 0, 3, 2, 1])
    with torch.no_grad():
        a = module(x, target, pos, None)
        b = module(x[:, perm], target, pos[:, perm], None)
    torch.testing.assert_close(a, b)


def test_neighbour_changes_the_model_and_stays_strict():
    """The neighbour path is live (the model with heads differs from one without) and its gradient
    reaches the score table through the non-zero head."""
    order, block = draw_order("l2r", {}, None, batch=2, n=12)
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0))
    with_nb, without = tiny_model("armd", neighbour_heads=2), tiny_model("armd", neighbour_heads=0)
    assert (with_nb(tokens, order, block) - without(tokens, order, block)).abs().max() > 1e-3
    with_nb(tokens, order, block).logsumexp(-1).sum().backward()
    assert with_nb.neighbour.rel_bias.grad[0].abs().max() > 0


def test_positional_start_scope_first_block_only_touches_queries_with_nothing_revealed():
    model = tiny_model(
        "armd", positional_start=True, positional_start_init="normal", positional_start_scope="first_block"
    )
    pos = torch.tensor([[0, 5, 9]])
    empty = torch.tensor([[True, False, True]])
    start = model.query_start(pos, empty)
    torch.testing.assert_close(start[0, 1], model.start)
    assert (start[0, 0] - model.start).abs().max() > 1e-4 and (start[0, 2] - model.start).abs().max() > 1e-4


def test_positional_start_separate_table_decouples_the_prefix_table():
    """With its own table, the positional start sends no gradient into the prefix-aggregation table."""
    model = tiny_model(
        "armd",
        positional_start=True,
        positional_start_init="normal",
        positional_start_table="separate",
        neighbour_heads=0,
    )
    pos = torch.arange(6)[None]
    model.query_start(pos, False).sum().backward()
    assert model.pos_table.grad is None and model.start_pos_table.grad.abs().max() > 0


def test_positional_start_zero_init_starts_as_the_plain_start():
    model = tiny_model("armd", positional_start=True, positional_start_init="zero")
    torch.testing.assert_close(model.query_start(torch.arange(8)[None])[0], model.start.expand(8, -1))


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_pe_lr_scale_is_a_reparametrisation(scale):
    """Same function at init; one Adam step moves the effective table `scale` times as far."""
    base, scaled = tiny_model("armd"), tiny_model("armd", pe_lr_scale=scale)
    pos = torch.arange(12)[None]
    torch.testing.assert_close(base.pe(pos), scaled.pe(pos))
    moves = []
    for model in (base, scaled):
        before = model.pe(pos).detach().clone()
        opt = torch.optim.Adam([model.pos_table], lr=1e-3)
        (model.pe(pos) ** 3).sum().backward()
        opt.step()
        moves.append((model.pe(pos).detach() - before).abs().mean())
    assert moves[1] / moves[0] == pytest.approx(scale, rel=0.05)


def test_pe_lr_scale_zero_freezes_the_table():
    model = tiny_model("armd", pe_lr_scale=0.0)
    assert not model.pos_table.requires_grad


def test_prefix_norm_bounds_the_aggregate_scale():
    """The RMS-normalised sum has the same RMS for a short and a long prefix (the plain sum need not)."""
    model = tiny_model("armd", prefix_norm=True, pe_init_tau=0.0, neighbour_heads=0, positional_start=False)
    n = 32
    order, block = draw_order("l2r", {}, None, batch=1, n=n)
    x = model.embed(torch.randint(0, 11, (1, n), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        g0 = model.prefix_aggregate(x, order, block) - model.start
    rms = g0.pow(2).mean(-1).sqrt()[0]
    assert rms[1:].std() / rms[1:].mean() < 1e-3


def test_prefix_query_table_starts_peaked_on_the_previous_position():
    """<PEq_n, PE_i> starts as k(n - 1 - i): weight ~1 on n - 1 and exp(-1/tau) on n - 2, where the
    symmetric kernel <PE_n, PE_i> = k(n - i) gives n - 1 only exp(-1/tau)."""
    model = tiny_model("armd", prefix_query_table=True, pe_init="recency", pe_init_tau=0.5)
    pos = torch.arange(20)
    asym = model.pe_query(pos) @ model.pe(pos).T
    sym = model.pe(pos) @ model.pe(pos).T
    for n in (5, 12, 19):
        assert asym[n, n - 1] > 0.95 and asym[n, n - 2] < 0.2 and sym[n, n - 1] < 0.2


def test_previous_block_input_is_the_mean_of_the_block_before():
    """SBP(2) over 8 positions: blocks [0], [4], [1, 5], [2, 6], [3, 7]; the targets of block [2, 6]
    get the mean embedding of block [1, 5] on top of the input without the option."""
    order, block = draw_order("sbp", dict(streams=2), None, batch=1, n=8)
    with_prev = tiny_model("armd", previous_block_input=True)
    without = tiny_model("armd", previous_block_input=False)
    x = with_prev.embed(torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        diff = with_prev.prefix_aggregate(x, order, block) - without.prefix_aggregate(x, order, block)
    k = (block[0] == 3).nonzero()[:, 0]  # the targets of block 3 = [2, 6]
    expected = x[0, block[0] == 2].mean(dim=0)
    torch.testing.assert_close(diff[0, k], expected.expand(len(k), -1))
    assert diff[0, 0].abs().max() == 0  # block 0 has no block before it


def test_bad_values_are_refused_by_name():
    from armd_scale.config import ConfigError

    with pytest.raises(ConfigError, match="neighbour_heads"):
        build_model(tiny_model_config(neighbour_heads=-1))
    with pytest.raises(ConfigError, match="pe_lr_scale"):
        build_model(tiny_model_config(pe_lr_scale=-1.0))
    from armd_scale.config import load_config

    with pytest.raises(ConfigError, match="neighbour_kind"):
        load_config(overrides=["model.neighbour_kind=sideways"])


def test_randomised_weights_wake_every_dormant_path():
    """At initialisation heads 1.. add nothing, right-looking heads score -16, W_s and the sinks are 0;
    after randomise_parameters each of them changes the model's output (so the randomised contract
    tests above exercise them). Checked by zeroing each part again and watching the logits move."""
    model = tiny_model("armd", neighbour_heads=4, neighbour_kind="directional", positional_start=True)
    fresh = tiny_model("armd", neighbour_heads=4, neighbour_kind="directional", positional_start=True)
    assert fresh.neighbour.gain[1:].abs().max() == 0 and fresh.start_proj.weight.abs().max() == 0
    randomise_parameters(model, 0)
    order, block = draw_order("random", {}, None, batch=2, n=16, seed=1)
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(tokens, order, block)
        parts = [model.neighbour.gain[h] for h in range(4)] + [model.neighbour.sink, model.start_proj.weight]
        for part in parts:
            kept = part.clone()
            part.zero_()
            assert (model(tokens, order, block) - base).abs().max() > 1e-4
            part.copy_(kept)
