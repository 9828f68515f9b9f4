"""The two test-side guards that make device bugs fail on a CPU-only machine are themselves checked:
the generator-device guard of tests/conftest.py and the simulated device of tests/simulated_device.py.
If either stopped refusing what CUDA refuses, the device tests built on them would pass vacuously."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import GeneratorDeviceError
from tests.simulated_device import simulated_device


@pytest.mark.parametrize(
    "draw",
    [
        lambda g: torch.rand(3, generator=g, device="meta"),
        lambda g: torch.randn(3, generator=g, device="meta"),
        lambda g: torch.randint(5, (3,), generator=g, device="meta"),
        lambda g: torch.randperm(5, generator=g, device="meta"),
        lambda g: torch.rand_like(torch.empty(3, device="meta"), generator=g),
        lambda g: torch.multinomial(torch.ones(2, 4, device="meta"), 1, generator=g),
        lambda g: torch.bernoulli(torch.full((3,), 0.5, device="meta"), generator=g),
        lambda g: torch.empty(3, device="meta").uniform_(generator=g),
        lambda g: torch.empty(3, device="meta").normal_(generator=g),
        lambda g: torch.empty(3, device="meta").exponential_(generator=g),
        lambda g: torch.empty(3, device="meta").random_(0, 4, generator=g),
        lambda g: torch.empty(3, device="meta").bernoulli_(0.5, generator=g),
    ],
)
def test_guard_refuses_a_cpu_generator_filling_a_meta_tensor(draw):
    """torch itself lets these pass (meta tensors hold no values); CUDA would refuse them."""
    with pytest.raises(GeneratorDeviceError, match="'cpu' generator filling a tensor on 'meta'"):
        draw(torch.Generator())


def test_guard_keeps_the_default_device_context_working():
    """`with torch.device("meta")` (the dry run builds models this way) still reaches wrapped factories."""
    with torch.device("meta"):
        assert torch.randn(3).is_meta and torch.rand(2).is_meta and torch.randperm(4).is_meta


def test_guard_lets_matching_devices_through():
    g = torch.Generator().manual_seed(0)
    assert torch.rand(3, generator=g).shape == (3,)
    assert torch.empty(2).uniform_(generator=g).device.type == "cpu"
    assert torch.rand(3, device="meta").device.type == "meta"  # no generator: torch's own, on any device


def test_simulated_device_refuses_what_cuda_refuses():
    with simulated_device() as dev:
        x = torch.arange(6.0).view(2, 3).to(dev)
        assert x.device == dev and x.device.type != "cpu"
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(2, 3)  # a host tensor with dimensions
        with pytest.raises(RuntimeError, match="same device"):
            torch.gather(x, 1, torch.zeros(2, 1, dtype=torch.long))
        with pytest.raises(RuntimeError, match="device type for generator"):
            torch.rand(3, generator=torch.Generator(), device=dev)
        with pytest.raises(RuntimeError, match="device type for generator"):
            torch.empty(3, device=dev).uniform_(generator=torch.Generator())
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(TypeError):
            np.asarray(x)


def test_simulated_device_computes_what_the_cpu_computes():
    a = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    with simulated_device() as dev:
        x = a.to(dev)
        y = (x @ x.T + 1).softmax(-1)  # a 0-dim CPU scalar is allowed, as on CUDA
        assert y.device == dev
        picked = x[torch.tensor([0, 2])]  # CPU index tensors are allowed, as on CUDA
        assert picked.device == dev
        buf = torch.zeros(2, 5, device=dev)
        assert buf.copy_(picked) is buf  # in-place ops return their own tensor
        assert float(x.sum()) == pytest.approx(float(a.sum()))
        assert x.tolist() == a.tolist()
        assert torch.tensor([1, 2], device=dev).device == dev
        back = y.cpu()
    assert type(back) is torch.Tensor and back.device.type == "cpu"
    assert torch.equal(back, (a @ a.T + 1).softmax(-1))
    assert torch.equal(buf.elem, a[[0, 2]])
