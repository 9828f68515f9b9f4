"""Small models and order helpers shared by the model tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

from armd_scale.config import ModelConfig
from armd_scale.model import build_model
from armd_scale.model.generation_orders import make_order

# (kind, params, step) for every order kind; progressive is drawn past its ramp so it shuffles.
ORDER_CASES = [
    ("l2r", {}, None),
    ("random", {}, None),
    ("progressive", dict(ar_steps=2, rho=6, ramp_end=4, reading="scatter"), 10),
    ("progressive", dict(ar_steps=2, rho=3, ramp_end=4, reading="window"), 10),
    ("sbp", dict(streams=2), None),
    ("sbp", dict(streams=4), None),
    ("diffusion", dict(steps=3), None),
]
ORDER_IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in p.items())}" for k, p, _ in ORDER_CASES]


def tiny_model_config(arch: str = "armd", **overrides) -> ModelConfig:
    values = dict(arch=arch, vocab_size=11, n_layers=4, d_model=32, n_heads=2, max_seq_len=32, d_pe=8, init_std=0.2)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(arch: str = "armd", seed: int = 0, randomise: bool = False, **overrides) -> torch.nn.Module:
    """randomise: every parameter drawn at random (randomise_parameters), not left at its initial value."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_config(arch, **overrides)).eval()
    if randomise:
        randomise_parameters(model, seed)
    return model


# The parameters whose initial values leave parts of the model dormant, and how they are redrawn.
WEIGHTS = [pytest.param(False, id="init"), pytest.param(True, id="randomised")]


def randomise_parameters(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter so that no path is dormant. At initialisation only neighbour head 0 has a
    non-zero gain, the other heads' far side scores -16, W_s (positional start) is 0 and the sinks are 0,
    so a contract test at initial weights never exercises heads 1.., the right-looking heads, W_s or the
    sinks. Here: relative-position scores ~ N(0, 2^2) (every head reads both sides), sinks ~ N(0, 1),
    every other parameter (gains of all heads, W_s, s, PE tables, weights, norms) + N(0, 0.3^2)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if name.endswith("rel_bias"):
                p.copy_(2.0 * noise)
            elif name.endswith("sink"):
                p.copy_(noise)
            else:
                p.add_(0.3 * noise)


def draw_order(kind: str, params: dict, step, batch: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return make_order(kind, batch, n, generator=gen, step=step, **params)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def assert_no_leakage(model: torch.nn.Module, order: torch.Tensor, block: torch.Tensor, vocab: int) -> None:
    """The contract `logits = model(tokens, order, block)` (docs/ARCHITECTURE.md, Contract): changing the
    tokens of the same or a later block than generation index k leaves logits[:, k] bit-identical;
    changing one earlier-block token changes them."""
    batch, n = order.shape
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, n), generator=gen)
    with torch.no_grad():
        base = model(tokens, order, block)
        for k in range(n):
            changed = tokens.clone()
            for b in range(batch):
                later = order[b, block[b] >= block[b, k]]
                shift = 1 + torch.randint(0, vocab - 1, later.shape, generator=gen)
                changed[b, later] = (tokens[b, later] + shift) % vocab
            assert torch.equal(model(changed, order, block)[:, k], base[:, k]), f"leak into generation index {k}"
            for b in range(batch):
                earlier = order[b, block[b] < block[b, k]]
                if len(earlier) == 0:
                    continue
                changed = tokens.clone()
                changed[b, earlier[0]] = (tokens[b, earlier[0]] + 1) % vocab
                diff = (model(changed, order, block)[b, k] - base[b, k]).abs().max()
                assert diff > 1e-6, f"logits at index {k} ignore an earlier-block token"


@dataclass
class SavedForBackward:
    """What autograd kept for the backward pass inside `saved_for_backward`: bytes per storage (by data
    pointer, each counted once) and the largest tensor's element count."""

    kept: dict[int, int] = field(default_factory=dict)
    largest: int = 0

    @property
    def bytes(self) -> int:
        return sum(self.kept.values())


@contextlib.contextmanager
def saved_for_backward(owned: set[int]) -> Iterator[SavedForBackward]:
    """Measure what the forward pass inside the block hands autograd for the backward pass
    (`saved_tensors_hooks`), leaving out the storages in `owned` (parameters, inputs: they exist anyway)."""
    saved = SavedForBackward()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned:
            saved.kept[ptr] = max(saved.kept.get(ptr, 0), t.untyped_storage().nbytes())
            saved.largest = max(saved.largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved
