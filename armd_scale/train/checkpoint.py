"""The trainer's checkpoints: save during training and resume, surviving preemption and resizing.

The layout (step folders, meta.json, COMPLETE, latest) is `checkpoints/layout.py`'s; this module
only decides when and what to write, and how to load it into a DeepSpeed engine.

Save: every rank writes its DeepSpeed files, then hashes (SHA-256) and fsyncs the files it wrote
itself; the ranks gather the full fp32 weights one parameter at a time (full_weights.py) and rank 0
writes them as `model.safetensors` (whole and durably: temporary sibling, fsync, rename), the file
every reader loads; rank 0 records all of them in meta.json (the weights also under `weights`,
checkpoints/weights_file.py; with train.ema_decay the EMA of the weights likewise as `ema.safetensors`,
train/ema.py) and only then writes COMPLETE (durably). A write that
fails on any rank (a full disk, ...) fails the save on every rank with the path and the reason; the
partial folder is removed and the previous checkpoints stay.

Resume takes the newest *complete and intact* folder (a folder without COMPLETE is a save that was cut
short). Intact: every file matches the size and SHA-256 meta.json records (the ranks share the hashing;
checked first, so damaged bytes never reach an unpickler), then loads with `weights_only=True` (a tampered
file is refused outright: no fallback). A damaged newest folder (a file cut short, changed or missing,
meta.json missing or changed) is named with its file, set aside as `step_N.corrupt` and the next older one
is taken. A save that fails anywhere (creating the folder, the weights, meta.json/COMPLETE/latest) fails on
every rank with the path, and leaves no partial folder.
Same world size and TP degree (or ZeRO-0 on another data-parallel size): load directly. Otherwise
convert to DeepSpeed's universal format once (cached in the folder) and load that (see
checkpoints/universal.py for what DeepSpeed can reshard). A change of a model field that changes the
function the weights compute, or another tokenizer, is refused with a message naming what differs.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import describe_write_failure
from ..checkpoints.integrity import CorruptCheckpointError, digests, listed_paths, recorded_files
from ..checkpoints.layout import (
    CHECKPOINT_FORMAT,
    CHECKPOINTS,
    CORRUPT_SUFFIX,
    FILES,
    LATEST,
    MARKER,
    META,
    MODEL_WEIGHTS,
    TAG_RE,
    UNIVERSAL,
    WEIGHTS,
    complete_tags,
    files_key,
    function_differences,
    is_complete,
    mark_complete,
    read_meta,
    set_latest,
    step_of,
    tag_for,
)
from ..checkpoints.model_io import build, tied_aliases, without_aliases
from ..checkpoints.safe_load import assert_weights_only_loadable, verify_files, weights_only_loading
from ..checkpoints.source import check_intact
from ..checkpoints.universal import check_reshard, convert_to_universal
from ..checkpoints.weights_file import EMA_WEIGHTS, EMA_WEIGHTS_KEY, write_checkpoint_weights
from ..config import Config, ConfigError
from ..data.tokenizers.ref import TokenizerRef
from ..error_text import error_text
from .distributed import DistInfo, barrier, broadcast_object, gather_objects
from .ema import WeightEMA
from .full_weights import gather_full_weights


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost filesystem); the message names the path."""


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
        tokenizer: TokenizerRef,
    ):
        self.dir = run_dir / CHECKPOINTS
        self.cfg = cfg
        self.dist = dist_info
        self.tokenizer = tokenizer
        self.ema: WeightEMA | None = None  # set by the trainer with train.ema_decay > 0: saved as ema.safetensors

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
        """Pick the newest complete, intact checkpoint and decide how to load it (same on every rank).
        Collective: the ranks share the checksum verification."""
        tag = self._newest_intact()
        plan: ResumePlan | str = ResumePlan()
        if self.dist.is_main and tag is not None:
            try:
                plan = self._plan_for(tag)
            except (ConfigError, OSError, ValueError) as e:
                # every rank must learn of the failure, not hang
                plan = f"cannot resume from {error_text(e, self.dir / tag)}"
        plan = broadcast_object(plan)
        barrier()
        if isinstance(plan, str):
            raise ConfigError(plan)
        return plan

    def _newest_intact(self) -> str | None:
        """The newest complete folder whose files load safely and match their checksums. Damaged newer
        ones are named and set aside (`step_N.corrupt`) once an intact one is found; if none is intact
        nothing is moved and the resume stops (starting over would silently discard the run). A
        tampered file stops the resume at once (UnsafeCheckpointError)."""
        candidates = broadcast_object(list(reversed(complete_tags(self.dir))) if self.dist.is_main else None)
        damaged: list[tuple[str, str]] = []
        for tag in candidates:
            damage = self._damage(self.dir / tag)
            if damage is None:
                if self.dist.is_main:
                    for bad, why in damaged:
                        aside = _set_aside(self.dir / bad, CORRUPT_SUFFIX)
                        print(
                            f"checkpoint {self.dir / bad} is damaged: {why}. Set aside as {aside.name}; "
                            f"resuming from the newest intact checkpoint, {tag}",
                            flush=True,
                        )
                    if damaged:
                        self._refresh_latest()
                barrier()
                return tag
            damaged.append((tag, damage))
        if damaged:
            listing = "; ".join(f"{self.dir / t}: {why}" for t, why in damaged)
            raise ConfigError(
                f"no intact checkpoint to resume from ({listing}). Restore them from a copy, or move them away "
                "to start the run over"
            )
        return None

    def _damage(self, folder: Path) -> str | None:
        """Collective: why `folder` is damaged (the file and the reason), or None if it is intact.

        Sizes and checksums first (the ranks share the hashing), restricted unpickling (rank 0) only of
        files that match them: damaged bytes never reach an unpickler, where they fail in arbitrary ways
        or pass for tampering. A tampered file (UnsafeCheckpointError) stops the resume: no fallback."""
        found: tuple[dict | None, str | None, str | None] = (None, None, None)  # (files, damage, fatal)
        meta: dict[str, Any] = {}
        if self.dist.is_main:
            try:
                meta = read_meta(folder)  # meta.json missing or unreadable beside COMPLETE: damage
                listed_paths(folder, meta.get(FILES), named_by=files_key(META))  # a name leading out: fatal
                found = (meta.get(FILES) or {}, None, None)
            except CorruptCheckpointError as e:
                found = (None, str(e), None)
            except (ConfigError, OSError, ValueError) as e:
                found = (None, None, error_text(e, folder))
        files, damage, fatal = broadcast_object(found)
        if fatal is not None:
            raise ConfigError(fatal)
        if damage is not None:
            return damage
        rank, world = self.dist.rank, self.dist.world_size
        mine = {k: v for i, (k, v) in enumerate(sorted(files.items())) if i % world == rank}  # a share each
        local: tuple[str | None, str | None] = (None, None)  # (damage, fatal)
        try:
            verify_files(folder, mine, named_by=files_key(META))
        except CorruptCheckpointError as e:
            local = (str(e), None)
        except (OSError, ValueError) as e:  # tampering; or unreadable here (EIO, a lost mount): not damage
            local = (None, error_text(e, folder))
        results = gather_objects(local)
        fatal = next((f for _, f in results if f is not None), None)
        if fatal is not None:
            raise ConfigError(fatal)
        damage = next((d for d, _ in results if d is not None), None)
        if damage is not None:
            return damage
        unpickled: tuple[str | None, str | None] = (None, None)  # (damage, fatal)
        if self.dist.is_main:
            try:
                check_intact(folder, meta, checksums=False)  # verified above; a disallowed global: fatal
            except CorruptCheckpointError as e:
                unpickled = (str(e), None)
            except (ConfigError, OSError, ValueError) as e:
                unpickled = (None, error_text(e, folder))
        damage, fatal = broadcast_object(unpickled)
        if fatal is not None:
            raise ConfigError(fatal)
        return damage

    def _plan_for(self, tag: str) -> ResumePlan:
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
        diffs = function_differences(meta["config"]["model"], self.cfg.to_dict()["model"])
        if diffs:
            raise ConfigError(
                f"cannot resume {self.dir / tag}: the model changed ({'; '.join(diffs)}). "
                "Use a new run.dir (train.init_from can start it from these weights) or restore these values."
            )
        saved = TokenizerRef.from_meta(meta, str(self.dir / tag / "meta.json"))  # old loose keys convert
        if saved is None or saved.checksum != self.tokenizer.checksum:
            raise ConfigError(
                f"cannot resume {self.dir / tag}: it was trained with tokenizer {saved and saved.checksum} "
                f"but the data now uses {self.tokenizer.checksum}"
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
    def save(self, engine, step: int, *, trainer: dict[str, Any], loader: dict[str, Any], retain: bool = True) -> Path:
        """Collective: every rank calls it. The folder is marked complete only after all ranks wrote,
        hashed and fsynced their files; a failure on any rank fails the save on all of them.
        `retain=False` leaves retention to a later `apply_retention()` (once the weights proved sound)."""
        tag = tag_for(step)
        folder = self.dir / tag
        created: str | None = None  # why rank 0 could not make the folder; every rank must learn it
        if self.dist.is_main:
            try:
                if folder.exists():  # an earlier, interrupted save of the same step
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
            except OSError as e:  # read-only, EACCES, a quota, a full disk
                created = describe_write_failure(Path(e.filename) if e.filename else folder, e).replace(
                    "could not write", "could not create the checkpoint folder", 1
                )
        created = broadcast_object(created)
        if created is not None:
            raise CheckpointWriteError(f"checkpoint {tag} not saved: {created}; the earlier checkpoints are intact")
        barrier()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "trainer": trainer,
            "loader": loader,
            "config": self.cfg.to_dict(),
            **self.tokenizer.to_meta(),
            "tokenizer_dir": self.tokenizer.location,  # for readers of versions before the typed reference
            "wandb_run_id": trainer.get("wandb_run_id"),
            "topology": self.topology(),
            "saved_at": time.time(),
        }
        client_state = {
            "armd_scale": {k: meta[k] for k in ("format", "step", "tokenizer_sha256", "topology")},
            "rng": _rng_state(),
        }
        local: dict[str, Any] = {}
        error: str | None = None
        written: list[str] = []
        try:
            with _recording_writes(engine) as written:
                engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
            mine = [p.relative_to(folder).as_posix() for p in map(Path, written) if folder in p.parents]
            local = digests(folder, mine, sync=True)  # still in the page cache: about 1 GB/s
        except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError ("unexpected pos")
            error = describe_write_failure(_failed_path(e, written, folder), e)
        results = gather_objects((local, error))
        errors = [e for _, e in results if e is not None]
        if errors:
            if self.dist.is_main:
                shutil.rmtree(folder, ignore_errors=True)  # useless without COMPLETE, and it holds disk space
            raise CheckpointWriteError(f"checkpoint {tag} not saved: {errors[0]}; the earlier checkpoints are intact")
        # every rank takes part, one parameter at a time; rank 0 holds the result on the CPU
        state = gather_full_weights(engine, tp=self.cfg.parallel.tp, keep=self.dist.is_main)
        ema = self.ema.gather(tp=self.cfg.parallel.tp, keep=self.dist.is_main) if self.ema is not None else None
        finished: str | None = None  # rank 0's failure to write the weights, hash the rest, write meta.json, ...
        if self.dist.is_main:
            assert state is not None
            files: dict[str, Any] = {}
            for part, _ in results:
                files.update(part)
            target = folder
            try:
                aliases = tied_aliases(build(self.cfg, device="meta"))
                record, files[MODEL_WEIGHTS] = write_checkpoint_weights(
                    folder, without_aliases(state, aliases), tied=aliases
                )
                del state
                if ema is not None:  # the EMA of the weights, recorded like them (train/ema.py)
                    ema_record, files[EMA_WEIGHTS] = write_checkpoint_weights(
                        folder, without_aliases(ema, aliases), tied=aliases, file=EMA_WEIGHTS
                    )
                    meta[EMA_WEIGHTS_KEY] = ema_record.to_dict()
                    del ema
                others = [n for n in recorded_files(folder, skip=(META, MARKER, UNIVERSAL)) if n not in files]
                files.update(digests(folder, others, sync=True))  # written by code that bypassed the engine's writer
                target = folder / META  # mark_complete names the file it was writing in the error it raises
                mark_complete(folder, {**meta, WEIGHTS: record.to_dict(), FILES: files})
                target = self.dir / LATEST
                set_latest(self.dir, tag)
            except OSError as e:  # a full disk between the weights and COMPLETE is the same fault as during them
                finished = describe_write_failure(Path(e.filename) if e.filename else target, e)
                shutil.rmtree(folder, ignore_errors=True)  # without COMPLETE (or `latest`) it is no checkpoint
        finished = broadcast_object(finished)
        if finished is not None:
            raise CheckpointWriteError(f"checkpoint {tag} not saved: {finished}; the earlier checkpoints are intact")
        if self.dist.is_main and retain:
            self.apply_retention()
        barrier()
        return folder

    def set_aside(self, step: int, suffix: str) -> Path | None:
        """Collective: move the complete checkpoint of `step`, if there is one, out of the resume path;
        returns where it went (on every rank)."""
        aside = None
        if self.dist.is_main and is_complete(self.dir / tag_for(step)):
            aside = _set_aside(self.dir / tag_for(step), suffix)
            self._refresh_latest()
        aside = broadcast_object(aside)
        barrier()
        return aside

    def set_aside_since(self, step: int, suffix: str) -> list[Path]:
        """Collective: move every complete checkpoint of `step` or later out of the resume path (weights
        that produced a divergence, and those trained on from them); returns where they went, oldest
        first (on every rank). Older checkpoints stay, so `latest` names the last sane one."""
        moved: list[Path] = []
        if self.dist.is_main:
            for tag in complete_tags(self.dir):
                if step_of(tag) >= step:
                    moved.append(_set_aside(self.dir / tag, suffix))
            if moved:
                self._refresh_latest()
        moved = broadcast_object(moved)
        barrier()
        return moved

    def _refresh_latest(self) -> None:
        """`latest` names the newest complete folder again after one was set aside."""
        tags = complete_tags(self.dir)
        if tags:
            set_latest(self.dir, tags[-1])
        else:
            (self.dir / LATEST).unlink(missing_ok=True)

    def apply_retention(self) -> None:
        """Keep the newest `keep_last` complete checkpoints and every `keep_every`-th step (rank 0's work;
        the other ranks return at once)."""
        if not self.dist.is_main:
            return
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


