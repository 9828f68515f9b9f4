"""Generation orders and block structures (docs/ARCHITECTURE.md, Contract).

Every function returns `(order, block)`, two LongTensors of shape [batch, seq_len]:
`order[b, k]` is the original (text) position of the k-th generated token and `block[b, k]` its block
index, non-decreasing in k and starting at 0. Tokens of one block are generated together, each
conditioned only on earlier blocks. The model never sees anything else about the order, so adding a
new order kind needs no model change.

Orders are host-side data: they are returned on the CPU (the trainer and the samplers move them),
and every draw goes through `armd_scale.rng`, so a generator of any device works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..rng import permutation, seeded, uniform

OrderFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
ORDER_KINDS = ("l2r", "random", "progressive", "sbp", "diffusion")


def make_order(
    kind: str,
    batch_size: int,
    seq_len: int,
    *,
    generator: torch.Generator | None = None,
    step: int | None = None,
    **params,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw an order for a batch. `step` is the optimizer step (used by `progressive`)."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"make_order needs batch_size >= 1 and seq_len >= 1, got {batch_size}, {seq_len}")
    if kind == "l2r":
        _no_params(kind, params)
        return l2r_order(batch_size, seq_len)
    if kind == "random":
        _no_params(kind, params)
        return random_order(batch_size, seq_len, generator=generator)
    if kind == "progressive":
        if step is None:
            raise ValueError("order kind 'progressive' needs the optimizer step (step=...)")
        return progressive_order(batch_size, seq_len, step=step, generator=generator, **params)
    if kind == "sbp":
        return sbp_order(batch_size, seq_len, **params)
    if kind == "diffusion":
        return diffusion_order(batch_size, seq_len, generator=generator, **params)
    raise ValueError(f"unknown order kind '{kind}'; choose one of {', '.join(ORDER_KINDS)}")


def _no_params(kind: str, params: dict) -> None:
    if params:
        raise ValueError(f"order kind '{kind}' takes no parameters, got {sorted(params)}")


def _single_token_blocks(batch_size: int, seq_len: int) -> torch.Tensor:
    return torch.arange(seq_len).expand(batch_size, seq_len).clone()


def l2r_order(batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left to right, one token per block: the ordinary autoregressive factorization."""
    order = torch.arange(seq_len).expand(batch_size, seq_len).clone()
    return order, _single_token_blocks(batch_size, seq_len)


