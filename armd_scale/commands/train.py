"""`armd train`: train or resume a model (no launcher, torchrun, the deepspeed launcher or srun).

Exit codes: 0 finished; 75 stopped early (SIGUSR1/SIGTERM/Ctrl-C, train.max_minutes or
train.stop_at_step) after saving a complete checkpoint, or during set-up before anything changed, so
the job should be requeued; 1 failed; 130 a second Ctrl-C aborted at once. Every outcome after the
run directory is locked is also in RUN_DIR/exit_status.json.

Under an elastic torchrun with restarts (TORCHELASTIC_MAX_RESTARTS > 0) a worker exiting with 75
would be restarted by the agent, so there the early stop exits 0 and the launcher reads
RUN_DIR/exit_status.json instead (slurm/entrypoint.sh does).

`--dry-run` resolves the config and prints the DeepSpeed config, parameter counts, FLOPs, tokens per
step and per-GPU memory for `--world-size` GPUs (default: $WORLD_SIZE, else 1), then exits without
training, touching the run directory or reading data (armd_scale/train/dry_run.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from .common import add_config_args, config_from_args, positive_int

if TYPE_CHECKING:
    from ..config import Config
    from ..train.run_data import DataSources


def register(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the DeepSpeed config, sizes, FLOPs and memory; do not train"
    )
    parser.add_argument(
        "--world-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="GPUs the dry run plans for (default: $WORLD_SIZE, else 1)",
    )
    parser.set_defaults(func=run)


def dry_run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..train.dry_run import dry_run as plan
    from ..train.dry_run import format_dry_run

    world_size = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    try:
        if world_size < 1:
            raise ConfigError(f"--world-size {world_size} must be >= 1")
        cfg = config_from_args(args)
        print(format_dry_run(cfg, plan(cfg, world_size)))
    except ConfigError as e:
        print(f"armd train --dry-run: {e}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return dry_run(args)
    # First of all: a SIGUSR1/SIGTERM/SIGINT from now on is a stop request, acted on where it is safe,
    # never the default action that kills the process in the middle of minutes of set-up.
    from ..train.preemption import StopRequest

    stop = StopRequest()
    try:
        return _train(args, stop)
    finally:
        stop.restore()


def prepare_data(cfg: Config, *, build: bool | None = None, progress: bool | None = None) -> DataSources:
    """The run's shard sets, prepared: a built-in (`builtin:`) or synthetic corpus is built on first
    use into `data.cache_dir` (tokenizer training included); shard sets named by URL pass unchanged.

    Here, in the command layer, so the trainer (`armd_scale.train`) only ever reads prepared shards.
    Every process of a launch calls it: local rank 0 of each node builds (default `build`), the others
    wait for its copy. Progress bars follow `log.progress_bar` on global rank 0 only."""
    from ..data.prepare.builtin import ensure_builtin_dataset
    from ..train.run_data import DataSources

    if build is None:  # as init_distributed reads the launcher: no RANK is a world of one
        build = "RANK" not in os.environ or os.environ.get("LOCAL_RANK", "0") == "0"
    if progress is None:
        progress = os.environ.get("RANK", "0") == "0" and cfg.log.progress_bar
    train, val, tokenizer = ensure_builtin_dataset(cfg.data, build=build, progress=progress)
    return DataSources(train, val, tokenizer)


def _train(args: argparse.Namespace, stop) -> int:
    from ..checkpoints.integrity import CorruptCheckpointError
    from ..config import ConfigError
    from ..data.errors import DataError
    from ..train import EXIT_INTERRUPTED, EXIT_PREEMPTED
    from ..train.checkpoint import CheckpointWriteError
    from ..train.loop import TrainingDiverged, train

    try:
        cfg = config_from_args(args)
        code = train(cfg, stop, prepare_data(cfg))
    except (ConfigError, DataError, CorruptCheckpointError, CheckpointWriteError, TrainingDiverged) as e:
        print(f"armd train: {e}", file=sys.stderr)  # the status file says the same (RUN_DIR/exit_status.json)
        return 1
    except KeyboardInterrupt:
        print("armd train: interrupted (a second Ctrl-C); no checkpoint was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if code == EXIT_PREEMPTED and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        return 0
    return code
