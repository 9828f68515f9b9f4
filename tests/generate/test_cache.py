"""The definition of a correct cache (docs/GENERATION.md): teacher-forced cached decoding = the full forward.

Teacher forcing feeds the true tokens block by block following (order, block): step t commits the
tokens of block t-1 and predicts block t; its logits must equal `model(tokens, order, block)` at
block t's generation indices (fp32, max abs diff <= 1e-4).

The `ar` arch is checked on single-token orders only (l2r, random): it refuses multi-token blocks
by design, both in the full forward and in its decoder (tested below).
"""

import pytest
import torch

from armd_scale.generate import ARDecoder, ARMDDecoder, make_decoder

from ..model.conftest import WEIGHTS, draw_order, tiny_model

TOL = 1e-4
N = 16

ARMD_ORDERS = [
    pytest.param("l2r", {}, id="l2r"),
    pytest.param("random", {}, id="random"),
    pytest.param("sbp", dict(streams=2), id="sbp2"),
    pytest.param("sbp", dict(streams=4), id="sbp4"),
    pytest.param("diffusion", dict(steps=4), id="diffusion4"),
]
# single-token orders only: arch 'ar' refuses multi-token blocks (sbp, diffusion)
AR_ORDERS = [pytest.param("l2r", {}, id="l2r"), pytest.param("random", {}, id="random")]
CONFIGS = [
    pytest.param(dict(n_layers=2), id="L2"),
    pytest.param(dict(n_layers=4), id="L4"),
    pytest.param(dict(n_layers=5), id="L5"),
    pytest.param(dict(n_layers=4, n_two_stream_layers=1), id="L4-two1"),
    pytest.param(dict(n_layers=4, prefix_agg="mean"), id="L4-mean"),  # "sum" is the default: every other case
    pytest.param(dict(n_layers=3, mlp="gelu", positional_start=False), id="L3-gelu-nostart"),
    pytest.param(dict(n_layers=4, neighbour_heads=0, positional_start_init="normal"), id="L4-no-neighbour"),
    pytest.param(dict(n_layers=4, neighbour_heads=1, prefix_agg="none"), id="L4-neighbour-only"),
    pytest.param(dict(n_layers=4, neighbour_heads=3, neighbour_kind="directional"), id="L4-directional"),
    pytest.param(dict(n_layers=4, neighbour_heads=0, prefix_query_table=True), id="L4-query-table"),
    pytest.param(dict(n_layers=4, previous_block_input=True), id="L4-previous-block"),
    pytest.param(dict(n_layers=4, query_input="paper"), id="L4-paper"),
    pytest.param(dict(n_layers=4, query_input="paper", pe_init="shift"), id="L4-paper-shift-init"),
    pytest.param(
        dict(
            n_layers=4,
            neighbour_heads=3,
            prefix_agg="mean",
            prefix_norm=True,
            positional_start=True,
            positional_start_init="normal",
            positional_start_table="separate",
            positional_start_scope="first_block",
            pe_lr_scale=3.0,
        ),
        id="L4-start-variants",
    ),
]


def teacher_forced(model, tokens, order, block, *, cold_every_other=False):
    """Decode the true tokens with the cache; return (cached, full) logits in generation order.

    Rows must share the block structure. cold_every_other: odd blocks are committed without ever
    being predicted (their logits stay NaN), so the next step takes the cold-commit path: the
    committed block's query-stream rows are computed in the same call as the next targets.
    """
    b, n = tokens.shape
    with torch.no_grad():
        full = model(tokens, order, block)
    decoder = make_decoder(model, b, n)
    cached = torch.full_like(full, float("nan"))
    prev = None
    for blk in range(int(block[0].max()) + 1):
        idx = (block[0] == blk).nonzero()[:, 0]
        commit_tokens = commit_positions = None
        if prev is not None:
            commit_positions = order[:, prev]
            commit_tokens = tokens.gather(1, commit_positions)
        skip = cold_every_other and blk % 2 == 1
        logits = decoder.step(commit_tokens, commit_positions, None if skip else order[:, idx])
        if not skip:
            cached[:, idx] = logits
        prev = idx
    return cached, full


def _check_rows(model, kind, params, seed=0, **kw):
    batch = 3
    order, block = draw_order(kind, params, None, batch=batch, n=N, seed=seed)
    tokens = torch.randint(0, model.cfg.vocab_size, (batch, N), generator=torch.Generator().manual_seed(seed))
    # a diffusion order has its own block structure per row: decode each row on its own
    rows = [slice(None)] if kind != "diffusion" else [slice(i, i + 1) for i in range(batch)]
    for r in rows:
        cached, full = teacher_forced(model, tokens[r], order[r], block[r], **kw)
        checked = ~torch.isnan(cached[..., 0])
        assert checked.float().mean() >= (0.25 if kw.get("cold_every_other") else 1.0)
        assert (cached[checked] - full[checked]).abs().max().item() <= TOL
        # the logits really vary across positions, so agreement is not trivial
        assert (full - full[:, :1]).abs().max().item() > 1e-2


