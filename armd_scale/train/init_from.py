"""Start a new run from another run's weights (`train.init_from`), e.g. SBP fine-tuning.

Why not simply resume the pretraining run with a new order kind? Resuming keeps the optimizer
state, the step counter and the LR schedule of the old run; a fine-tune wants its own short
schedule (warm-up, decay over its own steps) and its own run directory, so the pretrained run stays
untouched and several fine-tunes can start from one checkpoint.

Only weights are loaded, on every rank, before DeepSpeed wraps the model (which then shards them
for ZeRO or tensor parallelism as usual): a checkpoint's model.safetensors (weights.full_state), and
nothing is written into the source run. Rank 0 reads first, so a source that is refused is refused
once, with one message, before the other ranks spend time on it. The source may be any checkpoint
`checkpoints.source.open_source` resolves: a run directory (its newest complete checkpoint), a
checkpoint folder, a universal folder or an export directory.
"""

from __future__ import annotations

from torch import nn

from ..checkpoints.layout import shape_differences
from ..checkpoints.model_io import load_weights
from ..checkpoints.source import open_source
from ..checkpoints.weights import full_state
from ..config import Config, ConfigError
from ..data.errors import DataError
from ..data.tokenizers.ref import TokenizerRef
from .distributed import DistInfo, broadcast_object


def initialize_from(model: nn.Module, cfg: Config, tokenizer: TokenizerRef, dist_info: DistInfo) -> str:
    """Load `cfg.train.init_from` into `model` (in place) on every rank. Returns a line for the run log.

    Refuses, naming what differs, a source with another model shape or another tokenizer: both would
    give a model that trains, but on meaningless weights.
    """
    message: str | None = None
    error: str | None = None
    if dist_info.is_main:
        try:
            message = load_init_weights(model, cfg, tokenizer)
        except ConfigError as e:
            error = str(e)  # every rank must learn of the failure, not hang
    error = broadcast_object(error)
    if error is not None:
        raise ConfigError(error)
    if message is None:  # the other ranks read once rank 0 found the source sound
        message = load_init_weights(model, cfg, tokenizer)
    return message


def load_init_weights(model: nn.Module, cfg: Config, tokenizer: TokenizerRef | str) -> str:
    """The single-process part of `initialize_from`. `tokenizer`: the run's tokenizer reference, or
    just its checksum (what a shard manifest gives)."""
    checksum = tokenizer if isinstance(tokenizer, str) else tokenizer.checksum
    where = f"train.init_from={cfg.train.init_from!r}"
    if not cfg.train.init_from:
        raise ConfigError("train.init_from is not set: there is nothing to initialise from")
    try:
        checkpoint = open_source(cfg.train.init_from)
        saved_model = checkpoint.config.get("model", {})
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    diffs = shape_differences(saved_model, cfg.to_dict()["model"])
    if diffs:
        raise ConfigError(f"{where}: the model shape differs ({'; '.join(diffs)})")
    try:
        saved = TokenizerRef.from_meta(checkpoint.meta, str(checkpoint.meta_file))  # old loose keys convert
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None
    if saved is not None and saved.checksum != checksum:
        raise ConfigError(
            f"{where} was trained with tokenizer {saved.checksum[:12]} but data.train uses {checksum[:12]}"
        )
    try:
        load_weights(model, full_state(checkpoint), f"{where} ({checkpoint.folder})")
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    step = checkpoint.step
    ema = " (its EMA of the weights)" if checkpoint.averaged else ""
    return f"initialised weights from {checkpoint.folder}{ema}" + (f" (step {step})" if step is not None else "")
