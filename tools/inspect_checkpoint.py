#!/usr/bin/env python
"""Inspect or diff checkpoints; the same as `armd inspect` (see armd_scale/commands/inspect.py).

python tools/inspect_checkpoint.py RUN_DIR
python tools/inspect_checkpoint.py --diff RUN_A/checkpoints/step_00000100 RUN_B --json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from armd_scale.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
