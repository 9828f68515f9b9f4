"""Likelihoods of held-out data (docs/EVALUATION.md), each labelled exact or bound.

Every number here is a sum of per-token NLLs under some `(order, block)` pair, scored with one
full forward pass per window and order (the model contract: `logits[b, k]` predicts the token at
`order[b, k]` from the blocks before its own):

- `l2r`: the left-to-right factorization. An **exact** log-likelihood of the window.
- `random`: K uniformly random permutations, one token per block. Each permutation sigma_k is a
  complete factorization p(x) = prod_k p(x_sigma(k) | x_sigma(<k)), so each per-order number is an
  **exact** likelihood of that order's model; we report their mean and spread (sample std, min,
  max). Order k is one permutation shared by every window, so the spread is the spread between
  orders, not noise between windows.
- `diffusion(T)`: the discrete-time masked-diffusion **ELBO** with T steps (an upper bound on the
  NLL of the diffusion(T) sampler), estimated with K Monte-Carlo trajectories.

Why the diffusion ELBO is a plain sum of token NLLs. Absorbing diffusion with T steps and schedule
alpha_t (alpha_0 = 1, alpha_T = 0) masks each token independently at a step tau in 1..T with
P(tau = t) = alpha_{t-1} - alpha_t (1/T for the log-linear alpha_t = 1 - t/T). The discrete-time bound
is

    -log p(x) <= sum_t E_{x_t} [ w_t * sum_{n masked in x_t} -log p(x_n | x_t) ],
    w_t = (alpha_{t-1} - alpha_t) / (1 - alpha_t)   (= 1/t for log-linear),

because the true reverse step unmasks each masked token with probability w_t, independently, and a
token that stays masked costs nothing. Given x_t (the tokens with tau > t), a token masked at t has
tau = t with probability exactly w_t. So drawing a whole trajectory tau and summing
-log p(x_n | tokens with tau > tau_n) over all n is an unbiased estimate of the same bound: the
weight is realised by the draw instead of multiplied in. `diffusion_order(steps=T)` is that draw
(blocks are the non-empty steps, revealed from tau = T down to 1), so the estimate is simply the sum
of token NLLs under its blocks, with weight 1 per token. The ARMD model may also see which positions
share a block (positions, never contents); the bound still holds for the sampler that reveals those
positions on the forward process's schedule, which is exactly how `order_plan` samples it.
With T >> N^2 every block holds one token and the trajectory is a uniform random order, so
diffusion(T) tends to the random-order mean; smaller T groups tokens into blocks that are sampled
independently and the bound grows. tests/eval/test_diffusion_elbo.py checks both forms numerically.

Bits per byte: total NLL in bits over the UTF-8 bytes of the decoded windows (text checkpoints only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

# The kinds, their orders and their exact/elbo labels live with the orders (one home, shared with
# validation during training); re-exported here for the eval API.
from ..model.generation_orders import LIKELIHOOD_KINDS as LIKELIHOOD_KINDS
from ..model.generation_orders import LIKELIHOOD_SCHEDULES as SCHEDULES
from ..model.generation_orders import draw_orders as draw_orders
from ..model.generation_orders import likelihood_label
from .text import bits_per_byte

Order = tuple[torch.Tensor, torch.Tensor]  # (order [N], block [N])


@torch.no_grad()
def position_nll(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    order: torch.Tensor,
    block: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """-log p(token) of every token of rows [B, N] under one (order [N], block [N]): float64 [B, N] in
    generation order (entry k is the token at position order[k]), on the tokens' device.

    The log-softmax runs in `dtype` (the model's own dtype should match: load it in float64 for
    float64 scores); the result is float64 so callers can sum without losing precision.
    """
    b, n = tokens.shape
    order = order.to(tokens.device).expand(b, n)
    block = block.to(tokens.device).expand(b, n)
    logits = model(tokens, order, block)
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    targets = torch.gather(tokens, 1, order)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()


def window_nll(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    order: torch.Tensor,
    block: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """-log p(window) in nats per row of tokens [B, N] under one (order [N], block [N]): float64 [B],
    on the tokens' device (callers sum on the device and read the total once, not once per batch)."""
    return position_nll(model, tokens, order, block, dtype).sum(dim=1)