def random_order(
    batch_size: int, seq_len: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform random permutation per row, one token per block (any-order autoregression)."""
    order = torch.argsort(uniform(batch_size, seq_len, generator=generator, device="cpu"), dim=1)
    return order, _single_token_blocks(batch_size, seq_len)


def shuffled_count(step: int, *, ar_steps: int, rho: int, ramp_end: int) -> int:
    """Number of shuffled tokens k at an optimizer step under the progressive schedule.

    0 before `ar_steps` (pure left to right); then k grows linearly from 1 to `rho`, reached at
    `ramp_end`, and stays at `rho`.
    """
    if step < ar_steps:
        return 0
    if ramp_end <= ar_steps or rho <= 1:
        return rho
    frac = min(1.0, (step - ar_steps) / (ramp_end - ar_steps))
    return min(rho, 1 + int(math.floor(frac * (rho - 1))))


def progressive_order(
    batch_size: int,
    seq_len: int,
    *,
    step: int,
    ar_steps: int,
    rho: int,
    ramp_end: int,
    reading: str = "scatter",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left to right with k(step) shuffled tokens, one token per block.

    Two readings of "k shuffled tokens" (the paper leaves it open):
    - `scatter`: pick k random positions and permute their slots among themselves; every other
      position keeps its left-to-right place.
    - `window`: shuffle inside consecutive windows of k positions.
    """
    k = min(shuffled_count(step, ar_steps=ar_steps, rho=rho, ramp_end=ramp_end), seq_len)
    order, block = l2r_order(batch_size, seq_len)
    if k <= 1:
        return order, block
    if reading == "scatter":
        for b in range(batch_size):
            slots = permutation(seq_len, generator, "cpu")[:k].sort().values
            order[b, slots] = slots[permutation(k, generator, "cpu")]
    elif reading == "window":
        for b in range(batch_size):
            for start in range(0, seq_len, k):
                width = min(k, seq_len - start)
                order[b, start : start + width] = start + permutation(width, generator, "cpu")
    else:
        raise ValueError(f"progressive reading '{reading}' is not one of 'scatter', 'window'")
    return order, block


def sbp_order(batch_size: int, seq_len: int, *, streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Strided block-parallel order with S streams.

    Positions split into S contiguous streams of length N/S. The order visits the S stream heads one
    at a time (single-token blocks), then position j of every stream together (blocks of S tokens).
    N=8, S=2: order [0,4 | 1,5 | 2,6 | 3,7], blocks [0,1,2,2,3,3,4,4].
    """
    order, block = sbp_pattern(seq_len, streams)
    return order.expand(batch_size, seq_len).clone(), block.expand(batch_size, seq_len).clone()


def sbp_pattern(length: int, streams: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of the SBP order over positions offset..offset+length-1 (used by decoding too)."""
    if streams < 1 or length % streams:
        raise ValueError(f"sbp needs streams >= 1 dividing the length; got streams={streams}, length={length}")
    stride = length // streams
    # order[j * S + s] = s * stride + j: interleave the streams position by position
    j = torch.arange(stride).repeat_interleave(streams)
    s = torch.arange(streams).repeat(stride)
    order = offset + s * stride + j
    block = torch.where(j == 0, s, streams - 1 + j)
    return order, block


def masking_times(
    batch_size: int, seq_len: int, *, steps: int, schedule: str = "loglinear", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Discrete step tau in 1..T at which each token is masked by the forward process.

    A token is masked by continuous time t with probability 1 - alpha(t). Drawing u ~ U(0,1) and
    inverting gives its masking time; tau = ceil(t * T).
    - loglinear (MDLM): alpha(t) = 1 - t, so t = u.
    - cosine: alpha(t) = cos(pi t / 2), so t = (2 / pi) * arccos(1 - u).
    """
    u = uniform(batch_size, seq_len, generator=generator, device="cpu", dtype=torch.float64)
    if schedule == "loglinear":
        t = u
    elif schedule == "cosine":
        t = (2.0 / math.pi) * torch.arccos(1.0 - u)
    else:
        raise ValueError(f"diffusion schedule '{schedule}' is not one of 'loglinear', 'cosine'")
    return torch.ceil(t * steps).clamp(1, steps).long()


def diffusion_order(
    batch_size: int,
    seq_len: int,
    *,
    steps: int,
    schedule: str = "loglinear",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order from one forward masking trajectory with T steps.

    Tokens masked last are revealed first, so the order sorts by descending masking step (random among
    ties) and one block is one denoising step. Empty steps are skipped so block ids are consecutive.
    """
    if steps < 1:
        raise ValueError(f"diffusion order needs steps >= 1, got {steps}")
    tau = masking_times(batch_size, seq_len, steps=steps, schedule=schedule, generator=generator)
    tie_break = uniform(batch_size, seq_len, generator=generator, device="cpu", dtype=torch.float64)
    # Sort key: larger tau first; ties broken uniformly at random.
    order = torch.argsort(-(tau.double()) + tie_break * 0.5, dim=1)
    sorted_tau = torch.gather(tau, 1, order)
    new_block = torch.ones_like(sorted_tau)
    new_block[:, 0] = 0
    new_block[:, 1:] = (sorted_tau[:, 1:] != sorted_tau[:, :-1]).long()
    block = torch.cumsum(new_block, dim=1)
    return order, block


def validate_order(order: torch.Tensor, block: torch.Tensor, seq_len: int | None = None) -> None:
    """Raise ValueError unless (order, block) is a permutation with non-decreasing blocks from 0."""
    if order.shape != block.shape or order.dim() != 2:
        raise ValueError(f"order {tuple(order.shape)} and block {tuple(block.shape)} must both be [batch, seq_len]")
    n = order.shape[1] if seq_len is None else seq_len
    if not torch.equal(order.sort(dim=1).values, torch.arange(n, device=order.device).expand_as(order)):
        raise ValueError("order must be a permutation of 0..seq_len-1 in every row")
    if (block[:, 0] != 0).any() or (block[:, 1:] < block[:, :-1]).any():
        raise ValueError("block must start at 0 and be non-decreasing along each row")


# -- orders that score a likelihood (`armd eval ppl` and validation during training) ------------------
#
# One home for what a likelihood kind draws and what its number is, so `armd eval ppl` (eval/likelihood.py)
# and validation during training (train/validation.py) label the same computation the same way:
# - l2r: the left-to-right factorization, an exact likelihood;
# - random: a uniform permutation with one token per block, an exact likelihood of that order's model;
# - diffusion(T): a T-step forward masking trajectory, whose token NLLs sum to an unbiased estimate of the
#   discrete-time ELBO (an upper bound on the NLL; derivation in eval/likelihood.py).

LIKELIHOOD_KINDS = ("l2r", "random", "diffusion")
LIKELIHOOD_SCHEDULES = ("loglinear", "cosine")


def likelihood_label(kind: str) -> str:
    """'exact' or 'elbo': what a likelihood kind's number is (the `likelihood` field of `armd eval ppl`)."""
    if kind not in LIKELIHOOD_KINDS:
        raise ValueError(f"likelihood kind '{kind}' is not one of {', '.join(LIKELIHOOD_KINDS)}")
    return "elbo" if kind == "diffusion" else "exact"


def likelihood_order(
    kind: str,
    seq_len: int,
    *,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    schedule: str = "loglinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (order [N], block [N]) a likelihood kind scores, drawn from `generator` (l2r draws nothing)."""
    if kind not in LIKELIHOOD_KINDS:
        raise ValueError(f"likelihood kind '{kind}' is not one of {', '.join(LIKELIHOOD_KINDS)}")
    if kind == "l2r":
        order, block = l2r_order(1, seq_len)
    elif kind == "random":
        order, block = random_order(1, seq_len, generator=generator)
    else:
        if steps is None or steps < 1:
            raise ValueError(f"diffusion needs steps >= 1, got {steps}")
        order, block = diffusion_order(1, seq_len, steps=steps, schedule=schedule, generator=generator)
    return order[0], block[0]


def draw_orders(
    kind: str, count: int, seq_len: int, *, seed: int = 0, steps: int | None = None, schedule: str = "loglinear"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The K orders (random) or trajectories (diffusion) an evaluation shares over all windows; l2r has
    exactly one. Deterministic in `seed`, so two evaluations with the same seed score the same orders."""
    likelihood_label(kind)  # refuses an unknown kind before anything else
    if kind == "l2r":
        return [likelihood_order(kind, seq_len)]
    if count < 1:
        raise ValueError(f"need at least one order/trajectory, got {count}")
    gen = seeded(seed)
    return [likelihood_order(kind, seq_len, generator=gen, steps=steps, schedule=schedule) for _ in range(count)]