@contextlib.contextmanager
def _recording_writes(engine) -> Iterator[list[str]]:
    """The paths this rank's DeepSpeed engine writes during the block (through its checkpoint engine's
    `save(state_dict, path)`), so each rank hashes its own files while they are in the page cache.
    Files written another way are hashed by rank 0 afterwards, so nothing goes unrecorded."""
    written: list[str] = []
    writer = getattr(engine, "checkpoint_engine", None)
    if writer is None or not callable(getattr(writer, "save", None)):
        yield written
        return
    save = writer.save

    def recording_save(state_dict, path, *args, **kwargs):
        written.append(str(path))
        return save(state_dict, path, *args, **kwargs)

    writer.save = recording_save
    try:
        yield written
    finally:
        del writer.save  # the instance attribute goes; the class's method is back


def _failed_path(error: BaseException, written: list[str], folder: Path) -> Path:
    """The file a failed save was writing: the OSError's own, else the last one the engine started."""
    name = getattr(error, "filename", None)
    return Path(name) if name else Path(written[-1]) if written else folder


def _set_aside(folder: Path, suffix: str) -> Path:
    """Rename a step folder out of every reader's (and retention's) way, keeping it for inspection."""
    aside = folder.with_name(folder.name + suffix)
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}{suffix}{n}")
    folder.rename(aside)
    return aside


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