@dataclass
class LikelihoodResult:
    kind: str
    tokens: int
    windows: int
    seq_len: int
    order_nll: list[float]  # total nats over all windows, per order / trajectory
    num_bytes: int | None = None
    steps: int | None = None
    schedule: str | None = None

    @property
    def likelihood(self) -> str:
        return likelihood_label(self.kind)

    @property
    def per_order(self) -> np.ndarray:
        """NLL per token of each order / trajectory."""
        return np.asarray(self.order_nll) / self.tokens

    @property
    def nll_per_token(self) -> float:
        return float(self.per_order.mean())

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_per_token)

    @property
    def bits_per_byte(self) -> float | None:
        return bits_per_byte(self.nll_per_token * self.tokens, self.num_bytes)

    def to_json(self) -> dict[str, Any]:
        """The `armd eval ppl` JSON fields that depend only on the scores (see eval/schema.py)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "likelihood": self.likelihood,
            "tokens": self.tokens,
            "windows": self.windows,
            "seq_len": self.seq_len,
            "nll_per_token": self.nll_per_token,
            "ppl": self.ppl,
            "bits_per_byte": self.bits_per_byte,
            "bytes": self.num_bytes,
        }
        if self.kind != "l2r":
            per = self.per_order
            out.update(
                nll_std=float(per.std(ddof=1)) if len(per) > 1 else 0.0,
                nll_min=float(per.min()),
                nll_max=float(per.max()),
                nll_per_order=per.tolist(),
            )
            out["orders" if self.kind == "random" else "trajectories"] = len(per)
        if self.kind == "diffusion":
            out.update(steps=self.steps, schedule=self.schedule)
        return out


def score_orders(
    model: torch.nn.Module,
    batches: Iterable[np.ndarray],
    orders: list[Order],
    *,
    dtype: torch.dtype = torch.float32,
    byte_table: np.ndarray | None = None,
    total_windows: int | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> tuple[np.ndarray, int, int, int | None]:
    """Total NLL (nats) of all windows under each order: ([K] float64, windows, tokens, bytes or None)."""
    device = next(model.parameters()).device
    # Summed on the device, read once at the end: no host sync per batch and order.
    totals = torch.zeros(len(orders), dtype=torch.float64, device=device)
    windows = tokens = 0
    num_bytes = None if byte_table is None else 0
    total = None if total_windows is None else total_windows * len(orders)
    with tqdm(total=total, desc=desc, unit="window", disable=not progress) as bar:
        for rows in batches:
            x = torch.as_tensor(rows, dtype=torch.long, device=device)
            for k, (order, block) in enumerate(orders):
                totals[k] += window_nll(model, x, order, block, dtype).sum()
                bar.update(len(rows))
            windows += x.shape[0]
            tokens += x.numel()
            if byte_table is not None and num_bytes is not None:
                num_bytes += int(byte_table[rows].sum())
    if windows == 0:
        raise ValueError("no windows to evaluate")
    return totals.cpu().numpy(), windows, tokens, num_bytes


def evaluate_likelihood(
    model: torch.nn.Module,
    batches: Iterable[np.ndarray],
    *,
    kind: str,
    seq_len: int,
    orders: int = 1,
    steps: int | None = None,
    schedule: str = "loglinear",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    byte_table: np.ndarray | None = None,
    total_windows: int | None = None,
    progress: bool = True,
) -> LikelihoodResult:
    """l2r NLL, random-order NLL over `orders` permutations, or diffusion(steps) ELBO over `orders` trajectories."""
    if kind == "diffusion" and not getattr(model, "multi_token_blocks", True):  # a judge may be any module
        raise ValueError(
            "arch 'ar' predicts one token at a time; the diffusion ELBO needs multi-token blocks (arch armd)"
        )
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule '{schedule}' is not one of {', '.join(SCHEDULES)}")
    drawn = draw_orders(kind, orders, seq_len, seed=seed, steps=steps, schedule=schedule)
    desc = kind if kind == "l2r" else f"{kind} x{len(drawn)}"
    totals, windows, tokens, num_bytes = score_orders(
        model,
        batches,
        drawn,
        dtype=dtype,
        byte_table=byte_table,
        total_windows=total_windows,
        progress=progress,
        desc=f"eval {desc}",
    )
    return LikelihoodResult(
        kind=kind,
        tokens=tokens,
        windows=windows,
        seq_len=seq_len,
        order_nll=totals.tolist(),
        num_bytes=num_bytes,
        steps=steps if kind == "diffusion" else None,
        schedule=schedule if kind == "diffusion" else None,
    )
