"""`armd train`: train or resume a model (no launcher, torchrun, the deepspeed launcher or srun).

Exit codes: 0 finished; 75 stopped early (SIGUSR1/SIGTERM, train.max_minutes or train.stop_at_step)
after saving a complete checkpoint, so the job should be requeued; 1 failed.

Under an elastic torchrun with restarts (TORCHELASTIC_MAX_RESTARTS > 0) a worker exiting with 75
would be restarted by the agent, so there the early stop exits 0 and the launcher reads
RUN_DIR/exit_status.json instead (slurm/entrypoint.sh does).
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import add_config_args, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..train import EXIT_PREEMPTED
    from ..train.loop import TrainingDiverged, train

    try:
        cfg = config_from_args(args)
        code = train(cfg)
    except (ConfigError, TrainingDiverged) as e:
        print(f"armd train: {e}", file=sys.stderr)
        return 1
    if code == EXIT_PREEMPTED and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        return 0
    return code
