"""`generate.sample`, the one entry point: it picks the sampler the model declares and gives exactly
what the schedule it stands for gives (the same plan, draws and forward calls)."""

import pytest
import torch

from armd_scale.generate import SampleRequest, sample, sample_infill, sample_mdlm, sample_sbp, sample_sequential
from tests.model.conftest import tiny_model

PROMPT = torch.tensor([3, 1, 4])


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_left_to_right_is_the_sequential_sampler(arch):
    model = tiny_model(arch, randomise=True)
    got = sample(model, SampleRequest(12, batch_size=2, prompt=PROMPT, seed=5))
    want = sample_sequential(model, 12, batch_size=2, prompt=PROMPT, seed=5)
    assert torch.equal(got.tokens, want.tokens) and got.forward_calls == want.forward_calls == 12 - 3
    assert got.diffusion_steps is None and torch.equal(got.tokens[:, :3], PROMPT.expand(2, 3))


def test_streams_are_the_sbp_sampler_with_its_call_count():
    model = tiny_model("armd", randomise=True)
    got = sample(model, SampleRequest(16, batch_size=3, streams=4, temperature=0.7, top_p=0.9, seed=2))
    want = sample_sbp(model, 16, 4, batch_size=3, temperature=0.7, top_p=0.9, seed=2)
    assert torch.equal(got.tokens, want.tokens) and got.forward_calls == 4 + 16 // 4 - 1


def test_infill_is_the_infill_sampler_and_keeps_the_known_tokens():
    model = tiny_model("armd", randomise=True)
    tokens = torch.tensor([[5, 0, 0, 7, 0, 0, 2, 1]]).expand(2, -1).clone()
    known = torch.tensor([True, False, False, True, False, False, True, True])
    got = sample(model, SampleRequest(infill=(tokens, known), streams=2, seed=1))
    want = sample_infill(model, tokens, known, streams=2, seed=1)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.tokens[:, known], tokens[:, known])


def test_a_model_that_decodes_one_token_per_step_refuses_streams():
    with pytest.raises(ValueError, match="ARModel decodes one token per step"):
        sample(tiny_model("ar"), SampleRequest(8, streams=2))


def test_mdlm_is_sampled_by_its_reverse_process_from_the_prompt():
    model = tiny_model("mdlm", randomise=True)
    got = sample(model, SampleRequest(10, batch_size=2, prompt=PROMPT, streams=4, seed=7))  # streams do not apply
    init = torch.full((2, 10), model.mask_id)
    init[:, :3] = PROMPT
    want = sample_mdlm(model, 2, 10, 10, generator=torch.Generator().manual_seed(7), init=init)
    assert torch.equal(got.tokens, want.tokens) and got.forward_calls == want.forward_calls
    assert got.diffusion_steps == 10  # default: one step per position
    assert torch.equal(got.tokens[:, :3], PROMPT.expand(2, 3)) and not (got.tokens == model.mask_id).any()


def test_mdlm_infill_and_steps():
    model = tiny_model("mdlm", randomise=True)
    tokens = torch.tensor([[5, 0, 0, 7, 0, 2]])
    known = torch.tensor([True, False, False, True, False, True])
    got = sample(model, SampleRequest(infill=(tokens, known), steps=3, seed=0))
    assert got.diffusion_steps == 3 and got.forward_calls <= 3
    assert torch.equal(got.tokens[:, known], tokens[:, known]) and not (got.tokens == model.mask_id).any()


@pytest.mark.parametrize(
    "request_, message",
    [
        (SampleRequest(0), "length >= 1"),
        (SampleRequest(4, streams=0), "must be >= 1"),
        (SampleRequest(4, prompt=PROMPT, infill=(torch.zeros(1, 4, dtype=torch.long), torch.ones(4))), "not both"),
    ],
)
def test_bad_requests_are_refused(request_, message):
    with pytest.raises(ValueError, match=message):
        sample(tiny_model("armd"), request_)
