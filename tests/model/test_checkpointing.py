"""Activation checkpointing (`parallel.activation_checkpointing`): the same loss and gradients, fewer
tensors kept for the backward pass. The training-run check is in tests/train/test_training.py."""

from __future__ import annotations

import pytest
import torch

from armd_scale.model import order_loss

from .conftest import draw_order, tiny_model


def _loss_grads_and_saved(arch: str, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    model = tiny_model(arch).train()
    model.activation_checkpointing = checkpointing
    kind, params = ("sbp", dict(streams=2)) if arch == "armd" else ("l2r", {})
    order, block = draw_order(kind, params, None, batch=2, n=12, seed=3)
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(4))
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if arch == "mdlm":
            loss = model.loss(tokens, generator=torch.Generator().manual_seed(5))
        else:
            loss = order_loss(model(tokens, order, block), tokens, order)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved


@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_checkpointing_keeps_loss_and_gradients_and_saves_less(arch):
    loss_off, grads_off, saved_off = _loss_grads_and_saved(arch, False)
    loss_on, grads_on, saved_on = _loss_grads_and_saved(arch, True)
    assert loss_on == loss_off
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        torch.testing.assert_close(grads_on[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert saved_on < 0.7 * saved_off  # the recomputation really happened: layer activations were not kept
