"""Sampling schedules: forward-call counts, prompts, infilling, seeds, top-p, float64.

Greedy samples are checked against the full forward: scoring a greedy sample with
`model(tokens, *plan.order_and_block())` must put every generated token at its row's argmax, which
ties the cache, the plan and the sampler to the model contract in one assertion.
"""

import pytest
import torch

from armd_scale.generate import (
    generate,
    infill_plan,
    order_plan,
    sample_infill,
    sample_logits,
    sample_reference,
    sample_sbp,
    sample_sequential,
    sbp_plan,
    sequential_plan,
)

from ..model.conftest import draw_order, tiny_model

N = 16


@pytest.fixture(scope="module")
def armd():
    return tiny_model("armd", n_layers=4)


@pytest.fixture(scope="module")
def ar():
    return tiny_model("ar", n_layers=4)


def assert_greedy_consistent(model, plan, tokens, single_token_blocks=False):
    """Every generated token is the argmax of the full-forward logits under the plan's order."""
    order, block = plan.order_and_block(single_token_blocks)
    with torch.no_grad():
        logits = model(tokens, order, block)
    generated = torch.gather(tokens, 1, order)[:, plan.known_positions.shape[1] :]
    argmax = logits.argmax(dim=-1)[:, plan.known_positions.shape[1] :]
    assert torch.equal(generated, argmax)


@pytest.mark.parametrize("streams", [1, 2, 4, 8, 16])
def test_sbp_forward_calls(armd, streams):
    result = sample_sbp(armd, N, streams, batch_size=2, seed=0)
    assert result.forward_calls == streams + N // streams - 1
    assert result.tokens.shape == (2, N)
    assert generate(armd, sbp_plan(N, streams, 2), seed=0, use_cache=False).forward_calls == result.forward_calls


@pytest.mark.parametrize("streams", [2, 4])
def test_sbp_with_directional_neighbour_heads(streams):
    """The directional neighbour heads keep the call count and the cache's agreement with the full forward."""
    model = tiny_model("armd", n_layers=4, neighbour_heads=3, neighbour_kind="directional")
    result = sample_sbp(model, N, streams, batch_size=2, seed=0, temperature=0)
    assert result.forward_calls == streams + N // streams - 1
    assert_greedy_consistent(model, sbp_plan(N, streams, 2), result.tokens)


def test_sbp_one_stream_equals_sequential_l2r(armd):
    seq = sample_sequential(armd, N, batch_size=3, seed=7)
    sbp = sample_sbp(armd, N, 1, batch_size=3, seed=7)
    assert torch.equal(seq.tokens, sbp.tokens)
    assert seq.forward_calls == sbp.forward_calls == N
    # the seed matters, so the equality above is not a constant output
    assert not torch.equal(seq.tokens, sample_sequential(armd, N, batch_size=3, seed=8).tokens)


RANDOM_ORDER = torch.tensor([5, 0, 9, 3, 14, 1, 7, 12, 2, 10, 15, 4, 8, 13, 6, 11])
PLANS = {
    "armd-random-order": lambda: sequential_plan(N, 2, order=RANDOM_ORDER),
    "armd-sbp4-prompt": lambda: sbp_plan(N, 4, 2, prompt=torch.tensor([1, 2, 3, 4])),
    "armd-infill-sbp2": lambda: infill_plan(torch.zeros(2, N, dtype=torch.long), torch.arange(N) % 3 == 0, streams=2),
    "armd-diffusion": lambda: order_plan(*draw_order("diffusion", dict(steps=4), None, 1, N)),
    "ar-l2r-prompt": lambda: sequential_plan(N, 2, prompt=torch.tensor([3, 1, 4])),
}


@pytest.mark.parametrize("case", list(PLANS))
def test_cache_and_reference_sample_the_same_tokens(case, armd, ar):
    model, plan = (armd if case.startswith("armd") else ar), PLANS[case]()
    cached = generate(model, plan, seed=11)
    reference = sample_reference(model, plan, seed=11)
    assert torch.equal(cached.tokens, reference.tokens)
    assert cached.forward_calls == reference.forward_calls == plan.forward_calls


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_prompt_is_kept_and_conditions_the_sample(armd, streams):
    prompt = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    result = sample_sbp(armd, N, streams, batch_size=2, prompt=prompt, temperature=0)
    assert torch.equal(result.tokens[:, :4], prompt)
    assert result.forward_calls == streams + (N - 4) // streams - 1
    assert_greedy_consistent(armd, sbp_plan(N, streams, 2, prompt=prompt), result.tokens)


