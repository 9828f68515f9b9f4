"""The model contract: no leakage, a valid distribution, permutation equivariance."""

import itertools

import pytest
import torch

from armd_scale.model import order_loss, token_nll

from .conftest import ORDER_CASES, ORDER_IDS, assert_no_leakage, draw_order, tiny_model

SINGLE_TOKEN_CASES = [c for c in ORDER_CASES if c[0] in ("l2r", "random", "progressive")]


def _arch_cases():
    for case, case_id in zip(ORDER_CASES, ORDER_IDS, strict=True):
        yield pytest.param("armd", *case, id=f"armd-{case_id}")
    for case, case_id in zip(ORDER_CASES, ORDER_IDS, strict=True):
        if case[0] in ("l2r", "random"):
            yield pytest.param("ar", *case, id=f"ar-{case_id}")


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("arch,kind,params,step", list(_arch_cases()))
def test_no_leakage(arch, kind, params, step, backend):
    """Changing tokens of the same or a later block leaves logits[:, k] bit-identical; earlier ones change it."""
    order, block = draw_order(kind, params, step, batch=2, n=12, seed=5)
    assert_no_leakage(tiny_model(arch, attention_backend=backend), order, block, vocab=11)


def _all_sequences(vocab: int, n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=n)))


@pytest.mark.parametrize(
    "arch,kind,params,step",
    [
        pytest.param("armd", *c, id=f"armd-{i}")
        for c, i in zip(ORDER_CASES, ORDER_IDS, strict=True)
        if c[0] != "sbp" or c[1]["streams"] == 2
    ]
    + [pytest.param("ar", "l2r", {}, None, id="ar-l2r")],
)
def test_valid_distribution_over_all_sequences(arch, kind, params, step):
    """vocab 3, N=4: the probabilities of all 81 sequences sum to 1 under the order's factorization."""
    model = tiny_model(arch, vocab_size=3, init_std=0.5).double()
    seqs = _all_sequences(3, 4)
    order, block = draw_order(kind, params, step, batch=1, n=4, seed=2)
    order, block = order.expand(len(seqs), 4), block.expand(len(seqs), 4)
    with torch.no_grad():
        logp = -token_nll(model(seqs, order, block), seqs, order).sum(dim=1)
    probs = logp.exp()
    assert abs(probs.sum().item() - 1.0) <= 1e-5
    # the distribution is far from uniform, so the check above is not passing by accident
    assert probs.max().item() > 3.0 / 81


MEAN_CASES = [
    pytest.param(*case, id=case_id)
    for case, case_id in zip(ORDER_CASES, ORDER_IDS, strict=True)
    if case_id in ("random-", "sbp-streams2", "diffusion-steps3")
]


@pytest.mark.parametrize("kind,params,step", MEAN_CASES)
def test_prefix_mean_has_no_leakage_and_a_valid_distribution(kind, params, step):
    """model.prefix_agg=mean (the default is sum): the same contract, single- and multi-token blocks."""
    order, block = draw_order(kind, params, step, batch=2, n=12, seed=5)
    assert_no_leakage(tiny_model("armd", prefix_agg="mean"), order, block, vocab=11)

    seqs = _all_sequences(3, 4)
    order, block = draw_order(kind, params, step, batch=1, n=4, seed=2)
    order, block = order.expand(len(seqs), 4), block.expand(len(seqs), 4)
    mean = tiny_model("armd", vocab_size=3, init_std=0.5, prefix_agg="mean").double()
    summed = tiny_model("armd", vocab_size=3, init_std=0.5).double()  # the same weights (same seed)
    with torch.no_grad():
        probs = (-token_nll(mean(seqs, order, block), seqs, order).sum(dim=1)).exp()
        differs = not torch.allclose(mean(seqs, order, block), summed(seqs, order, block))
    assert abs(probs.sum().item() - 1.0) <= 1e-5 and probs.max().item() > 3.0 / 81
    assert differs  # the option changes the model: the checks above ran on the mean, not on the sum


def test_a_leaky_model_fails_the_distribution_check():
    """Guard for the test above: letting the query stream see its own block breaks normalisation."""
    from armd_scale.model import masks

    model = tiny_model("armd", vocab_size=3, init_std=0.5).double()
    seqs = _all_sequences(3, 4)
    order, block = draw_order("l2r", {}, None, batch=len(seqs), n=4)
    original = masks.strict_spec
    try:
        import armd_scale.model.armd as armd_module

        armd_module.strict_spec = masks.causal_spec  # the last two-stream layer now sees its own token
        with torch.no_grad():
            logp = -token_nll(model(seqs, order, block), seqs, order).sum(dim=1)
    finally:
        armd_module.strict_spec = original
    assert abs(logp.exp().sum().item() - 1.0) > 1e-3


