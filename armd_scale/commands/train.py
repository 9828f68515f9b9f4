"""`armd train`: train or resume a model (no launcher, torchrun, the deepspeed launcher or srun).

Exit codes: 0 finished; 75 stopped early (signal or train.max_minutes) after saving a complete
checkpoint, so the job should be requeued; 1 failed.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_config_args, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..train.loop import TrainingDiverged, train

    try:
        cfg = config_from_args(args)
        return train(cfg)
    except (ConfigError, TrainingDiverged) as e:
        print(f"armd train: {e}", file=sys.stderr)
        return 1
