"""The masked-diffusion (`mdlm`) baseline's ancestral sampler: MDLM's SUBS reverse process.

It needs nothing of a network but a *denoiser* (noisy tokens -> logits over the real vocabulary,
see model/masked_diffusion.py), so tests can drive it with a recorder and the model with its own
forward. `sample_mdlm` is the entry point for an `MDLMModel`.
"""

from __future__ import annotations

import time

import torch

from ..model.masked_diffusion import Denoiser
from ..model.mdlm import MDLMModel
from ..rng import uniform
from .sampler import SampleResult, sample_logits


@torch.no_grad()
def ancestral_sample(
    denoise: Denoiser,
    *,
    mask_id: int,
    batch_size: int,
    seq_len: int,
    steps: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    init: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> SampleResult:
    """Ancestral sampling with T steps of the reverse process (MDLM's SUBS sampler).

    Start from all-mask (or `init`: known tokens, mask id where to generate). At step t = T..1 every
    still-masked token is revealed with probability (alpha_{t-1} - alpha_t) / (1 - alpha_t) = 1/t, its
    value drawn from p(x_j | z_t); revealed tokens never change again (carry-over). At t = 1 the
    probability is 1, so no mask is left. When a step reveals nothing the next input is unchanged and
    its logits are reused, so forward calls <= T. Tokens are drawn in float64 (docs/EVALUATION.md). Uniforms
    are drawn on the generator's device and moved (armd_scale/rng.py): with a CPU generator a seed
    gives the same sample on every device wherever the logits agree.
    """
    if steps < 1:
        raise ValueError(f"the sampler needs steps >= 1, got {steps}")
    start = time.perf_counter()
    if init is None:
        x = torch.full((batch_size, seq_len), mask_id, dtype=torch.long, device=device)
    else:
        if init.shape != (batch_size, seq_len):
            raise ValueError(f"init must be [batch_size={batch_size}, seq_len={seq_len}], got {tuple(init.shape)}")
        x = init.to(device=device, dtype=torch.long).clone()
    calls, logits = 0, None
    for t in range(steps, 0, -1):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        if logits is None:
            logits = denoise(x)
            calls += 1
        reveal = masked & (uniform(*x.shape, generator=generator, device=x.device, dtype=torch.float64) < 1.0 / t)
        if bool(reveal.any()):
            drawn = sample_logits(
                logits[reveal], temperature=temperature, top_p=top_p, generator=generator, dtype=torch.float64
            )
            x[reveal] = drawn
            logits = None  # the input changed: the next step needs a new forward call
    return SampleResult(tokens=x, forward_calls=calls, seconds=time.perf_counter() - start)


def sample_mdlm(
    model: MDLMModel,
    batch_size: int,
    seq_len: int,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    init: torch.Tensor | None = None,
) -> SampleResult:
    """Ancestral sampling from `model` with `steps` reverse steps (at most that many forward calls) on
    the model's device. `init` holds known tokens and `model.mask_id` where to generate."""
    return ancestral_sample(
        model,
        mask_id=model.mask_id,
        batch_size=batch_size,
        seq_len=seq_len,
        steps=steps,
        generator=generator,
        temperature=temperature,
        top_p=top_p,
        init=init,
        device=model.embed.weight.device,
    )
