"""The continuous-time negative ELBO of the mdlm baseline (`masked_diffusion.continuous_nelbo`).

Every reference here is computed in the test from the definitions, not by the code under test: the
one-draw formula written out with loops, the bound by enumerating all 2^L masks and integrating over
the time by Gauss-Legendre quadrature, and the exact likelihood of the model's own continuous-time
sampler (tokens unmasked one at a time in a uniformly random order) by summing over all L! orders.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from armd_scale.model import masked_diffusion as md

from .conftest import tiny_model

VOCAB, LENGTH = 3, 3


def _model():
    return tiny_model("mdlm", vocab_size=VOCAB, init_std=0.5, n_layers=2).double()


def _all_sequences() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))


@torch.no_grad()
def _mask_losses(model, x: torch.Tensor) -> dict[tuple[bool, ...], float]:
    """S(M) = sum_{j in M} -log p(x_j | x with M masked), for every non-empty mask M of sequence x [L]."""
    out = {}
    for mask in itertools.product([False, True], repeat=len(x)):
        if not any(mask):
            continue
        noisy = torch.tensor([model.mask_id if m else int(t) for t, m in zip(x, mask, strict=True)])
        logp = torch.log_softmax(model(noisy[None])[0], dim=-1)
        out[mask] = sum(-float(logp[j, x[j]]) for j in range(len(x)) if mask[j])
    return out


def _g(losses: dict[tuple[bool, ...], float], s: np.ndarray) -> np.ndarray:
    """g(s) = (1/s) E_{z_s}[masked NLL]: each token masked with probability s, independently."""
    total = np.zeros_like(s)
    for mask, loss in losses.items():
        k = sum(mask)
        total += s ** (k - 1) * (1 - s) ** (len(mask) - k) * loss
    return total


def _integral(fn, lo: float, hi: float, nodes: int = 64) -> float:
    x, w = np.polynomial.legendre.leggauss(nodes)
    s = lo + (hi - lo) * (x + 1) / 2
    return float((hi - lo) / 2 * (w * fn(s)).sum())


@pytest.mark.parametrize("first", [0, 1])
def test_injected_times_give_the_written_out_formula(first):
    """Fixed rates and mask uniforms: the mean over draws of (N+1)/k * (sum of -log p at the k masked
    positions), 0 for a draw that masks nothing. With `first` (BD3-LM's unscored BOS) the positions before it
    are never masked and N counts only the others."""
    model = _model()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=gen)
    rates = torch.tensor([[0.3, 0.75, 0.0], [0.5, 0.9, 1.0]], dtype=torch.float64)
    uniforms = torch.rand(2, 3, 6, generator=gen, dtype=torch.float64)
    got = md.continuous_nelbo(model, tokens, rates, uniforms, model.mask_id, first)
    expected = []
    with torch.no_grad():
        for b in range(2):
            terms = []
            for k in range(3):
                s = float(rates[b, k])
                noisy = [
                    model.mask_id if j >= first and float(uniforms[b, k, j]) < s else int(tokens[b, j])
                    for j in range(6)
                ]
                logits = model(torch.tensor([noisy]))[0]
                nll, count = 0.0, 0
                for j in range(6):
                    if noisy[j] == model.mask_id:
                        nll -= float(logits[j, tokens[b, j]] - torch.logsumexp(logits[j], dim=0))
                        count += 1
                terms.append(nll * (6 - first + 1) / count if count else 0.0)
            expected.append(sum(terms) / 3)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="rates must be"):
        md.continuous_nelbo(model, tokens, rates[:, 0], uniforms[:, 0], model.mask_id)


def test_draws_are_stratified_reproducible_and_independent_of_the_batch():
    rates, uniforms = md.continuous_draws(7, range(5), 4, 10)
    assert rates.shape == (5, 4) and uniforms.shape == (5, 4, 10)
    assert ((rates >= 0) & (rates < 1)).all()
    v = rates.sort(dim=1).values
    torch.testing.assert_close(v.diff(dim=1), torch.full((5, 3), 0.25, dtype=torch.float64))  # one per quarter
    again, again_u = md.continuous_draws(7, [3, 4], 4, 10)  # the same sequences in another batch
    assert torch.equal(again, rates[3:]) and torch.equal(again_u, uniforms[3:])
    assert not torch.equal(md.continuous_draws(8, [3], 4, 10)[0], rates[3:4])  # another seed, other draws
    assert len(set(rates[:, 0].tolist())) == 5  # every sequence draws its own times
    with pytest.raises(ValueError, match="samples=0 must be >= 1"):
        md.continuous_draws(7, range(2), 0, 10)


def test_mean_of_the_estimator_is_the_integral_over_t():
    """E[estimate] = int_0^1 g(s) ds, g by enumerating all 2^L masks, the integral by quadrature. The
    training loss's 1/s draw with s ~ U(eps, 1) has the mean (1/(1-eps)) int_eps^1 g instead; with a
    large floor the test tells the two apart."""
    model = _model()
    x = _all_sequences()[[5, 13, 22]]
    losses = [_mask_losses(model, row) for row in x]
    full = [_integral(lambda s, m=m: _g(m, s), 0.0, 1.0) for m in losses]
    reps, samples = 1500, 4
    batch = x.repeat(reps, 1)  # row r is sequence r % 3, each row with its own draws
    rates, uniforms = md.continuous_draws(11, range(len(batch)), samples, LENGTH)
    with torch.no_grad():
        est = md.continuous_nelbo(model, batch, rates, uniforms, model.mask_id).view(reps, 3)
        eps = 0.5
        draws = [  # the same draws, each weighed by 1/s with s = eps + (1 - eps) v
            md.nelbo_estimate(model, batch, md.rates_from_uniform(rates[:, k], 0, eps), uniforms[:, k], model.mask_id)
            for k in range(samples)
        ]
        floored = torch.stack(draws).mean(0).view(reps, 3)
    truncated = [_integral(lambda s, m=m: _g(m, s), eps, 1.0) / (1 - eps) for m in losses]
    for i in range(3):
        stderr = float(est[:, i].std()) / reps**0.5
        assert abs(float(est[:, i].mean()) - full[i]) < 4 * stderr, (i, est.mean(0), full, stderr)
        stderr = float(floored[:, i].std()) / reps**0.5
        assert abs(float(floored[:, i].mean()) - truncated[i]) < 4 * stderr, (i, floored.mean(0), truncated)
        assert abs(float(floored[:, i].mean()) - full[i]) > 4 * stderr  # the test sees the floor
    # The same bound two other ways: enumeration with the closed-form Beta weights (T = 0) and the
    # T-step bound, which tends to it as T grows (a different code path from the estimator).
    with torch.no_grad():
        exact = md.exact_nelbo(model, x, 0, model.mask_id)
        torch.testing.assert_close(exact, torch.tensor(full, dtype=torch.float64), rtol=1e-10, atol=0)
        gaps = [float((md.exact_nelbo(model, x, t, model.mask_id) - exact).abs().max()) for t in (10, 100, 2000)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-3, gaps


def test_stratified_rao_blackwellized_draws_lower_the_variance():
    """K stratified draws per sequence average to an estimate with lower variance than K independent
    ones, and the (N+1)/k weight has lower variance than the training loss's floored 1/s weight."""
    model = _model()
    x = _all_sequences()[[22]].repeat(600, 1)
    with torch.no_grad():
        strat = md.continuous_nelbo(model, x, *md.continuous_draws(3, range(600), 4, LENGTH), model.mask_id)
        gen = torch.Generator().manual_seed(3)
        rates = torch.rand(600, 4, generator=gen, dtype=torch.float64)
        uniforms = torch.rand(600, 4, LENGTH, generator=gen, dtype=torch.float64)
        indep = md.continuous_nelbo(model, x, rates, uniforms, model.mask_id)
        floored = md.nelbo_estimate(model, x, md.rates_from_uniform(rates[:, 0], 0), uniforms[:, 0], model.mask_id)
        single = md.continuous_nelbo(model, x, rates[:, :1], uniforms[:, :1], model.mask_id)
    assert float(strat.var()) < float(indep.var())
    assert float(single.var()) < float(floored.var())


@torch.no_grad()
def _sampler_nll(model, x: torch.Tensor) -> float:
    """-log p(x) under the continuous-time sampler: it unmasks one token at a time, each masked position
    equally likely to go next, so p(x) is the average over all L! orders of prod_i p(x_order[i] | earlier)."""
    probs = []
    for order in itertools.permutations(range(len(x))):
        noisy = torch.full((len(x),), model.mask_id)
        logp = 0.0
        for j in order:
            logits = model(noisy[None])[0, j]
            logp += float(torch.log_softmax(logits, dim=-1)[x[j]])
            noisy[j] = x[j]
        probs.append(math.exp(logp))
    return -math.log(sum(probs) / len(probs))


def test_the_bound_is_above_the_exact_nll_of_the_models_sampler():
    """The continuous-time NELBO is E_order[-log p_order(x)] >= -log E_order[p_order(x)] (Jensen): above
    the exact NLL of the distribution the sampler draws from, which sums to 1 over all V^L sequences."""
    model = _model()
    seqs = _all_sequences()
    nll = torch.tensor([_sampler_nll(model, x) for x in seqs], dtype=torch.float64)
    assert abs(float((-nll).exp().sum()) - 1.0) < 1e-9  # a normalised distribution
    losses = [_mask_losses(model, x) for x in seqs]
    bound = torch.tensor([_integral(lambda s, m=m: _g(m, s), 0.0, 1.0) for m in losses], dtype=torch.float64)
    assert (bound >= nll - 1e-12).all()
    assert float((bound - nll).max()) > 1e-4  # not an identity: the orders disagree on this model
    # The estimator's mean sits above the exact NLL too.
    x = seqs[[0, 26]].repeat(800, 1)
    with torch.no_grad():
        est = md.continuous_nelbo(model, x, *md.continuous_draws(5, range(len(x)), 2, LENGTH), model.mask_id)
    est = est.view(800, 2)
    assert (est.mean(0) + 4 * est.std(0) / 800**0.5 >= nll[[0, 26]]).all()


def test_model_method_is_the_estimator_with_per_sequence_draws():
    model = _model()
    x = _all_sequences()[[1, 2, 3, 4]]
    whole = model.continuous_elbo(x, samples=3, seed=9)
    split = torch.cat(
        [
            model.continuous_elbo(x[:1], samples=3, seed=9),
            model.continuous_elbo(x[1:], samples=3, seed=9, first_index=1),
        ]
    )
    torch.testing.assert_close(whole, split, rtol=1e-12, atol=1e-12)
    rates, uniforms = md.continuous_draws(9, range(4), 3, LENGTH)
    torch.testing.assert_close(whole, md.continuous_nelbo(model, x, rates, uniforms, model.mask_id), rtol=0, atol=0)
