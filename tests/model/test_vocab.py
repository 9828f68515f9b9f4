"""Vocabulary padding: ids >= model.tokenizer_vocab_size get no probability in the loss, the exact
likelihood or any sampler, and no gradient, for every architecture."""

from __future__ import annotations

import pytest
import torch

from armd_scale.config import ConfigError
from armd_scale.generate import sample_sbp, sample_sequential
from armd_scale.generate.mdlm import sample_mdlm
from armd_scale.model import order_loss
from armd_scale.model.generation_orders import l2r_order
from tests.model.conftest import tiny_model, tiny_model_config

REAL, PADDED = 50, 64


def _dominant_padding(model: torch.nn.Module) -> None:
    """Point the padded output rows along the mean final hidden state, scaled up: unmasked, the
    padded ids would take nearly all the probability."""
    captured = []
    hook = model.final_norm.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    tokens = torch.randint(0, REAL, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(tokens, *l2r_order(4, 16))
    hook.remove()
    direction = captured[0].reshape(-1, captured[0].shape[-1]).mean(0)
    with torch.no_grad():
        model.lm_head.weight[REAL:] = 50.0 * direction / direction.norm()


@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_padded_ids_get_no_probability_and_no_gradient(arch: str) -> None:
    model = tiny_model(arch, vocab_size=PADDED, tokenizer_vocab_size=REAL, tie_embeddings=False).train()
    _dominant_padding(model)
    tokens = torch.randint(0, REAL, (4, 16), generator=torch.Generator().manual_seed(1))
    order, block = l2r_order(4, 16)
    logits = model(tokens, order, block)
    probs = torch.softmax(logits.double(), dim=-1)
    assert (probs[..., REAL:] == 0).all() and torch.allclose(probs[..., :REAL].sum(-1), torch.ones(4, 16).double())
    loss = order_loss(logits, tokens, order)
    loss.backward()
    assert torch.isfinite(loss) and (model.lm_head.weight.grad[REAL:] == 0).all()
    assert model.lm_head.weight.grad[:REAL].abs().sum() > 0


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_samplers_never_draw_a_padded_id(arch: str) -> None:
    model = tiny_model(arch, vocab_size=PADDED, tokenizer_vocab_size=REAL)
    _dominant_padding(model)
    gen = torch.Generator().manual_seed(0)
    drawn = [sample_sequential(model, 16, batch_size=8, generator=gen).tokens]
    if arch == "armd":
        drawn.append(sample_sbp(model, 16, 4, batch_size=8, generator=gen).tokens)
    assert all(int(t.max()) < REAL for t in drawn)
    model.cfg.tokenizer_vocab_size = None  # the control: without the mask the padded ids win
    unmasked = sample_sequential(model, 16, batch_size=8, generator=torch.Generator().manual_seed(0)).tokens
    assert (unmasked >= REAL).float().mean() > 0.5


def test_mdlm_ancestral_sampler_never_draws_a_padded_id() -> None:
    model = tiny_model("mdlm", vocab_size=PADDED, tokenizer_vocab_size=REAL)
    _dominant_padding(model)
    out = sample_mdlm(model, 8, 16, 4, generator=torch.Generator().manual_seed(0))
    assert int(out.tokens.max()) < REAL


def test_a_model_smaller_than_its_tokenizer_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.tokenizer_vocab_size=70 must be in .*cannot be smaller"):
        tiny_model_config(vocab_size=PADDED, tokenizer_vocab_size=70).validate()
