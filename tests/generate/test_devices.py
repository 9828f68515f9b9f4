"""Sampling on a device other than the CPU: every sampler runs on the simulated device of
tests/simulated_device.py (CUDA's rules for mixing devices and generators) and gives exactly the
tokens of the CPU run with the same seed, because draws are made on the (CPU) generator's device and
moved (armd_scale/rng.py). On the CPU alone none of this can fail."""

from __future__ import annotations

import json

import pytest
import torch

from armd_scale.cli import main
from armd_scale.generate import (
    generate,
    order_plan,
    sample_infill,
    sample_logits,
    sample_mdlm,
    sample_reference,
    sample_sbp,
    sample_sequential,
    sbp_plan,
)
from armd_scale.model.generation_orders import diffusion_order
from armd_scale.rng import seeded
from tests.model.conftest import tiny_model
from tests.simulated_device import host_reads, simulated_device

N = 16


def _samplers(arch: str):
    """(name, fn(model) -> SampleResult) of every sampling entry point the arch supports."""
    prompt = torch.tensor([3, 1, 4])
    known = torch.zeros(N, dtype=torch.bool)
    known[[0, 5, 6, 11]] = True
    infill_tokens = torch.arange(N).expand(2, N) % 11
    cases = [
        ("sequential", lambda m: sample_sequential(m, N, batch_size=2, generator=seeded(1))),
        ("sequential-prompt", lambda m: sample_sequential(m, N, prompt=prompt, generator=seeded(2), top_p=0.8)),
        ("seed-only", lambda m: sample_sequential(m, N, seed=5, temperature=0.7)),
        ("infill", lambda m: sample_infill(m, infill_tokens, known, generator=seeded(3))),
        ("reference", lambda m: sample_reference(m, sbp_plan(N, 1), generator=seeded(4))),
        ("float64", lambda m: sample_sequential(m, N, generator=seeded(6), sample_dtype=torch.float64)),
    ]
    if arch == "armd":
        order, block = diffusion_order(1, N, steps=4, generator=seeded(7))
        cases += [
            ("sbp", lambda m: sample_sbp(m, N, 4, batch_size=2, generator=seeded(8))),
            ("sbp-prompt", lambda m: sample_sbp(m, N, 2, prompt=prompt[:2], generator=seeded(9))),
            ("infill-sbp", lambda m: sample_infill(m, infill_tokens, known, streams=2, generator=seeded(10))),
            ("diffusion-plan", lambda m: generate(m, order_plan(order, block), generator=seeded(11))),
            ("reference-sbp", lambda m: sample_reference(m, sbp_plan(N, 4), generator=seeded(12))),
        ]
    return cases


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_every_sampler_runs_on_another_device_and_matches_the_cpu(arch):
    model = tiny_model(arch)
    expected = {name: fn(model).tokens for name, fn in _samplers(arch)}
    with simulated_device() as dev:
        on_dev = model.to(dev)
        got = {}
        for name, fn in _samplers(arch):
            out = fn(on_dev)
            assert out.tokens.device == dev, name
            got[name] = out.tokens.cpu()
    for name, tokens in expected.items():
        assert torch.equal(got[name], tokens), f"{arch} {name}: the device sample differs from the CPU sample"


def test_mdlm_sampler_runs_on_another_device_and_matches_the_cpu():
    model = tiny_model("mdlm")
    init = torch.full((2, N), model.mask_id)
    init[:, :3] = torch.tensor([1, 2, 3])
    expected = sample_mdlm(model, 2, N, 5, generator=seeded(0), init=init, top_p=0.9)
    with simulated_device() as dev:
        out = sample_mdlm(model.to(dev), 2, N, 5, generator=seeded(0), init=init, top_p=0.9)
        assert out.tokens.device == dev
        tokens = out.tokens.cpu()
    assert torch.equal(tokens, expected.tokens) and out.forward_calls == expected.forward_calls


def test_sample_logits_draws_on_the_generators_device():
    """Logits on meta (no values): the uniforms must come from the CPU generator's own device."""
    logits = torch.zeros(3, 7, device="meta")
    assert sample_logits(logits, generator=seeded(0)).device.type == "meta"


def _generate_json(tmp_path, device: str, *args: str) -> dict:
    out = tmp_path / f"gen-{device.replace(':', '')}-{len(list(tmp_path.iterdir()))}.json"
    assert main(["generate", "--device", device, *args, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    return {k: v for k, v in doc.items() if k not in ("seconds", "tokens_per_s")}


@pytest.mark.parametrize(
    "run, args",
    [
        ("text_run", ["--length", "16", "--streams", "4", "--num-samples", "2"]),
        ("text_run", ["--prompt", "The", "--length", "12"]),
        ("text_run", ["--infill", "The [MASK:3] is [MASK:2] fast", "--streams", "1"]),
        ("text_ar_run", ["--length", "12", "--top-p", "0.9"]),
        ("text_mdlm_run", ["--length", "12", "--steps", "6", "--prompt", "The"]),
        ("text_mdlm_run", ["--infill", "The [MASK:3] is", "--steps", "4"]),
    ],
    ids=["armd-sbp", "armd-prompt", "armd-infill", "ar", "mdlm-prompt", "mdlm-infill"],
)
def test_armd_generate_on_another_device_equals_the_cpu(run, args, request, tmp_path, capsys):
    checkpoint = str(request.getfixturevalue(run).dir)
    on_cpu = _generate_json(tmp_path, "cpu", "--checkpoint", checkpoint, *args)
    with simulated_device() as dev:
        on_dev = _generate_json(tmp_path, str(dev), "--checkpoint", checkpoint, *args)
    assert on_dev == on_cpu  # same tokens, texts and forward calls
    err = capsys.readouterr().err
    assert "armd generate: computing on cpu" in err and "armd generate: computing on lazy:0" in err


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_cached_decoding_never_waits_for_the_device(arch):
    """Positions stay on the host and uniforms are copied over asynchronously: a decoding loop on a GPU
    has no device synchronisation per step (the old one had three: two position checks and a compare)."""
    model = tiny_model(arch)
    with simulated_device() as dev:
        model.to(dev)
        before = host_reads()
        sample_sequential(model, N, batch_size=2, generator=seeded(0), top_p=0.9)
        if arch == "armd":
            sample_sbp(model, N, 4, generator=seeded(0))
        assert host_reads() == before == 0
