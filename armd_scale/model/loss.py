"""Training loss for any order: every conditional of every block, scored in one forward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def targets_in_generation_order(tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, order)


def token_nll(logits: torch.Tensor, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """-log p(token) per generated token, [B, N], computed in fp32 whatever the logits' dtype."""
    targets = targets_in_generation_order(tokens, order)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view_as(targets)


def order_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    order: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    global_token_count: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of (weighted) token NLLs divided by a token count.

    With `global_token_count=None` the denominator is this batch's token count (a per-batch mean).
    Data-parallel training passes the number of tokens in the *global* batch so that summing the
    per-rank losses gives the mean over every token of the step, whatever each rank holds.
    """
    nll = token_nll(logits, tokens, order)
    if weights is not None:
        nll = nll * weights
    count = nll.numel() if global_token_count is None else global_token_count
    return nll.sum() / count