@pytest.mark.parametrize("kind,params,step", ORDER_CASES, ids=ORDER_IDS)
def test_permutation_equivariance_within_blocks(kind, params, step):
    """Listing the tokens of each block in another order permutes the logits and changes nothing else."""
    model = tiny_model("armd")
    n = 16
    order, block = draw_order(kind, params, step, batch=3, n=n, seed=9)
    tokens = torch.randint(0, 11, (3, n), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(4)
    perm = torch.stack(
        [torch.argsort(block[b].double() + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)) for b in range(3)]
    )
    order2 = torch.gather(order, 1, perm)
    block2 = torch.gather(block, 1, perm)
    assert torch.equal(block2, block)
    with torch.no_grad():
        logits = model(tokens, order, block)
        logits2 = model(tokens, order2, block2)
    expected = torch.gather(logits, 1, perm[..., None].expand_as(logits))
    torch.testing.assert_close(logits2, expected, atol=1e-5, rtol=1e-5)


def test_arbitrary_listing_gives_the_same_conditionals():
    """Stronger: with dense masks the listing need not even be block-sorted (sdpa backend)."""
    model = tiny_model("armd", attention_backend="sdpa")
    order, block = draw_order("diffusion", dict(steps=4), None, batch=2, n=16, seed=3)
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(b)) for b in range(2)])
    with torch.no_grad():
        logits = model(tokens, order, block)
        logits2 = model(tokens, torch.gather(order, 1, perm), torch.gather(block, 1, perm))
    torch.testing.assert_close(
        logits2, torch.gather(logits, 1, perm[..., None].expand_as(logits)), atol=1e-5, rtol=1e-5
    )


def test_ar_refuses_multi_token_blocks():
    model = tiny_model("ar")
    order, block = draw_order("sbp", dict(streams=2), None, batch=1, n=8)
    with pytest.raises(ValueError, match="single-token blocks"):
        model(torch.zeros(1, 8, dtype=torch.long), order, block)


def test_input_shape_errors():
    model = tiny_model("armd")
    order, block = draw_order("l2r", {}, None, batch=1, n=8)
    with pytest.raises(ValueError, match="must all be"):
        model(torch.zeros(2, 8, dtype=torch.long), order, block)
    with pytest.raises(ValueError, match="max_seq_len"):
        order, block = draw_order("l2r", {}, None, batch=1, n=40)
        model(torch.zeros(1, 40, dtype=torch.long), order, block)


def test_loss_global_token_count_normalisation():
    model = tiny_model("armd")
    order, block = draw_order("l2r", {}, None, batch=2, n=8)
    tokens = torch.randint(0, 11, (2, 8))
    logits = model(tokens, order, block)
    mean = order_loss(logits, tokens, order)
    as_part_of_4x = order_loss(logits, tokens, order, global_token_count=64)
    torch.testing.assert_close(as_part_of_4x * 4, mean)
    weighted = order_loss(logits, tokens, order, weights=torch.zeros(2, 8))
    assert weighted.item() == 0.0


@pytest.mark.parametrize(
    "arch,kind,extra",
    [("armd", "l2r", {}), ("armd", "random", {}), ("armd", "random", {"query_input": "paper"}), ("ar", "l2r", {})],
    ids=["armd-l2r", "armd-random", "armd-paper-random", "ar-l2r"],
)
def test_learns_a_small_dataset(arch, kind, extra):
    """Memorising fixed sequences drives the loss near its floor (only the first token is uncertain).

    In random order the paper's input (no positional start) cannot reach that floor: nothing in it says
    where a query is in absolute terms (RoPE is relative, and with nothing revealed G0 is `s` alone), so
    the first token's best guess is the marginal over every position, and while few tokens are revealed
    the two sequences (the same 16 symbols in two orders) stay ambiguous. Measured: 0.20-0.24 nats/token
    after 600 steps whatever the PE start or width, against 0.03 with the positional start
    (the default `query_input=neighbour`); it must still learn most of the way from the unigram 2.77."""
    torch.manual_seed(0)
    model = tiny_model(arch, vocab_size=16, d_model=64, n_heads=4, init_std=0.02, **extra).train()
    n_seq = 4 if kind == "l2r" else 2
    data = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(n_seq)])
    data = torch.cat([data, data], dim=1).repeat(8 // n_seq, 1)  # N = 32, batch 8
    steps = 300 if kind == "l2r" else 600
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    for step in range(steps):
        order, block = draw_order(kind, {}, None, batch=8, n=32, seed=step)
        loss = order_loss(model(data, order, block), data, order)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():  # average over fresh orders so one lucky batch cannot pass the test
        losses = []
        for seed in range(8):
            order, block = draw_order(kind, {}, None, batch=8, n=32, seed=10_000 + seed)
            losses.append(order_loss(model(data, order, block), data, order))
        loss = torch.stack(losses).mean()
    if kind == "random" and arch == "armd" and not model.cfg.positional_start:
        assert loss.item() < 0.3, f"paper's input, random orders: loss {loss.item():.4f} (unigram: 2.77)"
        return
    floor = torch.log(torch.tensor(float(n_seq))).item() / 32  # the first generated token is one of n_seq
    assert loss.item() < floor + 0.05, f"{arch}/{kind} loss {loss.item():.4f} did not approach {floor:.4f}"
