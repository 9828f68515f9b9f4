"""Metrics sinks: a JSONL file (always), a progress bar and wandb, all on rank 0 only.

wandb modes: off; offline (files under RUN_DIR/wandb, sync later with `wandb sync`); online; auto =
online only when an API key is configured (WANDB_API_KEY or a netrc entry), else offline. The run id
is stored in checkpoints so a requeued job continues the same wandb run. API keys are never logged.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any, Literal, TextIO

from ..config import Config

WandbMode = Literal["off", "offline", "online"]


def wandb_mode(setting: str) -> WandbMode:
    """`log.wandb` resolved: auto is online only where a key is configured."""
    if setting == "off":
        return "off"
    if setting == "offline":
        return "offline"
    if setting == "online":
        return "online"
    if setting != "auto":
        raise ValueError(f"log.wandb={setting!r} is not one of off, offline, online, auto")
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        if Path(path).is_file() and netrc.netrc(path).authenticators("api.wandb.ai"):
            return "online"
    except (netrc.NetrcParseError, OSError):
        pass
    return "offline"


def new_run_id() -> str:
    """An 8-character lowercase id, the form wandb uses for run ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class MetricsLogger:
    """Writes one JSON object per logged step to RUN_DIR/metrics.jsonl and mirrors it to the sinks."""

    def __init__(self, cfg: Config, run_dir: Path, *, is_main: bool, start_step: int, wandb_id: str | None):
        self.is_main = is_main
        self.wandb_run: Any = None  # a wandb Run once started
        self.wandb_id = wandb_id
        self.bar: Any = None  # a tqdm bar on rank 0 with log.progress_bar
        self.file: TextIO | None = None
        if not is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.log.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        mode = wandb_mode(cfg.log.wandb)
        if mode != "off":
            self._start_wandb(cfg, run_dir, mode)

    def _start_wandb(self, cfg: Config, run_dir: Path, mode: Literal["offline", "online"]) -> None:
        import wandb

        self.wandb_id = self.wandb_id or new_run_id()
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb_run = wandb.init(
            project=cfg.log.project,
            name=cfg.log.name or cfg.run.name,
            id=self.wandb_id,
            resume="allow",
            mode=mode,
            dir=str(run_dir),
            config=cfg.to_dict(),
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.is_main or self.file is None:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
        if self.bar is not None and "loss" in values:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return value
