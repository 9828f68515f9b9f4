"""Models from a saved config and a plain state dict; the one home of tied-weight handling.

Tied parameters (the LM head shares the embedding matrix) are found on the model itself rather than
by name, so every architecture's ties are handled the same way: an export stores each shared tensor
once (`without_aliases`), and loading puts it back under every name the model uses (`load_weights`,
used by every reader: load_pretrained, train.init_from, the conversion checks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import Config, config_from_dict
from ..model import build_model


def config_of(config: dict[str, Any], origin: str) -> Config:
    """The validated Config saved with a checkpoint (`origin` names the file in errors)."""
    return config_from_dict(config, origin=origin)


def build(config: Config, *, device: str | torch.device = "cpu") -> nn.Module:
    """The architecture named by the config, on `device` ("meta" builds shapes only, no memory)."""
    with torch.device(device):
        return build_model(config.model)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: canonical name} for parameters registered under several names (first name wins)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def parameter_count(model: nn.Module) -> int:
    """Parameters of `model`, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())  # parameters() already skips duplicates


def without_aliases(state: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """`state` with each tied tensor kept once, under its canonical name; refuses ties that differ."""
    for alias, canonical in aliases.items():
        if alias in state and canonical in state and not torch.equal(state[alias], state[canonical]):
            raise ValueError(
                f"'{alias}' is tied to '{canonical}' in the model but the checkpoint holds different values "
                "for them; it does not belong to this config"
            )
    return {k: v for k, v in state.items() if k not in aliases}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """Load a full state dict strictly (tied aliases may be absent); errors name `origin`."""
    aliases = tied_aliases(model)
    state = dict(state)
    for alias, canonical in aliases.items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if shapes or missing or unexpected:
        raise ValueError(
            f"{origin}: weights do not fit the saved config (missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {shapes})"
        )
    model.load_state_dict(state, strict=True)
    return model
