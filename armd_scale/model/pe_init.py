"""The PE table's starting point: which prefix kernel <PE_n, PE_i> the query stream begins with.

The paper defines G0 = s + sum over strictly earlier blocks of <PE_n, PE_i> X0[i] with a learned table
PE and says nothing about how the table starts. The strict mask never uses the diagonal <PE_n, PE_n>,
so a table can weight the previous position far above every other one: the N x N Gram matrix with
2 on the diagonal, 1 on the first off-diagonals and 0 elsewhere is positive definite (eigenvalues
2 + 2 cos(k pi / (N + 1)) > 0), and a factor of it is a table with <PE_n, PE_{n-1}> = 1 and
<PE_n, PE_i> = 0 for every i < n - 1, exactly AR's input shift under the left-to-right order. With
d_pe < N only a rank-d_pe approximation fits; `shift_table` takes the best one (top eigenvectors).

Either start keeps the contract: the table is a function of positions only (permutation equivariance)
and the prefix sum keeps its O(1)-state recurrence in decoding; training is free to reshape it.
"""

from __future__ import annotations

import math

import torch


def recency_table(max_len: int, d_pe: int, tau: float) -> torch.Tensor:
    """tau > 0: deterministic Fourier features of the exponential kernel exp(-|n - i| / tau), so that
    G0 starts as a decaying average of the nearest earlier tokens (frequencies are quantiles of the
    kernel's Cauchy spectral density; cos/sin pairs make the product a function of n - i only).
    tau = 0: i.i.d. normal with std d_pe^-1/4, so <PE_n, PE_i> has unit variance for n != i."""
    if tau <= 0:
        return torch.randn(max_len, d_pe) * d_pe**-0.25
    pairs = d_pe // 2
    quantiles = (torch.arange(pairs, dtype=torch.float64) + 0.5) / pairs
    omega = torch.tan(math.pi * quantiles / 2) / tau
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * omega[None, :]
    table = torch.cat([angles.cos(), angles.sin()], dim=1) / math.sqrt(pairs)
    if d_pe % 2:  # odd width: a constant feature keeps the kernel a function of n - i
        table = torch.cat([table, torch.zeros(max_len, 1, dtype=torch.float64)], dim=1)
    return table.float()


# The free diagonal of the shift target. 2 is the least that keeps the whole N x N target positive
# semi-definite, and among 0, 1, 2 it gives the sharpest rank-64 start at N = 128 (previous position
# weighted 1.0-1.35, every other earlier one at most 0.34; tests/model/test_pe_init.py).
SHIFT_DIAGONAL = 2.0


def shift_table(max_len: int, d_pe: int) -> torch.Tensor:
    """The rank-d_pe factor closest (in Frobenius norm) to the Gram target SHIFT_DIAGONAL on the
    diagonal, 1 at |n - i| = 1, 0 elsewhere: its top d_pe eigenvectors scaled by sqrt(eigenvalue).

    Sharp while d_pe >= max_len / 2 (the kept eigenvalues are then all the large ones); at d_pe = 32,
    N = 128 the previous position is no longer above the others (tests/model/test_pe_init.py)."""
    device = torch.empty(0).device
    if device.type == "meta":  # the dry run needs shapes only
        return torch.empty(max_len, d_pe)
    idx = torch.arange(max_len, dtype=torch.float64, device="cpu")
    distance = (idx[:, None] - idx[None, :]).abs()
    target = (distance == 1).double() + SHIFT_DIAGONAL * (distance == 0).double()
    values, vectors = torch.linalg.eigh(target)  # ascending
    keep = min(d_pe, max_len)
    values, vectors = values.flip(0)[:keep].clamp(min=0), vectors.flip(1)[:, :keep]
    table = torch.zeros(max_len, d_pe, dtype=torch.float64)
    table[:, :keep] = vectors * values.sqrt()
    # eigh's eigenvector signs are arbitrary; fix them so the table is one deterministic function of the shape
    signs = torch.sign(table[:1].sum(0, keepdim=True) + 1e-30)
    return (table * signs).float().to(device)


def initial_pos_table(max_len: int, d_pe: int, kind: str, tau: float) -> torch.Tensor:
    """The table the model starts with (model.pe_init, model.pe_init_tau)."""
    if kind == "shift":
        return shift_table(max_len, d_pe)
    if kind == "recency":
        return recency_table(max_len, d_pe, tau)
    raise ValueError(f"model.pe_init='{kind}' is not one of 'recency', 'shift'")
