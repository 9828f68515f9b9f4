"""One way to sample from any model: `sample(model, SampleRequest(...))`.

`armd generate`, the end-of-run sample (train/sample_report.py) and the lm-eval harness adapter
(eval/harness.py) all call this, so "how do I sample from this checkpoint" is decided once, here,
and from what the model says of itself (`model.sampler`, `model.parallel_decoding`), never from the
arch name:

- `sampler == "blocks"` (armd, ar): a KV-cached plan (generate/sampler.py). Left to right with
  `streams=1`, strided block-parallel with S streams after the prompt, or infilling around known
  tokens (l2r or SBP over the unknown positions).
- `sampler == "ancestral"` (mdlm): the masked-diffusion reverse process with `steps` steps
  (generate/mdlm.py); prompt or known tokens stay, every other position starts masked. `streams`
  does not apply; sampling is in float64 whatever `sample_dtype` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import Model
from ..rng import seeded
from .mdlm import ancestral_sample
from .sampler import SampleResult, infill_plan, sbp_plan
from .sampler import generate as run_plan


@dataclass(frozen=True)
class SampleRequest:
    """What to sample. Either a `length` with an optional `prompt` (tokens of positions 0..P-1, [P] or
    [batch_size, P]), or `infill`: (tokens [B, N], known bool [N] or [B, N]) to fill around."""

    length: int = 0
    batch_size: int = 1
    prompt: torch.Tensor | None = None
    infill: tuple[torch.Tensor, torch.Tensor] | None = None
    streams: int = 1  # SBP streams of a "blocks" sampler (1 = left to right)
    steps: int | None = None  # reverse-process steps of an "ancestral" sampler (default: the length)
    temperature: float = 1.0  # 0 = argmax
    top_p: float = 1.0
    seed: int = 0  # seeds a CPU generator unless `generator` is given (armd_scale/rng.py)
    generator: torch.Generator | None = None
    sample_dtype: torch.dtype = torch.float32  # softmax/CDF precision of the "blocks" sampler

    @property
    def total_length(self) -> int:
        return self.infill[0].shape[1] if self.infill is not None else self.length

    def check(self) -> None:
        if self.streams < 1 or self.batch_size < 1:
            raise ValueError(f"streams={self.streams} and batch_size={self.batch_size} must be >= 1")
        if self.infill is None and self.length < 1:
            raise ValueError(f"a sample needs length >= 1, got {self.length}")
        if self.infill is not None and self.prompt is not None:
            raise ValueError("pass a prompt or infill tokens, not both")


def sample(model: Model, request: SampleRequest) -> SampleResult:
    """Draw `request` from `model` with the sampler the model declares (module docstring)."""
    request.check()
    generator = request.generator if request.generator is not None else seeded(request.seed)
    if model.sampler == "ancestral":
        return _ancestral(model, request, generator)
    if request.streams > 1 and not model.parallel_decoding:
        raise ValueError(
            f"{request.streams} SBP streams need multi-token blocks; {type(model).__name__} decodes one token per step"
        )
    if request.infill is not None:
        plan = infill_plan(request.infill[0], request.infill[1], request.streams)
    else:
        plan = sbp_plan(request.length, request.streams, request.batch_size, request.prompt)
    return run_plan(
        model,
        plan,
        temperature=request.temperature,
        top_p=request.top_p,
        generator=generator,
        sample_dtype=request.sample_dtype,
    )


def _ancestral(model: Model, request: SampleRequest, generator: torch.Generator) -> SampleResult:
    """The reverse process from known tokens (prompt or infill) and the mask everywhere else."""
    mask_id = model.mask_id
    if mask_id is None:  # a model declaring the ancestral sampler must have a mask token
        raise TypeError(f"{type(model).__name__} declares sampler 'ancestral' but has no mask_id")
    n, b = request.total_length, request.batch_size
    if request.infill is not None:
        tokens, known = request.infill
        b = tokens.shape[0]
        known = torch.as_tensor(known, dtype=torch.bool).expand_as(tokens)
        init = torch.where(known, tokens, torch.full_like(tokens, mask_id))
    else:
        init = torch.full((b, n), mask_id, dtype=torch.long)
        if request.prompt is not None:
            prompt = torch.as_tensor(request.prompt, dtype=torch.long)
            if prompt.shape[-1] > n:
                raise ValueError(f"prompt of {prompt.shape[-1]} tokens is longer than the sample length {n}")
            init[:, : prompt.shape[-1]] = prompt
    steps = request.steps or n
    out = ancestral_sample(
        model,
        mask_id=mask_id,
        batch_size=b,
        seq_len=n,
        steps=steps,
        generator=generator,
        temperature=request.temperature,
        top_p=request.top_p,
        init=init,
        device=model.embed.weight.device,
    )
    out.diffusion_steps = steps
    return out
