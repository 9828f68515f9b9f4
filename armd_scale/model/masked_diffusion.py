"""Masked (absorbing-state) diffusion math for the `mdlm` baseline, independent of any network.

Everything here takes a *denoiser*: a callable from noisy tokens [B, N] (the mask id at masked
positions) to logits [B, N, V] over the real vocabulary. The trainer passes the DeepSpeed engine
(so ZeRO-3 gathers weights), tests pass the bare model, and the math never knows the difference.

Forward process, log-linear schedule (MDLM, Sahoo et al. 2024): at time s in [0, 1] each token is
masked independently with probability 1 - alpha(s) = s. With SUBS parameterisation (no mask token
is ever predicted; unmasked tokens are carried over unchanged) the bounds are:

- continuous time:   NELBO(x) = E_{s ~ U(0,1)} E_{z_s} [ (1/s) * sum_{j masked in z_s} -log p(x_j | z_s) ]
- T discrete steps:  NELBO_T(x) = sum_{t=1..T} (1/t) * E_{z_t} [ sum_{j masked in z_t} -log p(x_j | z_t) ]
  where z_t masks each token with probability t/T, and 1/t = (alpha_{t-1} - alpha_t) / (1 - alpha_t).

Both are upper bounds on -log p(x) (NELBO_T >= NELBO >= NLL; T=1 is the product of the
all-masked marginals). The single-draw estimator `(1/s) * masked NLL` is unbiased for both: for
NELBO_T draw s on the grid {1/T, ..., 1} instead of the interval, since T * (1/t) = 1/(t/T).

Where the continuous-time weight comes from: MDLM's bound is int_0^1 (alpha'(s) / (1 - alpha(s)))
E_{z_s}[ sum_{j masked} log p(x_j | z_s) ] ds, and with alpha(s) = 1 - s the weight is
-alpha'/(1 - alpha) = 1/s. Training draws s ~ U(EPS, 1) (MDLM's `sampling_eps`): near s = 0 a draw
masks about one token and weighs it by 1/s, so without the floor the variance of `(1/s) * masked NLL`
is infinite (it grows like log(1/eps)). The floor moves its expectation to (1/(1-eps)) int_eps^1 g(s) ds,
g(s) = (1/s) E_{z_s}[masked NLL], O(eps) away from the bound int_0^1 g, on either side of it. MDLM's
code does the same with t ~ U(eps, 1), weight 1/t and mask rate (1-eps) t (`diffusion.py:_sample_t`,
`noise_schedule.py:LogLinearNoise`).

Evaluation (`continuous_nelbo`) needs no floor. The denoiser does not see s (SUBS, no time input), so
given the mask M of a draw the loss S(M) does not depend on s, and 1/s can be replaced by its
conditional mean given M (Rao-Blackwell): with s ~ U(0, 1) and each of N tokens masked with
probability s, s given k = |M| masked tokens is Beta(k+1, N-k+1), so E[1/s | M] = (N+1)/k. The draw
(N+1)/k * S(M) (0 when k = 0) has exactly the expectation int_0^1 g (= `exact_nelbo(steps=0)`) and a
finite variance: it is at most (N+1) * max_j -log p(x_j | z). Where k is large it is close to the 1/s
draw (k/(N+1) is near s); the two differ where few tokens are masked, which is where 1/s blows up.

The reverse process (MDLM's ancestral sampler) is decoding and lives with the other samplers in
`generate/mdlm.py`.

Nothing here draws from a global RNG: every function takes its uniforms or a generator, so the
trainer can make noise a pure function of (seed, step, sample index). Draws follow the package's
rule (armd_scale/rng.py): made on the generator's device, then moved to the tokens' device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..rng import seeded, to_device, uniform

Denoiser = Callable[[torch.Tensor], torch.Tensor]

# Smallest continuous mask rate: the weight 1/s is bounded by 1/EPS (MDLM's sampling_eps).
EPS = 1e-3
# Golden-ratio increment of the low-discrepancy (Kronecker) sequence used for per-sample rates.
_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def rates_from_uniform(v: torch.Tensor, steps: int, eps: float = EPS) -> torch.Tensor:
    """Mask rates s from uniforms v in [0, 1): continuous (steps=0, s in [eps, 1]) or the T-step grid."""
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0 (0 = continuous time)")
    v = v.double()
    if steps == 0:
        return eps + (1.0 - eps) * v
    return (torch.floor(v * steps).clamp(max=steps - 1) + 1.0) / steps


def stratified_rates(batch: int, steps: int, generator: torch.Generator | None, eps: float = EPS) -> torch.Tensor:
    """Antithetic rates for a batch: v_i = (u + i / batch) mod 1 with one shared u (MDLM's low-discrepancy
    sampler). Every v_i is still uniform, so the estimator stays unbiased, and one batch covers [0, 1)
    evenly, which cuts the variance the 1/s weight otherwise brings."""
    u = uniform(generator=generator, device="cpu", dtype=torch.float64)
    v = torch.remainder(u + torch.arange(batch, dtype=torch.float64) / batch, 1.0)
    return rates_from_uniform(v, steps, eps)


def kronecker_rate(index: int, offset: float, steps: int, eps: float = EPS) -> torch.Tensor:
    """Rate of sample `index` in a low-discrepancy sequence v_i = (offset + i * phi) mod 1: a function of
    the index alone, so validation noise does not depend on how samples are batched or sharded."""
    v = torch.tensor(math.fmod(offset + index * _PHI, 1.0), dtype=torch.float64)
    return rates_from_uniform(v, steps, eps)


def corrupt(
    tokens: torch.Tensor, rates: torch.Tensor, uniforms: torch.Tensor, mask_id: int, first: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_s: token j of row b is masked iff uniforms[b, j] < rates[b] and j >= first (positions before
    `first` are context: never masked). Returns (noisy tokens, masked)."""
    masked = uniforms.to(tokens.device) < rates.to(tokens.device, torch.float64)[:, None]
    if first:
        masked[:, :first] = False
    return tokens.masked_fill(masked, mask_id), masked


