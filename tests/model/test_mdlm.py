"""The mdlm baseline: no leakage, a valid bound, unbiased estimators, a sampler that follows the schedule."""

import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from armd_scale.model import build_model, token_nll
from armd_scale.model import masked_diffusion as md
from armd_scale.model.flops import training_flops_per_token

from .conftest import ORDER_CASES, ORDER_IDS, assert_no_leakage, draw_order, tiny_model, tiny_model_config


def _all_sequences(vocab: int, n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=n)))


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_masked_predictions_see_only_unmasked_tokens(backend):
    """Logits at masked positions are bit-identical whatever the true tokens at masked positions are,
    and change when an unmasked token changes."""
    model = tiny_model("mdlm", attention_backend=backend)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (3, 12), generator=gen)
    rates = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    noisy, masked = md.corrupt(tokens, rates, torch.rand(3, 12, generator=gen, dtype=torch.float64), model.mask_id)
    assert masked.any(dim=1).all() and (~masked).any(dim=1).all()
    with torch.no_grad():
        base = model(noisy)
        other = torch.where(masked, (tokens + 1 + torch.randint(0, 10, tokens.shape, generator=gen)) % 11, tokens)
        noisy_other = other.masked_fill(masked, model.mask_id)  # other true tokens under the same mask
        assert torch.equal(model(noisy_other), base)  # the true tokens never reach the network
        b, j = torch.nonzero(~masked)[0].tolist()
        changed = noisy.clone()
        changed[b, j] = (noisy[b, j] + 1) % 11
        diff = (model(changed)[b] - base[b])[masked[b]].abs().max()
    assert diff > 1e-6, "masked predictions ignore an unmasked token"


_CONTRACT_CASES = [
    (c, i) for c, i in zip(ORDER_CASES, ORDER_IDS, strict=True) if i in ("sbp-streams2", "diffusion-steps3")
]


@pytest.mark.parametrize("kind,params,step", [c for c, _ in _CONTRACT_CASES], ids=[i for _, i in _CONTRACT_CASES])
def test_shared_contract_has_no_leakage(kind, params, step):
    """model(tokens, order, block): changing tokens of the same or a later block leaves logits[:, k]
    bit-identical; changing an earlier-block token changes them (the ARMD contract, docs/ARCHITECTURE.md, Contract)."""
    order, block = draw_order(kind, params, step, batch=2, n=8, seed=5)
    assert_no_leakage(tiny_model("mdlm", n_layers=2), order, block, vocab=11)


def test_contract_equals_one_denoising_pass_for_two_blocks():
    """Block 0 = visible tokens, block 1 = masked: the contract's logits for block 1 are one denoising pass."""
    model = tiny_model("mdlm")
    tokens = torch.randint(0, 11, (1, 10), generator=torch.Generator().manual_seed(2))
    masked = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    order = torch.cat([torch.nonzero(~masked[0])[:, 0], torch.nonzero(masked[0])[:, 0]])[None]
    block = masked[0][order].long()
    with torch.no_grad():
        contract = model(tokens, order, block)
        direct = model(tokens.masked_fill(masked, model.mask_id))
    torch.testing.assert_close(contract[0, block[0] == 1], direct[0, order[0, block[0] == 1]], atol=1e-6, rtol=1e-6)


def test_mask_token_is_never_predicted_and_sdpa_matches_flex():
    model = tiny_model("mdlm")
    assert model.mask_id == 11 and model.embed.weight.shape[0] == 11
    assert model.lm_head.weight is model.embed.weight  # tied head over the real vocabulary only
    noisy = torch.full((2, 9), model.mask_id)
    noisy[:, ::3] = 4
    with torch.no_grad():
        logits = model(noisy)
        flex = tiny_model("mdlm", attention_backend="flex")(noisy)
    assert logits.shape == (2, 9, 11)
    torch.testing.assert_close(flex, logits, atol=1e-5, rtol=1e-5)