@pytest.mark.parametrize("randomise", WEIGHTS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind,params", ARMD_ORDERS)
def test_armd_cache_matches_full_forward(kind, params, config, randomise):
    """At initial weights and with every parameter redrawn (model/conftest.randomise_parameters), the
    latter in float64 so that the tolerance measures the cache, not float32 rounding of larger logits."""
    model = tiny_model("armd", randomise=randomise, **config)
    _check_rows(model.double() if randomise else model, kind, params)


@pytest.mark.parametrize("config", CONFIGS[:3])
@pytest.mark.parametrize("kind,params", AR_ORDERS)
def test_ar_cache_matches_full_forward(kind, params, config):
    _check_rows(tiny_model("ar", **config), kind, params)


@pytest.mark.parametrize(
    "arch,kind,params",
    [pytest.param("armd", *p.values, id=f"armd-{p.id}") for p in ARMD_ORDERS]
    + [pytest.param("ar", *p.values, id=f"ar-{p.id}") for p in AR_ORDERS],
)
def test_cold_commits_match_full_forward(arch, kind, params):
    """Commits that were never predicted (prompts, known tokens) take the masked cold path."""
    _check_rows(tiny_model(arch, n_layers=4), kind, params, seed=3, cold_every_other=True)


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_prompt_block_first_then_targets(arch):
    """A first commit of several tokens with no cache (a prompt) gives the full-forward logits."""
    model = tiny_model(arch)
    p = 5
    tokens = torch.randint(0, 11, (2, N), generator=torch.Generator().manual_seed(1))
    order = torch.arange(N).expand(2, N)
    if arch == "ar":  # ar: the prompt is p single-token blocks
        block = torch.arange(N).expand(2, N)
    else:  # armd: the prompt is one block
        block = torch.cat([torch.zeros(p, dtype=torch.long), torch.arange(1, N - p + 1)]).expand(2, N)
    with torch.no_grad():
        full = model(tokens, order, block)
    decoder = make_decoder(model, 2, N)
    commit_t, commit_p = tokens[:, :p], order[:, :p]
    for k in range(p, N):
        logits = decoder.step(commit_t, commit_p, order[:, k : k + 1])
        assert (logits[:, 0] - full[:, k]).abs().max().item() <= TOL
        commit_t, commit_p = tokens[:, k : k + 1], order[:, k : k + 1]


def test_float64_cache_is_exact_to_rounding():
    model = tiny_model("armd", n_layers=5).double()
    order, block = draw_order("sbp", dict(streams=4), None, batch=2, n=N)
    tokens = torch.randint(0, 11, (2, N), generator=torch.Generator().manual_seed(0))
    cached, full = teacher_forced(model, tokens, order, block)
    assert cached.dtype == torch.float64
    assert (cached - full).abs().max().item() <= 1e-10


@pytest.mark.parametrize("part", ["x_cache", "g_cache", "prefix_state", "x0", "pos"])
def test_corrupting_the_cache_changes_logits(part):
    """Guard for the tests above: every part of the cached state is read by later steps."""
    model = tiny_model("armd", n_layers=4, neighbour_heads=2)
    order, block = draw_order("l2r", {}, None, batch=1, n=8)
    tokens = torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens, order, block)
    decoder = make_decoder(model, 1, 8)
    for k in range(4):
        commit = (tokens[:, k - 1 : k], order[:, k - 1 : k]) if k else (None, None)
        decoder.step(*commit, order[:, k : k + 1])
    query = decoder.cache.query  # the query input's running state (model/query_input.py)
    if part == "prefix_state":
        query.state.mul_(1.5)
    elif part == "x0":  # neighbour attention's values: the committed embeddings
        query.x0[:, 2] += 0.5
    elif part == "pos":  # and their positions, which its scores read
        query.pos[:, 2] = 0
    else:
        for buf in getattr(decoder.cache, part):
            buf.k[:, :, :2] += 0.5
    logits = decoder.step(tokens[:, 3:4], order[:, 3:4], order[:, 4:5])
    assert (logits[:, 0] - full[:, 4]).abs().max().item() > 1e-3


def test_decoder_types_and_state():
    armd, ar = tiny_model("armd"), tiny_model("ar")
    assert isinstance(make_decoder(armd, 1), ARMDDecoder)
    assert isinstance(make_decoder(ar, 1), ARDecoder)
    decoder = make_decoder(armd, 2, 8)
    decoder.step(None, None, torch.tensor([[0, 4], [1, 5]]))
    decoder.step(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[0, 4], [1, 5]]), torch.tensor([[2], [3]]))
    assert decoder.n_committed == 2 and decoder.cache.query.count == 2 and decoder.forward_calls == 2
    with pytest.raises(TypeError, match="no cached decoder"):
        make_decoder(torch.nn.Linear(2, 2), 1)


def test_ar_decoder_refuses_multi_token_blocks():
    decoder = make_decoder(tiny_model("ar"), 1, 8)
    with pytest.raises(ValueError, match="one token per step"):
        decoder.step(None, None, torch.tensor([[0, 1]]))


def test_bad_inputs_give_clear_errors():
    model = tiny_model("armd")
    decoder = make_decoder(model, 2, 4)
    with pytest.raises(ValueError, match=r"target_positions must be \[batch=2"):
        decoder.step(None, None, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        decoder.step(None, None, torch.tensor([[0], [99]]))
    with pytest.raises(ValueError, match="differ"):
        decoder.step(torch.tensor([[1], [1]]), torch.tensor([[0, 1], [0, 1]]), None)
    with pytest.raises(ValueError, match="cache holds max_len=4"):
        decoder.step(None, None, torch.arange(5).expand(2, 5))
    with pytest.raises(ValueError, match="max_len=64"):
        make_decoder(model, 1, 64)
