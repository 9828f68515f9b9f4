"""ARMD and baseline models behind one contract: `logits = model(tokens, order, block)`."""

from __future__ import annotations

from typing import TypeAlias

from ..model_config import ModelConfig
from .armd import ARMDModel, ARModel
from .loss import order_loss, token_nll
from .mdlm import MDLMModel

Model: TypeAlias = ARMDModel | ARModel | MDLMModel  # every architecture: logits = model(tokens, order, block)

ARCHS: dict[str, type[Model]] = {"armd": ARMDModel, "ar": ARModel, "mdlm": MDLMModel}


def model_class(model_config: ModelConfig) -> type[Model]:
    """The class of `model_config.arch`: the one place the arch name is read. Callers that hold a config
    and no model ask its class for architecture facts (`objective`, `likelihood_kind`, ...)."""
    try:
        return ARCHS[model_config.arch]
    except KeyError:
        raise ValueError(
            f"model.arch='{model_config.arch}' is not available; choose one of {', '.join(ARCHS)}"
        ) from None


def build_model(model_config: ModelConfig) -> Model:
    """Instantiate the architecture named by `model_config.arch` (weights initialised)."""
    model_config.validate()
    return model_class(model_config)(model_config)


__all__ = [
    "ARMDModel",
    "ARModel",
    "ARCHS",
    "MDLMModel",
    "Model",
    "build_model",
    "model_class",
    "order_loss",
    "token_nll",
]
