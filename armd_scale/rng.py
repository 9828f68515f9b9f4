"""The one rule for random numbers: draw on the generator's device, then move the result.

Every random draw in sampling, evaluation, orders and the masked-diffusion noise goes through this
module. A draw is made on the device of the generator that drives it (the CPU when there is none:
torch's global CPU generator), and the result is then copied to the device where it is used.

Why this rule and not "generators live on the model's device":
- torch refuses a generator of one device filling a tensor of another (`torch.rand(...,
  generator=cpu_generator, device="cuda")` raises), and the mix is easy to write and invisible on a
  CPU-only machine. With one helper there is one place where the device of a draw is decided.
- The generators the package creates are CPU generators (`seeded`), so a seed gives the same
  uniforms on every device: a sample drawn on a GPU equals the CPU sample wherever their logits
  agree, and orders and noise never depend on the hardware or on the number of ranks.
- The draws are small (one uniform per sampled token, per order position, per masked token), so
  drawing them on the host costs a copy of a few KB, issued asynchronously (no device sync).

docs/GPU.md lists where each draw happens.
"""

from __future__ import annotations

import torch


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: the generator every seeded draw in the package uses."""
    return torch.Generator().manual_seed(seed)


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where draws from `generator` are made (the CPU for torch's global generator)."""
    return torch.device("cpu") if generator is None else generator.device


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """Move a freshly drawn tensor to `device`; host-to-device copies are asynchronous (the staging copy
    of pageable memory happens at once, so the source may be freed), device-to-host ones are not."""
    if device is None:
        return t
    device = torch.device(device)
    return t.to(device, non_blocking=t.device.type == "cpu" and device.type != "cpu")


def uniform(
    *shape: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """U[0, 1) of `shape`, drawn on the generator's device, returned on `device` (default: the generator's)."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=generator_device(generator))
    return to_device(u, device)


def permutation(n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None):
    """A uniform random permutation of 0..n-1, drawn on the generator's device, returned on `device`."""
    return to_device(torch.randperm(n, generator=generator, device=generator_device(generator)), device)


def integers(
    high: int, *shape: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uniform integers in [0, high) of `shape`, drawn on the generator's device, returned on `device`."""
    drawn = torch.randint(high, shape, generator=generator, device=generator_device(generator))
    return to_device(drawn, device)