def masked_nll(logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """-log p(x_j | z) at masked positions, 0 elsewhere, [B, N] in fp32 (fp64 for fp64 logits)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view_as(tokens)
    return nll * masked


def nelbo_estimate(
    denoise: Denoiser, tokens: torch.Tensor, rates: torch.Tensor, uniforms: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """One-draw unbiased estimate of the negative ELBO of each sequence, [B] in nats (summed over tokens).

    rates from `rates_from_uniform(v, 0)` estimate the continuous-time bound (the training loss);
    rates on the T-step grid estimate NELBO_T.
    """
    noisy, masked = corrupt(tokens, rates, uniforms, mask_id)
    nll = masked_nll(denoise(noisy), tokens, masked).sum(dim=1)
    return nll / rates.to(tokens.device, nll.dtype)


def sequence_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sequence `index` of an evaluation: a function of (seed, index) alone, so a
    sequence gets the same noise however the sequences are batched."""
    return seeded((seed * 1_000_003 + index) % 2**63)


def continuous_draws(seed: int, indices: Iterable[int], samples: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise of `continuous_nelbo` for the sequences `indices` (positions in the evaluation, not in a
    batch): mask rates [B, K] in [0, 1) and mask uniforms [B, K, N], float64 on the CPU, K = `samples`.

    Sequence i draws from `sequence_generator(seed, i)`: first one uniform u, from which its K rates are
    stratified (`stratified_rates` with no floor: s_k = (u + k/K) mod 1), then K rows of N mask
    uniforms. Each s_k alone is uniform on [0, 1) (a shift mod 1 of a uniform), so each draw is the
    one-draw estimator and their mean is unbiased; the K rates cover [0, 1) evenly, one per stratum.
    """
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1 (draws of the time per sequence)")
    rates, uniforms = [], []
    for index in indices:
        gen = sequence_generator(seed, index)
        rates.append(stratified_rates(samples, 0, gen, eps=0.0))
        uniforms.append(uniform(samples, length, generator=gen, dtype=torch.float64))
    if not rates:
        raise ValueError("continuous_draws needs at least one sequence index")
    return torch.stack(rates), torch.stack(uniforms)


def continuous_nelbo(
    denoise: Denoiser,
    tokens: torch.Tensor,
    rates: torch.Tensor,
    uniforms: torch.Tensor,
    mask_id: int,
    first: int = 0,
) -> torch.Tensor:
    """Continuous-time NELBO per sequence, [B] nats, float64: the mean over K draws of
    (N+1)/k * sum_{j masked} -log p(x_j | z), k the number of masked tokens (the Rao-Blackwellized
    one-draw estimator, module docstring), for rates [B, K] and uniforms [B, K, L] from
    `continuous_draws` (or injected). Unbiased for int_0^1 g with s ~ U(0, 1). K forward calls.

    Positions before `first` are never masked and never scored (context only, as `discrete_nelbo`):
    the bound of tokens[:, first:] given tokens[:, :first], so N = L - first maskable positions."""
    b, n = tokens.shape
    if not 0 <= first < n:
        raise ValueError(f"continuous_nelbo needs 0 <= first < {n}, got {first}")
    maskable = n - first
    if rates.dim() != 2 or rates.shape[0] != b or uniforms.shape != (b, rates.shape[1], n):
        raise ValueError(
            f"rates must be [B, K] and uniforms [B, K, N] for tokens {tuple(tokens.shape)}, "
            f"got {tuple(rates.shape)} and {tuple(uniforms.shape)}"
        )
    total = torch.zeros(b, dtype=torch.float64, device=tokens.device)
    for k in range(rates.shape[1]):
        noisy, masked = corrupt(tokens, rates[:, k], uniforms[:, k], mask_id, first)
        loss = masked_nll(denoise(noisy), tokens, masked).sum(dim=1).double()
        count = masked.sum(dim=1)
        total += torch.where(count > 0, loss * (maskable + 1) / count.clamp(min=1), 0.0)
    return total / rates.shape[1]


def discrete_nelbo(
    denoise: Denoiser,
    tokens: torch.Tensor,
    steps: int,
    mask_id: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    first: int = 0,
) -> torch.Tensor:
    """NELBO_T estimated with every step's term (one z_t per step): T forward calls, lower variance than
    `nelbo_estimate`. [B] nats per sequence. Positions before `first` are never masked and never
    scored (context only: the bound of tokens[:, first:] given tokens[:, :first]); the masks are drawn
    for every position all the same, so `first` changes no other position's draw.

    `generator`: one for the batch (each step draws a [B, N] block of uniforms from it), or one per
    sequence (each step draws sequence b's N uniforms from generator b: an evaluation passes
    `sequence_generator(seed, i)` for sequence i, so a sequence's noise does not depend on the batching)."""
    if isinstance(generator, Sequence) and len(generator) != tokens.shape[0]:
        raise ValueError(f"discrete_nelbo got {len(generator)} generators for {tokens.shape[0]} sequences")
    if steps < 1:
        raise ValueError(f"discrete_nelbo needs steps >= 1, got {steps}")
    if not 0 <= first < tokens.shape[1]:
        raise ValueError(f"discrete_nelbo needs 0 <= first < {tokens.shape[1]}, got {first}")
    total = torch.zeros(tokens.shape[0], dtype=torch.float64, device=tokens.device)
    for t in range(1, steps + 1):
        rates = torch.full((tokens.shape[0],), t / steps, dtype=torch.float64)
        if isinstance(generator, Sequence):
            draws = [uniform(tokens.shape[1], generator=g, dtype=torch.float64) for g in generator]
            uniforms = to_device(torch.stack(draws), tokens.device)
        else:
            uniforms = uniform(*tokens.shape, generator=generator, device=tokens.device, dtype=torch.float64)
        noisy, masked = corrupt(tokens, rates, uniforms, mask_id, first)
        total += masked_nll(denoise(noisy), tokens, masked).sum(dim=1) / t
    return total


def exact_nelbo(denoise: Denoiser, tokens: torch.Tensor, steps: int, mask_id: int) -> torch.Tensor:
    """The bound computed exactly by enumerating all 2^N masks (N <= 12): the reference that the
    estimators and the bound tests are checked against. [B] nats per sequence, float64.

    A mask M of k tokens has probability s^k (1-s)^(N-k) at rate s, and its loss S(M) = sum_{j in M}
    -log p(x_j | x with M masked) does not depend on s, so NELBO = sum_M S(M) * c_k with
    c_k = sum_{t=1..T} (1/t) (t/T)^k (1 - t/T)^(N-k) for T steps, and for continuous time (steps=0)
    c_k = int_0^1 s^(k-1) (1-s)^(N-k) ds = (k-1)! (N-k)! / N! (the any-order autoregressive average).
    """
    b, n = tokens.shape
    if n > 12 or steps < 0:
        raise ValueError(f"exact_nelbo enumerates 2^N masks: needs N <= 12 and steps >= 0, got N={n}, steps={steps}")
    masks = torch.tensor(list(itertools.product([False, True], repeat=n)), device=tokens.device)[1:]  # [2^N - 1, N]
    coef = torch.zeros(n + 1, dtype=torch.float64)
    for k in range(1, n + 1):
        if steps == 0:
            coef[k] = math.factorial(k - 1) * math.factorial(n - k) / math.factorial(n)
        else:
            coef[k] = sum((t / steps) ** k * (1 - t / steps) ** (n - k) / t for t in range(1, steps + 1))
    weights = coef[masks.sum(dim=1).cpu()]
    x = tokens[:, None, :].expand(b, len(masks), n).reshape(-1, n)  # every (sequence, mask) pair in one call
    all_masks = masks.repeat(b, 1)
    loss = masked_nll(denoise(x.masked_fill(all_masks, mask_id)).double(), x, all_masks).sum(dim=1).cpu()
    return (loss.view(b, len(masks)) * weights).sum(dim=1)