def test_forward_argument_errors():
    model = tiny_model("mdlm")
    order, block = draw_order("l2r", {}, None, batch=1, n=8)
    with pytest.raises(ValueError, match="only one of order/block"):
        model(torch.zeros(1, 8, dtype=torch.long), order)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model(torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_bound_over_all_81_sequences(steps):
    """vocab 3, N=4: sum_x exp(-NELBO(x)) <= 1 (a bound on a normalised distribution); T=1 is the
    product of all-masked marginals, so there it is exactly 1."""
    model = tiny_model("mdlm", vocab_size=3, init_std=0.5).double()
    seqs = _all_sequences(3, 4)
    with torch.no_grad():
        nelbo = md.exact_nelbo(model, seqs, steps, model.mask_id)
    total = (-nelbo).exp().sum().item()
    if steps == 1:
        assert abs(total - 1.0) <= 1e-9
    else:
        assert 0.01 < total < 1.0 - 1e-3
    # Guard: the same model with the per-step weights halved over-claims probability mass.
    assert (-nelbo / 2).exp().sum().item() > 1.0


def test_estimators_are_unbiased_and_the_discrete_bound_approaches_continuous_time():
    model = tiny_model("mdlm", vocab_size=3, init_std=0.5, n_layers=2).double()
    x = _all_sequences(3, 4)[[5, 40, 77]]
    draws = 2000
    batch = x.repeat(draws, 1)  # row r is sequence r % 3: many draws in one forward call
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for steps in (0, 4):
            exact = md.exact_nelbo(model, x, steps, model.mask_id)
            est = md.nelbo_estimate(
                model,
                batch,
                md.stratified_rates(len(batch), steps, gen, eps=1e-6),
                torch.rand(batch.shape, generator=gen, dtype=torch.float64),
                model.mask_id,
            )
            est = est.view(draws, 3)
            stderr = est.std(0) / draws**0.5
            assert ((est.mean(0) - exact).abs() < 4 * stderr + 1e-3).all(), (steps, est.mean(0), exact, stderr)
        per_step = model.elbo(batch[: 3 * 300], 4, gen).view(300, 3)
        exact4 = md.exact_nelbo(model, x, 4, model.mask_id)
        assert ((per_step.mean(0) - exact4).abs() < 4 * per_step.std(0) / 300**0.5 + 1e-3).all()
        assert (per_step.std(0) < est.std(0)).all()  # every step's term in each draw: lower variance
        close = md.exact_nelbo(model, x, 512, model.mask_id)
        torch.testing.assert_close(close, md.exact_nelbo(model, x, 0, model.mask_id), atol=0.02, rtol=0)


def test_rates():
    v = torch.tensor([0.0, 0.249, 0.25, 0.999])
    assert md.rates_from_uniform(v, 4).tolist() == [0.25, 0.25, 0.5, 1.0]
    cont = md.rates_from_uniform(v, 0)
    assert cont.min() >= md.EPS and cont.max() <= 1.0
    rates = md.stratified_rates(8, 0, torch.Generator().manual_seed(0))
    assert ((rates.sort().values[1:] - rates.sort().values[:-1]) - (1 - md.EPS) / 8).abs().max() < 1e-9  # evenly spaced
    assert md.kronecker_rate(7, 0.3, 0) == md.kronecker_rate(7, 0.3, 0)
    with pytest.raises(ValueError, match="steps"):
        md.rates_from_uniform(v, -1)


def test_training_flops_match_flop_counter():
    cfg = tiny_model_config("mdlm", vocab_size=300, d_model=64, max_seq_len=64, n_layers=2)
    model = build_model(cfg)
    tokens = torch.randint(0, 300, (2, 48))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model.loss(tokens, torch.Generator().manual_seed(0)).backward()
    predicted = training_flops_per_token(cfg, 48) * tokens.numel()
    assert abs(counter.get_total_flops() - predicted) / predicted < 0.05


@pytest.fixture
def one_thread():
    """Hundreds of tiny steps: one thread avoids OpenMP spin-waits on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_markov_elbo_is_an_upper_bound_close_to_the_true_nll(one_thread):
    """A briefly trained tiny mdlm on a Markov chain with known law: its NELBO per token is above the
    true NLL of the same sequences (a bound can not beat the source) and within 0.2 nats of it."""
    from armd_scale.data.prepare.corpora import MarkovSource

    n, vocab = 16, 8
    source = MarkovSource(vocab, 1, seed=0, concentration=0.3)
    train = torch.from_numpy(source.sample(20000, n, seed=1))
    val = torch.from_numpy(source.sample(512, n, seed=2))
    torch.manual_seed(0)
    model = build_model(tiny_model_config("mdlm", vocab_size=vocab, n_layers=2, d_model=64, n_heads=4, init_std=0.02))
    steps = 500
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss = model.loss(train[torch.randint(0, len(train), (64,), generator=gen)], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        nelbo = torch.stack(
            [
                md.nelbo_estimate(
                    model,
                    val,
                    md.stratified_rates(len(val), 0, gen),
                    torch.rand(val.shape, generator=gen, dtype=torch.float64),
                    model.mask_id,
                )
                for _ in range(8)
            ]
        ).mean(0)
    true_nll = _markov_nll(source, val)
    gap = (nelbo - true_nll) / n  # paired per sequence: the sequence-to-sequence spread cancels
    stderr = gap.std().item() / len(val) ** 0.5
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50 - 0.3
    assert gap.mean().item() > 2 * stderr, f"NELBO beat the true NLL: gap {gap.mean().item():.4f} +- {stderr:.4f}"
    assert gap.mean().item() < 0.2, f"NELBO {nelbo.mean().item() / n:.4f} is far from the source's NLL"
    assert nelbo.mean().item() / n > source.sequence_entropy(n) / n - 3 * stderr


def _markov_nll(source, seqs: torch.Tensor) -> torch.Tensor:
    """Exact -log p(x) of each sequence under an order-1 Markov source (stationary start)."""
    x = seqs.numpy()
    logp = torch.log(torch.from_numpy(source.stationary()[x[:, 0]]))
    trans = torch.log(torch.from_numpy(source.transitions))
    for t in range(1, x.shape[1]):
        logp += trans[x[:, t - 1], x[:, t]]
    return -logp.double()


def test_contract_scores_like_armd_on_an_order():
    """token_nll over model(tokens, order, block) is a proper likelihood: it sums to 1 over 81 sequences."""
    model = tiny_model("mdlm", vocab_size=3, init_std=0.5).double()
    seqs = _all_sequences(3, 4)
    order, block = draw_order("sbp", dict(streams=2), None, batch=1, n=4)
    order, block = order.expand(len(seqs), 4), block.expand(len(seqs), 4)
    with torch.no_grad():
        logp = -token_nll(model(seqs, order, block), seqs, order).sum(dim=1)
    assert abs(logp.exp().sum().item() - 1.0) <= 1e-6


def test_per_sequence_generators_make_the_t_step_noise_independent_of_the_batch():
    """discrete_nelbo with one generator per sequence: a batch of three gives each sequence exactly what it
    gets alone from a fresh generator of the same seed (its noise is its own), and a wrong count is refused."""
    model = tiny_model("mdlm", vocab_size=5).double()
    tokens = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(0))
    batch = md.discrete_nelbo(model, tokens, 3, model.mask_id, [md.sequence_generator(7, i) for i in range(3)])
    alone = [
        md.discrete_nelbo(model, tokens[i : i + 1], 3, model.mask_id, [md.sequence_generator(7, i)]) for i in range(3)
    ]
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-12, atol=1e-12)
    shared = md.discrete_nelbo(model, tokens, 3, model.mask_id, md.sequence_generator(7, 0))  # one stream for all
    assert not torch.allclose(batch[1:], shared[1:])
    with pytest.raises(ValueError, match="2 generators for 3 sequences"):
        md.discrete_nelbo(model, tokens, 3, model.mask_id, [md.sequence_generator(7, i) for i in range(2)])
