"""DeepSpeed universal checkpoints: resharding to another world size or TP degree, and their weights.

What works with DeepSpeed 0.19 (each case measured: weights exact, resumed losses within 5e-7):
- ZeRO-1/2/3: convert with `ds_to_universal`, load with `checkpoint.load_universal` on any data-parallel
  size; ZeRO-1/2 also on any TP degree; ZeRO-3 from TP>1 down to TP=1.
- ZeRO-0 has no optimizer shards to convert; its files load directly on another data-parallel size
  (same TP degree).
- Changing the ZeRO stage across a resume and ZeRO-3 moving to a *higher* TP degree do not work; they
  are refused with a message saying what to do.

A folder written by `armd convert --to universal` holds only the universal form (its meta.json says
`topology.layout: universal`); it is always loaded through `load_universal`, on any topology above.

Every DeepSpeed load here runs under `weights_only_loading()`, which forces torch's restricted
unpickler even where DeepSpeed asks for full unpickling.

Only a resume writes the universal form into a run folder (`convert_to_universal`, cached there).
Readers that need the weights of a checkpoint saved without `model.safetensors` (`universal_state`)
read that cache if a resume left an intact one, and otherwise convert into a temporary directory
outside the run folder (the system's temporary directory, `TMPDIR`), read it and delete it: reading
never writes into a run folder, so it works on a read-only or shared filesystem and cannot race a
trainer. The temporary directory of a reader killed mid-way is removed by the next such read on
the same host.

The cached universal form is staged beside the step folder (`checkpoints/.step_N.universal.tmp-HOST-PID`),
never inside it, and renamed into `step_N/universal` when complete, with `checksums.json` listing its
files: a conversion killed at any point leaves the checkpoint folder exactly as the save wrote it.
The staging of a dead process on this host is removed by the next conversion of that folder; a
cached form whose files no longer match their checksums is deleted and converted again.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import torch

from ..atomic import atomic_dir
from ..config import ConfigError
from ..processes import pid_alive
from .integrity import CorruptCheckpointError, digests, fsync_dir, recorded_files, verify, write_durable
from .layout import CHECKSUMS, LATEST_UNIVERSAL, UNIVERSAL, universal_tag_dir
from .safe_load import assert_weights_only_loadable, safe_torch_load, weights_only_loading

log = logging.getLogger(__name__)


class ReshardError(ConfigError):
    """A checkpoint cannot be loaded on the requested topology."""


def check_reshard(saved: dict, *, world_size: int, tp: int, zero_stage: int) -> bool:
    """Whether loading `saved` (a checkpoint's topology) needs the universal format; raise if impossible."""
    same = saved["world_size"] == world_size and saved["tp"] == tp
    if saved["zero_stage"] != zero_stage:
        raise ReshardError(
            f"the checkpoint was trained with parallel.zero_stage={saved['zero_stage']} and the run asks for "
            f"{zero_stage}; DeepSpeed cannot change the ZeRO stage on resume. Resume with "
            f"parallel.zero_stage={saved['zero_stage']}, or export the weights (armd convert --to export) "
            "and start a new run"
        )
    universal_only = saved.get("layout") == UNIVERSAL  # no per-rank files left to load directly
    if same and not universal_only:
        return False
    if saved["zero_stage"] == 0:
        if saved["tp"] != tp:
            raise ReshardError(
                f"a ZeRO-0 checkpoint cannot change its tensor-parallel degree ({saved['tp']} -> {tp}): it has no "
                f"optimizer shards to convert. Resume with parallel.tp={saved['tp']} (any number of data-parallel "
                "ranks works), or train with parallel.zero_stage>=1 to keep checkpoints reshardable"
            )
        return False  # ZeRO-0 states are complete per TP rank: load directly on the new DP size
    if saved["zero_stage"] == 3 and tp > saved["tp"]:
        raise ReshardError(
            f"ZeRO-3 checkpoints cannot move to a higher tensor-parallel degree ({saved['tp']} -> {tp}); "
            "resume with the same or a lower parallel.tp"
        )
    return True


def convert_to_universal(folder: Path) -> Path:
    """Convert checkpoint folder `.../step_N` into `.../step_N/universal/step_N` (once; cached).

    Returns the directory to pass to `engine.load_checkpoint` (with tag = folder name).
    """
    folder = Path(folder)
    target = folder / UNIVERSAL
    _remove_dead_staging(folder)
    if (target / folder.name).is_dir() and (target / LATEST_UNIVERSAL).is_file():
        if _cache_intact(target):
            return target
        shutil.rmtree(target)  # a damaged cache is only a cache: convert again from the checkpoint's own files
    converted = universal_tag_dir(folder)
    if converted is not None and not glob.glob(str(folder / "*model_states.pt")):
        # written by `armd convert --to universal` (nothing left to convert) but copied under another name
        raise ReshardError(
            f"{folder} holds the universal checkpoint '{converted.name}' but is named '{folder.name}'; DeepSpeed "
            f"loads it by that tag: rename the folder to {converted.name}"
        )
    with atomic_dir(target, staging=staging_dir(folder)) as staging:  # cut short: nothing inside the folder
        write_universal(folder, staging / folder.name)
        names = recorded_files(staging)
        write_durable(staging / CHECKSUMS, json.dumps(digests(staging, names, sync=True), indent=1))
    fsync_dir(folder)
    return target


SCRATCH_PREFIX = "armd-universal-"  # + HOST-PID-random: a reader's temporary universal form
SCRATCH_RE = re.compile(rf"^{SCRATCH_PREFIX}(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def universal_state(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the ZeRO-1/2/3 checkpoint `folder` through the universal form, without
    writing into `folder` or beside it: the cache a resume left there if it is intact, else a
    conversion in a temporary directory (removed afterwards)."""
    folder = Path(folder)
    cached = folder / UNIVERSAL
    if (cached / folder.name).is_dir() and (cached / LATEST_UNIVERSAL).is_file() and _cache_intact(cached):
        return read_universal(cached / folder.name)
    _remove_dead_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{socket.gethostname()}-{os.getpid()}-"))
    try:
        write_universal(folder, scratch / folder.name)
        return read_universal(scratch / folder.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_dead_scratch() -> None:
    """Remove the temporary universal forms that readers killed mid-way on this host left behind."""
    host = socket.gethostname()
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        m = SCRATCH_RE.match(path.name)
        if m and m["host"] == host and not pid_alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)


STAGING_RE = re.compile(r"^\.(?P<tag>.+)\.universal\.tmp-(?P<host>.+)-(?P<pid>\d+)$")


def staging_dir(folder: Path) -> Path:
    """Where the universal form of `folder` is written before it is renamed into `folder/universal`:
    a hidden sibling (same filesystem), named by host and process so concurrent converters never share one."""
    return folder.parent / f".{folder.name}.{UNIVERSAL}.tmp-{socket.gethostname()}-{os.getpid()}"


def _remove_dead_staging(folder: Path) -> None:
    """Remove what killed conversions of `folder` left: staging of a dead process on this host (the
    staging of another host's process cannot be judged and stays), and the in-folder staging
    (`.universal.tmpPID`) that earlier versions wrote."""
    host = socket.gethostname()
    for path in folder.parent.glob(f".{folder.name}.{UNIVERSAL}.tmp-*"):
        m = STAGING_RE.match(path.name)
        if m and m["tag"] == folder.name and m["host"] == host and not pid_alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(f".{UNIVERSAL}.tmp*"):
        pid = path.name.rsplit("tmp", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _cache_intact(target: Path) -> bool:
    """Whether a cached universal form still matches the checksums written with it (a cache made
    before checksums existed is trusted as it is)."""
    listing = target / CHECKSUMS
    if not listing.is_file():
        return True
    try:
        verify(target, json.loads(listing.read_text()), named_by=CHECKSUMS)
    except (CorruptCheckpointError, ValueError) as e:
        log.warning("the cached universal form %s is damaged (%s); converting again", target, e)
        return False
    return True


def write_universal(folder: Path, output: Path) -> None:
    """Run DeepSpeed's `ds_to_universal` on checkpoint `folder`, writing the tag folder `output`
    (and `latest_universal` beside it). Every input file is first checked to be weights-only
    loadable, so a tampered file is refused by name before DeepSpeed opens anything.

    DeepSpeed collects its input files recursively, so a converted `universal/` subfolder (or the
    staging folder of an interrupted conversion) would be counted as extra ranks; it reads a view of
    the folder's own files instead (symlinks in a hidden temporary directory beside `output`)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    folder = Path(folder).absolute()
    assert_weights_only_loadable(folder, skip=(UNIVERSAL,))  # the files it reads: not a cached universal form
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # beside the output (a hidden name), so a process killed here leaves it where its output's debris is
    with tempfile.TemporaryDirectory(prefix=".armd-ds-input-", dir=output.parent) as view:
        for path in folder.iterdir():
            if path.is_file():
                os.symlink(path, Path(view) / path.name)
        args = argparse.Namespace(
            input_folder=view,
            output_folder=str(output),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=False,
        )
        # ds_to_universal reports on stdout; keep stdout for the commands' own results (inspect --json).
        with weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
            ds_to_universal(args)


def read_universal(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict from a universal checkpoint folder (`.../universal/<tag>`)."""
    folder = Path(folder)
    states = sorted(folder.glob("*model_states.pt"))
    if not states:
        raise FileNotFoundError(f"no *model_states.pt in universal checkpoint {folder}")
    model_states = safe_torch_load(states[0])
    shapes = {k: tuple(v) for group in (model_states.get("param_shapes") or []) for k, v in group.items()}
    info = model_states.get("universal_checkpoint_info") or {}
    affine = (info.get("affine_map") or {}).get("params", {})
    full_shapes = {k[1:-1].replace("\\", ""): tuple(v["logical_shape"]) for k, v in affine.items()}
    state = {}
    for path in sorted((folder / "zero").glob("*/fp32.pt")):
        name = path.parent.name
        tensor = safe_torch_load(path)
        tensor = tensor["param"] if isinstance(tensor, dict) else tensor
        shape = full_shapes.get(name, shapes.get(name))
        if tensor.dim() == 1 and shape is not None and len(shape) > 1:  # ZeRO-3 stores flat tensors
            tensor = tensor.view(shape)
        state[name] = tensor.float()
    return state  # each tied tensor once, under the name DeepSpeed kept (model_io.load_weights restores ties)
