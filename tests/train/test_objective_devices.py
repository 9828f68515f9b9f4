"""The training objectives on a device other than the CPU: the step's orders or diffusion noise are
drawn on the host from per-step CPU generators and moved; the loss, its gradients and the validation
numbers on the simulated device (tests/simulated_device.py, CUDA's mixing rules) equal the CPU ones."""

from __future__ import annotations

import pytest
import torch

from armd_scale.config import load_config
from armd_scale.model import build_model
from armd_scale.train.objective import make_objective
from tests.simulated_device import simulated_device

from .conftest import TINY

CASES = [
    ("armd", ["train.order.kind=progressive"]),
    ("armd", ["train.order.kind=sbp", "train.order.streams=[2,4]"]),
    ("armd", ["train.order.kind=diffusion", "train.order.steps=4"]),
    ("ar", ["train.order.kind=random"]),
    ("mdlm", ["train.eval_elbo_steps=4"]),
]


def _losses(cfg, model, device):
    """(micro-batch loss, its gradient of the embedding, validation nll and count) on `device`."""
    objective = make_objective(cfg, cfg.train.global_batch_size)
    tokens = torch.randint(0, cfg.model.vocab_size, (4, cfg.data.seq_len), generator=torch.Generator().manual_seed(3))
    model = model.to(device)
    objective.begin_step(7, slice(0, 4), device)
    loss = objective.micro_loss(model, tokens.to(device), slice(0, 4))
    (grad,) = torch.autograd.grad(loss, [model.embed.weight])
    with torch.no_grad():
        val = objective.eval_batch(model, tokens.to(device), first_index=5)
    return float(loss.detach()), grad.cpu(), val


@pytest.mark.parametrize("arch, overrides", CASES, ids=[f"{a}-{o[0].split('=')[-1]}" for a, o in CASES])
def test_objective_on_another_device_equals_the_cpu(arch, overrides):
    cfg = load_config(None, [*TINY, f"model.arch={arch}", "train.order.ar_steps=0", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    loss, grad, val = _losses(cfg, model, torch.device("cpu"))
    with simulated_device() as dev:
        loss_dev, grad_dev, val_dev = _losses(cfg, model, dev)
    assert loss_dev == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(grad_dev, grad, rtol=1e-5, atol=1e-7)
    assert val_dev[1] == val[1] and val_dev[0] == pytest.approx(val[0], rel=1e-6)
