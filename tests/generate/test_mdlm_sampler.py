"""The mdlm ancestral sampler: it follows the log-linear schedule, skips calls when nothing changes,
keeps known tokens and is reproducible from a seed."""

import pytest
import torch

from armd_scale.generate import ancestral_sample, sample_mdlm
from tests.model.conftest import tiny_model


class _Recorder:
    """A denoiser with fixed logits that records the masked fraction of every input it is given."""

    def __init__(self, vocab: int, mask_id: int):
        self.vocab, self.mask_id, self.fractions = vocab, mask_id, []

    def __call__(self, noisy):
        self.fractions.append((noisy == self.mask_id).double().mean().item())
        return torch.zeros(*noisy.shape, self.vocab)


def test_sampler_reveals_tokens_on_the_log_linear_schedule():
    """At step t (T..1) the input is masked with probability t/T; every call sees one step's state."""
    rec = _Recorder(vocab=5, mask_id=5)
    gen = torch.Generator().manual_seed(0)
    out = ancestral_sample(rec, mask_id=5, batch_size=8, seq_len=500, steps=4, generator=gen)
    assert out.forward_calls == 4 == len(rec.fractions)
    for t, fraction in zip((4, 3, 2, 1), rec.fractions, strict=True):
        assert abs(fraction - t / 4) < 0.02, (t, fraction)
    assert not (out.tokens == 5).any() and out.tokens.max() < 5


def test_sampler_skips_calls_when_nothing_changes_and_keeps_known_tokens():
    rec = _Recorder(vocab=5, mask_id=5)
    gen = torch.Generator().manual_seed(0)
    out = ancestral_sample(rec, mask_id=5, batch_size=1, seq_len=3, steps=64, generator=gen)
    assert not (out.tokens == 5).any()
    assert out.forward_calls <= 3 + 1  # one call per step that revealed something, never T = 64
    model = tiny_model("mdlm")
    init = torch.full((2, 10), model.mask_id)
    init[:, :4] = torch.tensor([1, 2, 3, 4])
    a = sample_mdlm(model, 2, 10, 5, generator=torch.Generator().manual_seed(3), init=init)
    b = sample_mdlm(model, 2, 10, 5, generator=torch.Generator().manual_seed(3), init=init)
    assert torch.equal(a.tokens, b.tokens) and a.forward_calls <= 5
    assert torch.equal(a.tokens[:, :4], init[:, :4]) and not (a.tokens == model.mask_id).any()
    one = sample_mdlm(model, 2, 10, 1, generator=torch.Generator().manual_seed(3))
    assert one.forward_calls == 1 and not (one.tokens == model.mask_id).any()
    with pytest.raises(ValueError, match="steps >= 1"):
        sample_mdlm(model, 1, 4, 0)