def test_ar_prompt_greedy(ar):
    prompt = torch.tensor([3, 1, 4, 1])
    plan = sequential_plan(N, 2, prompt=prompt)
    result = generate(ar, plan, temperature=0)
    assert torch.equal(result.tokens[:, :4], prompt.expand(2, 4))
    assert result.forward_calls == N - 4
    assert_greedy_consistent(ar, plan, result.tokens, single_token_blocks=True)


@pytest.mark.parametrize("streams", [1, 2])
def test_infill_keeps_known_tokens(armd, streams):
    tokens = torch.randint(0, 11, (2, N), generator=torch.Generator().manual_seed(3))
    # non-contiguous known positions, different in each row, same count per row
    known = torch.zeros(2, N, dtype=torch.bool)
    known[0, [0, 3, 4, 9, 15, 12]] = True
    known[1, [1, 2, 7, 8, 10, 14]] = True
    result = sample_infill(armd, tokens, known, streams=streams, seed=2)
    assert torch.equal(result.tokens[known], tokens[known])
    assert result.forward_calls == (10 if streams == 1 else streams + 10 // streams - 1)
    greedy = sample_infill(armd, tokens, known, streams=streams, temperature=0)
    assert torch.equal(greedy.tokens[known], tokens[known])
    assert_greedy_consistent(armd, infill_plan(tokens, known, streams), greedy.tokens)


def test_tiny_top_p_is_greedy(armd):
    greedy = sample_sbp(armd, N, 4, batch_size=2, temperature=0).tokens
    for seed in (0, 1):
        assert torch.equal(sample_sbp(armd, N, 4, batch_size=2, top_p=1e-6, seed=seed).tokens, greedy)
    assert_greedy_consistent(armd, sbp_plan(N, 4, 2), greedy)


def test_float64_sampling(armd):
    result = sample_sbp(armd, N, 2, batch_size=2, sample_dtype=torch.float64, seed=4)
    assert result.tokens.shape == (2, N) and 0 <= result.tokens.min() and result.tokens.max() < 11
    again = sample_sbp(armd, N, 2, batch_size=2, sample_dtype=torch.float64, seed=4)
    assert torch.equal(result.tokens, again.tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7)])
def test_sample_logits_distribution(dtype, temperature, top_p):
    logits = torch.tensor([0.0, 1.0, 2.0, -30.0])
    draws = 40_000
    got = sample_logits(
        logits.expand(draws, 4),
        temperature=temperature,
        top_p=top_p,
        dtype=dtype,
        generator=torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(got, minlength=4).double() / draws
    probs = torch.softmax(logits.double() / temperature, dim=0)
    if top_p < 1:  # 0.665 + 0.245 reach 0.7: the two most likely tokens survive
        probs = probs * torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        probs = probs / probs.sum()
    assert (freq - probs).abs().max().item() < 0.01  # ~4 standard errors


def test_sample_logits_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(torch.zeros(1, 3), top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(torch.zeros(1, 3), temperature=-1.0)


def test_plan_errors():
    with pytest.raises(ValueError, match="multiple of streams=3"):
        sbp_plan(N, 3)
    with pytest.raises(ValueError, match="longer than the sample length"):
        sbp_plan(4, 1, prompt=torch.arange(5))
    with pytest.raises(ValueError, match="same number of known positions"):
        known = torch.tensor([[True, False, False, False], [True, True, False, False]])
        infill_plan(torch.zeros(2, 4, dtype=torch.long), known)
    with pytest.raises(ValueError, match="exactly once"):
        sequential_plan(4, order=torch.tensor([0, 1, 1, 2]))
    order, block = draw_order("diffusion", dict(steps=4), None, 2, N, seed=1)
    with pytest.raises(ValueError, match="same block structure"):
        order_plan(order, block)


def test_ar_refuses_sbp(ar):
    with pytest.raises(ValueError, match="one token per step"):
        sample_sbp(ar, N, 2)
