"""RUN_DIR/run_facts.json: what a run found out, kept apart from what it was told.

config.yaml is the resolved config of the run, exactly as the command line and config files gave it,
and is never completed with derived values. What the run derives (the tokenizer's vocabulary size
and identity from the shards, the resolved shard-set URLs, world size, TP degree, versions) goes
here instead, written whole (armd_scale.atomic) at every start, so a resumed run on another world
size records the world size it ran with. The model is built from config + facts
(`TrainData.model_config`); checkpoints keep that effective config in their metadata, which is what
their readers need.

A run folder written before this file existed has no run_facts.json, and its config.yaml may carry
`model.tokenizer_vocab_size`: resuming it accepts the setting when it matches the shards.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_atomic
from ..config import ConfigError
from ..data.errors import DataError
from ..data.tokenizers.ref import TokenizerRef

if TYPE_CHECKING:
    from .run_data import TrainData

RUN_FACTS_FILE = "run_facts.json"
RUN_FACTS_FORMAT = "armd_scale.run_facts/1"


@dataclass(frozen=True)
class RunFacts:
    tokenizer: TokenizerRef
    tokenizer_vocab_size: int  # ids of the tokenizer (the shards' manifest); model.vocab_size may pad above it
    train: list[dict[str, Any]]  # resolved shard sets: url, weight, epochs
    val: str | None
    world_size: int
    tp: int
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, data: TrainData, world_size: int, tp: int) -> RunFacts:
        """The facts of a run that opened `data` on `world_size` processes with TP degree `tp`."""
        return cls(
            tokenizer=data.tokenizer,
            tokenizer_vocab_size=data.vocab_size,
            train=[{"url": s.url, "weight": s.weight, "epochs": s.epochs} for s in data.train_sources],
            val=data.val_url,
            world_size=world_size,
            tp=tp,
            versions=versions(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FACTS_FORMAT,
            "tokenizer": self.tokenizer.to_dict(),
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "data": {"train": self.train, "val": self.val},
            "world_size": self.world_size,
            "tp": self.tp,
            "versions": self.versions,
            "written_at": time.time(),
        }

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / RUN_FACTS_FILE
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: Path) -> RunFacts | None:
        """The facts of `run_dir`, or None for a run written before run_facts.json existed."""
        path = Path(run_dir) / RUN_FACTS_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("format") != RUN_FACTS_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ConfigError(f"{path} has format {got!r}, expected {RUN_FACTS_FORMAT!r}")
        try:
            data = raw["data"]
            return cls(
                tokenizer=TokenizerRef.from_dict(raw["tokenizer"], str(path)),
                tokenizer_vocab_size=int(raw["tokenizer_vocab_size"]),
                train=list(data["train"]),
                val=data["val"],
                world_size=int(raw["world_size"]),
                tp=int(raw["tp"]),
                versions=dict(raw.get("versions", {})),
            )
        except KeyError as e:
            raise ConfigError(f"{path} lacks key {e}") from None
        except DataError as e:
            raise ConfigError(str(e)) from None


def versions() -> dict[str, str]:
    """Versions that change what a run computes, for the record."""
    import torch

    from .. import __version__

    out = {"armd_scale": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except ImportError:  # pragma: no cover - deepspeed is a dependency; the record must not fail without it
        pass
    return out
