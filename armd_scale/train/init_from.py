"""Start a new run from another run's weights (`train.init_from`), e.g. SBP fine-tuning.

Why not simply resume the pretraining run with a new order kind? Resuming keeps the optimizer
state, the step counter and the LR schedule of the old run; a fine-tune wants its own short
schedule (warm-up, decay over its own steps) and its own run directory, so the pretrained run stays
untouched and several fine-tunes can start from one checkpoint.

Only weights are loaded, on every rank, before DeepSpeed wraps the model (which then shards them
for ZeRO or tensor parallelism as usual). Rank 0 reads first: a ZeRO source is converted to the
universal form once, in its folder, and the other ranks then read that copy instead of racing to
write it. The source may be any checkpoint `armd_scale.pretrained`
reads: a run directory (its newest complete checkpoint), a checkpoint folder or an export directory.
"""

from __future__ import annotations

from torch import nn

from ..config import Config, ConfigError
from .checkpoint import shape_differences
from .distributed import DistInfo, broadcast_object


def initialize_from(model: nn.Module, cfg: Config, tokenizer_sha256: str, dist_info: DistInfo) -> str:
    """Load `cfg.train.init_from` into `model` (in place) on every rank. Returns a line for the run log.

    Refuses, naming what differs, a source with another model shape or another tokenizer: both would
    give a model that trains, but on meaningless weights.
    """
    message = error = None
    if dist_info.is_main:
        try:
            message = load_weights(model, cfg, tokenizer_sha256)
        except ConfigError as e:
            error = str(e)  # every rank must learn of the failure, not hang
    error = broadcast_object(error)
    if error is not None:
        raise ConfigError(error)
    if not dist_info.is_main:
        message = load_weights(model, cfg, tokenizer_sha256)
    return message


def load_weights(model: nn.Module, cfg: Config, tokenizer_sha256: str) -> str:
    """The single-process part of `initialize_from`."""
    from ..pretrained import checkpoint_state

    source = cfg.train.init_from
    try:
        state, meta, resolved = checkpoint_state(source)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"train.init_from={source!r}: {e}") from None
    diffs = shape_differences(meta["config"]["model"], cfg.to_dict()["model"])
    if diffs:
        raise ConfigError(f"train.init_from={source!r}: the model shape differs ({'; '.join(diffs)})")
    saved_tokenizer = meta.get("tokenizer_sha256")
    if saved_tokenizer and saved_tokenizer != tokenizer_sha256:
        raise ConfigError(
            f"train.init_from={source!r} was trained with tokenizer {saved_tokenizer[:12]} but data.train uses "
            f"{tokenizer_sha256[:12]}"
        )
    if cfg.model.tie_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["embed.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"train.init_from={source!r}: weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    step = meta.get("step")
    return f"initialised weights from {resolved.folder}" + (f" (step {step})" if step is not None else "")
