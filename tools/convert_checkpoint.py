#!/usr/bin/env python
"""Convert a checkpoint; the same as `armd convert` (see armd_scale/commands/convert.py).

python tools/convert_checkpoint.py --checkpoint RUN_DIR --to export --out exports/my-model
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from armd_scale.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
