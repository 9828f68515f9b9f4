"""The offline SBP sweep as a script: the same arguments and code as `armd eval sbp`.

    python tools/sbp_eval.py --checkpoint runs/tiny-cpu --streams 1,2,4,8 --length 128 \
        --num-samples 16 --judge runs/judge --out results/sbp

Writes OUT/results.json, OUT/results.md and OUT/results.png (docs/EVALUATION.md).
"""

from __future__ import annotations

import argparse
import sys

from armd_scale.commands.eval import add_sbp_args, run_sbp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sbp_args(parser)
    return run_sbp(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
