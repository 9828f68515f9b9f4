"""The diffusion(T) ELBO estimator, checked against the textbook discrete-time bound.

For a denoiser that sees only the unmasked tokens (a masked diffusion model), the discrete-time
bound with T steps is

    L_T = sum_t E_{M ~ q_t} [ w_t * sum_{n in M} -log p(x_n | x outside M) ],
    q_t: each token masked independently with probability 1 - alpha_t,
    w_t = (alpha_{t-1} - alpha_t) / (1 - alpha_t)          (1/t for alpha_t = 1 - t/T).

armd_scale.eval.likelihood estimates it by drawing a whole trajectory (the step tau_n at which each
token is masked) and summing -log p(x_n | tokens with tau > tau_n) with weight 1. The first test
computes both forms exactly by enumeration for a random toy denoiser; the second checks that the
trajectories the library draws (`draw_orders("diffusion")`) have the law that makes its Monte-Carlo
mean converge to L_T.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from armd_scale.eval.likelihood import draw_orders

N, V = 3, 3
X = (2, 0, 1)


def alpha(t: int, steps: int, schedule: str) -> float:
    if schedule == "loglinear":
        return 1.0 - t / steps
    return math.cos(math.pi / 2 * t / steps)


class ToyDenoiser:
    """log p(x_n = v | visible tokens) = log_softmax(a[n] + sum_{m visible} b[n, m, x_m])[v]."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.normal(size=(N, V))
        self.b = rng.normal(size=(N, N, V, V))

    def nll(self, n: int, visible: set[int]) -> float:
        logits = self.a[n] + sum(self.b[n, m, X[m]] for m in visible)
        return float(-(logits[X[n]] - np.log(np.exp(logits).sum())))


def weighted_bound(model: ToyDenoiser, steps: int, schedule: str) -> float:
    total = 0.0
    for t in range(1, steps + 1):
        masked_p = 1.0 - alpha(t, steps, schedule)
        w = (alpha(t - 1, steps, schedule) - alpha(t, steps, schedule)) / masked_p
        for mask in itertools.product([0, 1], repeat=N):
            p = math.prod(masked_p if m else 1.0 - masked_p for m in mask)
            visible = {i for i in range(N) if not mask[i]}
            total += p * w * sum(model.nll(n, visible) for n in range(N) if mask[n])
    return total


def trajectory_expectation(model: ToyDenoiser, steps: int, schedule: str) -> float:
    step_p = [alpha(t - 1, steps, schedule) - alpha(t, steps, schedule) for t in range(1, steps + 1)]
    total = 0.0
    for tau in itertools.product(range(1, steps + 1), repeat=N):
        p = math.prod(step_p[t - 1] for t in tau)
        total += p * sum(model.nll(n, {m for m in range(N) if tau[m] > tau[n]}) for n in range(N))
    return total


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_trajectory_sum_equals_the_weighted_bound(steps, schedule):
    model = ToyDenoiser(seed=steps)
    exact = weighted_bound(model, steps, schedule)
    assert trajectory_expectation(model, steps, schedule) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_library_trajectories_estimate_the_bound(schedule):
    """Monte-Carlo mean over the library's trajectories, scored block by block, within 4 standard errors."""
    steps, k = 4, 4000
    model = ToyDenoiser(seed=7)
    values = []
    for order, block in draw_orders("diffusion", k, N, seed=1, steps=steps, schedule=schedule):
        order, block = order.tolist(), block.tolist()
        values.append(sum(model.nll(order[i], {order[j] for j in range(N) if block[j] < block[i]}) for i in range(N)))
    values = np.asarray(values)
    exact = weighted_bound(model, steps, schedule)
    assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / math.sqrt(k)
