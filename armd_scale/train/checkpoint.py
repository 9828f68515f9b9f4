"""The trainer's checkpoints: save during training and resume, surviving preemption and resizing.

The layout (step folders, meta.json, COMPLETE, latest) is `checkpoints/layout.py`'s; this module
only decides when and what to write, and how to load it into a DeepSpeed engine.

Resume takes the newest *complete* folder (a folder without COMPLETE is a save that was cut short).
Same world size and TP degree (or ZeRO-0 on another data-parallel size): load directly. Otherwise
convert to DeepSpeed's universal format once (cached in the folder) and load that (see
checkpoints/universal.py for what DeepSpeed can reshard). A model-shape change or another tokenizer
is refused with a message naming what differs. Every file is checked to be loadable with
`weights_only=True` first, so a tampered checkpoint cannot run code.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.layout import (
    CHECKPOINT_FORMAT,
    CHECKPOINTS,
    MARKER,
    TAG_RE,
    UNIVERSAL,
    complete_tags,
    mark_complete,
    read_meta,
    set_latest,
    shape_differences,
    step_of,
    tag_for,
)
from ..checkpoints.safe_load import assert_weights_only_loadable, weights_only_loading
from ..checkpoints.universal import check_reshard, convert_to_universal
from ..config import Config, ConfigError
from .distributed import DistInfo, barrier, broadcast_object


@dataclass(frozen=True)
class ResumePlan:
    tag: str | None = None
    universal: bool = False


class Checkpointer:
    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        dist_info: DistInfo,
        *,
        tokenizer_sha256: str,
        tokenizer_dir: str | None = None,
    ):
        self.dir = run_dir / CHECKPOINTS
        self.cfg = cfg
        self.dist = dist_info
        self.tokenizer_sha256 = tokenizer_sha256
        self.tokenizer_dir = tokenizer_dir

    # -- topology ---------------------------------------------------------------------------------
    def topology(self) -> dict[str, Any]:
        p = self.cfg.parallel
        return dict(
            world_size=self.dist.world_size,
            tp=p.tp,
            dp=self.dist.world_size // p.tp,
            zero_stage=p.zero_stage,
            precision=p.precision,
        )

    # -- resume -----------------------------------------------------------------------------------
    def plan_resume(self) -> ResumePlan:
        """Pick the newest complete checkpoint and decide how to load it (same on every rank)."""
        plan: ResumePlan | str = ResumePlan()
        if self.dist.is_main:
            try:
                plan = self._plan_on_main()
            except (ConfigError, OSError, ValueError) as e:
                plan = f"{type(e).__name__}: {e}"  # every rank must learn of the failure, not hang
        plan = broadcast_object(plan)
        barrier()
        if isinstance(plan, str):
            raise ConfigError(plan)
        return plan

    def _plan_on_main(self) -> ResumePlan:
        tags = complete_tags(self.dir)
        if not tags:
            return ResumePlan()
        tag = tags[-1]
        meta = read_meta(self.dir / tag)
        self._check_compatible(tag, meta)
        universal = check_reshard(
            meta["topology"],
            world_size=self.dist.world_size,
            tp=self.cfg.parallel.tp,
            zero_stage=self.cfg.parallel.zero_stage,
        )
        if universal:
            convert_to_universal(self.dir / tag)
        return ResumePlan(tag, universal=universal)

    def _check_compatible(self, tag: str, meta: dict[str, Any]) -> None:
        diffs = shape_differences(meta["config"]["model"], self.cfg.to_dict()["model"])
        if diffs:
            raise ConfigError(
                f"cannot resume {self.dir / tag}: the model shape changed ({'; '.join(diffs)}). "
                "Use a new run.dir or restore these values."
            )
        if meta.get("tokenizer_sha256") != self.tokenizer_sha256:
            raise ConfigError(
                f"cannot resume {self.dir / tag}: it was trained with tokenizer {meta.get('tokenizer_sha256')} "
                f"but the data now uses {self.tokenizer_sha256}"
            )

    def load(self, engine, plan: ResumePlan) -> dict[str, Any]:
        """Load engine state (weights, optimizer, scheduler) and return our client state."""
        if plan.tag is None:
            raise ValueError("nothing to load: the resume plan names no checkpoint (a new run)")
        folder = self.dir / plan.tag
        load_dir = folder / UNIVERSAL if plan.universal else self.dir
        assert_weights_only_loadable(load_dir / plan.tag)  # names the offending file, if any
        with weights_only_loading():
            path, client = engine.load_checkpoint(str(load_dir), tag=plan.tag, load_module_strict=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {folder}")
        meta = read_meta(folder)
        _restore_rng(client.get("rng"))
        return {"trainer": meta["trainer"], "loader": meta["loader"]}

    # -- save -------------------------------------------------------------------------------------
    def save(self, engine, step: int, *, trainer: dict[str, Any], loader: dict[str, Any]) -> Path:
        """Collective: every rank calls it. The folder is marked complete only after all ranks wrote."""
        tag = tag_for(step)
        folder = self.dir / tag
        if self.dist.is_main:
            if folder.exists():  # an earlier, interrupted save of the same step
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        barrier()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "trainer": trainer,
            "loader": loader,
            "config": self.cfg.to_dict(),
            "tokenizer_sha256": self.tokenizer_sha256,
            "tokenizer_dir": self.tokenizer_dir,
            "wandb_run_id": trainer.get("wandb_run_id"),
            "topology": self.topology(),
            "saved_at": time.time(),
        }
        client_state = {
            "armd_scale": {k: meta[k] for k in ("format", "step", "tokenizer_sha256", "topology")},
            "rng": _rng_state(),
        }
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        barrier()
        if self.dist.is_main:
            mark_complete(folder, meta)
            set_latest(self.dir, tag)
            self._apply_retention()
        barrier()
        return folder

    def _apply_retention(self) -> None:
        """Keep the newest `keep_last` complete checkpoints and every `keep_every`-th step."""
        tags = complete_tags(self.dir)
        keep = set(tags[-self.cfg.train.keep_last :])
        every = self.cfg.train.keep_every
        if every:
            keep |= {t for t in tags if step_of(t) % every == 0}
        newest = step_of(tags[-1]) if tags else 0
        for path in self.dir.iterdir():
            if not TAG_RE.match(path.name) or path.name in keep:
                continue
            # complete ones beyond retention, and incomplete ones older than the newest complete save
            if (path / MARKER).is_file() or step_of(path.name) < newest:
                shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
