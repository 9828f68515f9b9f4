"""Suite-wide guard: a random draw whose generator is on another device than the tensor it fills fails.

torch refuses a CPU generator filling a CUDA tensor, but happily lets one fill a `meta` tensor, and
on a CPU-only machine everything else is on the CPU. This autouse fixture wraps every generator-taking
draw (torch.rand/randn/randint/randperm/multinomial/bernoulli/normal/poisson, the *_like variants and
the in-place Tensor.uniform_/normal_/random_/bernoulli_/exponential_/geometric_/log_normal_/cauchy_)
and raises the error CUDA would raise whenever the generator's device type differs from the device
type of the tensor being filled, on any device. With tensors on `meta` or on the simulated device of
tests/simulated_device.py, the tests then catch what would only fail on a GPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from tests.eval.runs import TinyRun, tiny_run

try:  # `with torch.device(...)` recognises factories by identity, from a set cached on first use:
    from torch.utils._device import _device_constructors  # fill it with torch's own functions before

    _device_constructors()  # the fixture wraps them, or factories called inside that context ignore it
except ImportError:  # pragma: no cover - a torch without the private helper
    pass

# torch functions: where the filled tensor's device comes from ("factory": device=/out=/default device).
_FACTORIES = ("rand", "randn", "randint", "randperm")
_FROM_INPUT = ("rand_like", "randn_like", "randint_like", "multinomial", "bernoulli", "normal", "poisson")
_IN_PLACE = ("uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_")


class GeneratorDeviceError(RuntimeError):
    """A generator of one device was asked to fill a tensor on another."""


def _check(generator, device, what: str) -> None:
    if generator is None or device is None:
        return
    device = torch.device(device)
    if generator.device.type != device.type:
        raise GeneratorDeviceError(
            f"{what}: a '{generator.device.type}' generator filling a tensor on '{device}' (torch refuses this "
            "on CUDA: Expected a 'cuda' device type for generator); draw through armd_scale.rng"
        )


def _first_tensor_device(args, kwargs):
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _factory_device(kwargs):
    if kwargs.get("device") is not None:
        return kwargs["device"]
    if isinstance(kwargs.get("out"), torch.Tensor):
        return kwargs["out"].device
    return torch.get_default_device()


def _guard_factory(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _check(kwargs.get("generator"), _factory_device(kwargs), f"torch.{name}")
        return fn(*args, **kwargs)

    return wrapper


def _guard_from_input(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = kwargs.get("device")
        if device is None and isinstance(kwargs.get("out"), torch.Tensor):
            device = kwargs["out"].device
        _check(kwargs.get("generator"), device or _first_tensor_device(args, kwargs), f"torch.{name}")
        return fn(*args, **kwargs)

    return wrapper


def _guard_in_place(name, fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        _check(kwargs.get("generator"), self.device, f"Tensor.{name}")
        return fn(self, *args, **kwargs)

    return wrapper


@pytest.fixture(autouse=True)
def generator_device_guard(monkeypatch):
    """Active in every test: see the module docstring."""
    for name in _FACTORIES:
        monkeypatch.setattr(torch, name, _guard_factory(name, getattr(torch, name)))
    for name in _FROM_INPUT:
        monkeypatch.setattr(torch, name, _guard_from_input(name, getattr(torch, name)))
        if hasattr(torch.Tensor, name):
            monkeypatch.setattr(torch.Tensor, name, _guard_from_input(name, getattr(torch.Tensor, name)))
    for name in _IN_PLACE:
        monkeypatch.setattr(torch.Tensor, name, _guard_in_place(name, getattr(torch.Tensor, name)))
    yield


# -- shared session fixtures (pytest finds them here for every test directory; never import them) --------


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """Tokenizer and shards of the built-in corpus, built once for every training test."""
    from armd_scale.config import DataConfig
    from armd_scale.data.prepare.builtin import ensure_builtin_dataset

    cache = tmp_path_factory.mktemp("armd_cache")
    ensure_builtin_dataset(DataConfig(cache_dir=str(cache), seq_len=32, vocab_size=128), build=True)
    return cache


@pytest.fixture(scope="session")
def markov_run(tmp_path_factory) -> TinyRun:
    return tiny_run(tmp_path_factory, "markov")


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> TinyRun:
    return tiny_run(tmp_path_factory, "text")


@pytest.fixture(scope="session")
def text_ar_run(tmp_path_factory) -> TinyRun:
    return tiny_run(tmp_path_factory, "text_ar")


@pytest.fixture(scope="session")
def text_mdlm_run(tmp_path_factory) -> TinyRun:
    return tiny_run(tmp_path_factory, "text_mdlm")


@pytest.fixture(scope="session")
def text_bpe_run(tmp_path_factory) -> TinyRun:
    return tiny_run(tmp_path_factory, "text_bpe")


@pytest.fixture(scope="session")
def text_wordpiece_run(tmp_path_factory) -> TinyRun:
    return tiny_run(tmp_path_factory, "text_wordpiece")
