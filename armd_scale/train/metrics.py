"""Metrics sinks: a JSONL file (always), a progress bar and wandb, all on rank 0 only.

wandb modes: off; offline (files under RUN_DIR/wandb, sync later with `wandb sync`); online; auto =
online only when an API key is configured (WANDB_API_KEY or a netrc entry) and the service answers,
else offline. The run id is stored in checkpoints so a requeued job continues the same wandb run. API
keys are never logged.

Why auto probes the service: compute nodes are often offline, and there an online `wandb.init` waits
for its own timeout (about 90 s) and then raises, killing the run on every requeue. So auto first
honours WANDB_MODE (offline/dryrun -> offline, disabled -> off), then opens a TCP connection to the
service (WANDB_BASE_URL, default https://api.wandb.ai) with a short timeout; no answer -> offline,
with a message saying why. If the online start still fails, auto starts offline instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import netrc
import os
import secrets
import socket
import string
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from ..atomic import describe_write_failure
from ..config import Config
from .checkpoint import CheckpointWriteError

WandbMode = Literal["off", "offline", "online"]


class MetricsWriteError(CheckpointWriteError):
    """RUN_DIR/metrics.jsonl could not be written (a full disk, a lost filesystem); the message names the
    file. A CheckpointWriteError (an OSError) because it is the same fault of the same run directory:
    the trainer records it as a failed status and `armd train` prints it as one line, as for a save."""


DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 5.0  # a reachable service answers a TCP connect in milliseconds; wandb's own wait is ~90 s


def wandb_mode(setting: str) -> WandbMode:
    """`log.wandb` resolved (see `resolve_wandb_mode`, which also says why auto chose offline)."""
    return resolve_wandb_mode(setting)[0]


def resolve_wandb_mode(setting: str, probe_timeout: float = PROBE_TIMEOUT_S) -> tuple[WandbMode, str | None]:
    """`log.wandb` resolved, with the reason when auto falls back to offline (None otherwise): auto is
    online only where WANDB_MODE does not say otherwise, a key is configured and the service answers."""
    if setting in ("off", "offline", "online"):
        return setting, None  # type: ignore[return-value]
    if setting != "auto":
        raise ValueError(f"log.wandb={setting!r} is not one of off, offline, online, auto")
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode == "disabled":
        return "off", None
    if env_mode in ("offline", "dryrun"):
        return "offline", None
    if not _has_api_key():
        return "offline", None
    url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    problem = unreachable(url, probe_timeout)
    if problem:
        return "offline", f"wandb service {url} cannot be reached ({problem}); logging offline under the run directory"
    return "online", None


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname or "api.wandb.ai"
        return Path(path).is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def unreachable(url: str, timeout: float) -> str | None:
    """Why a TCP connection to `url`'s host and port fails within `timeout` seconds, or None if it opens."""
    parts = urlsplit(url)
    if not parts.hostname:
        return f"{url!r} names no host"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        return str(e)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


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
        self.path = run_dir / "metrics.jsonl"
        try:
            self.file = open(self.path, "a", buffering=1)
        except OSError as e:
            raise MetricsWriteError(f"metrics not written: {describe_write_failure(self.path, e)}") from None
        if cfg.log.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        mode, why = resolve_wandb_mode(cfg.log.wandb)
        if why:
            self.message(why)
        if mode == "online" and cfg.log.wandb == "auto":
            try:
                self._start_wandb(cfg, run_dir, mode)
            except Exception as e:  # noqa: BLE001 - auto must never cost the run: any failure to go online
                self.message(f"wandb could not start online ({type(e).__name__}: {e}); logging offline instead")
                self._start_wandb(cfg, run_dir, "offline")
        elif mode != "off":
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
        try:
            self.file.write(json.dumps(record) + "\n")  # line-buffered: the line reaches the OS here
        except OSError as e:
            self._fail(e)
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
        if self.bar is not None and "loss" in values:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    def log_table(self, step: int, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A wandb table (e.g. the validation samples) at `step`; nothing without wandb, which is then never
        imported. The rows' own record goes to a file of the run directory (train/eval_samples.py)."""
        if not self.is_main or self.wandb_run is None or not rows:
            return
        import wandb

        self.wandb_run.log({key: wandb.Table(columns=list[str | int](columns), data=rows)}, step=step)

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
        file, self.file = self.file, None
        try:
            if file is not None:
                try:
                    file.close()
                except OSError as e:
                    self._fail(e)
        finally:
            if self.wandb_run is not None:
                self.wandb_run.finish()
                self.wandb_run = None

    def _fail(self, error: OSError) -> None:
        """Give the file up (what is still buffered cannot be written either) and raise the one error
        that names it; later calls log nothing, so closing cannot raise it a second time."""
        file, self.file = self.file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        raise MetricsWriteError(f"metrics not written: {describe_write_failure(self.path, error)}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return value
