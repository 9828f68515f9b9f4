"""`armd inspect PATH [--json]` and `armd inspect --diff A B [--json]`.

PATH is a run dir (its newest complete checkpoint, plus the list of all), a checkpoint folder, a
universal folder or an export dir. Reports step, config summary, tokenizer hash, topology (world
size, ZeRO stage, TP degree, precision), parameter count, loader cursor, wandb run id, and files
with sizes; every pickle-based file is opened with the restricted unpickler, so a tampered folder
fails here, by name. --diff lists config and topology differences (dotted keys, both values), the
steps and the per-parameter max abs weight difference. Exit codes: 0 reported; 1 refused or failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", metavar="PATH", help="run dir, checkpoint folder or export dir")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"), help="compare two checkpoints instead")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    from .common import add_weights_arg

    add_weights_arg(parser)  # which weights --diff compares and the summary names
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError

    if bool(args.path) == bool(args.diff):
        print("armd inspect: give either PATH or --diff A B", file=sys.stderr)
        return 2
    stdout = sys.stdout
    render: Callable[[dict[str, Any]], str]
    try:
        # Library output (DeepSpeed logs and reports on stdout) goes to stderr: stdout is the result only.
        with contextlib.redirect_stdout(sys.stderr):
            if args.diff:
                from ..checkpoints.diff import diff, format_diff

                result, render = diff(*args.diff), format_diff
            else:
                from ..checkpoints.summary import format_summary, summarize

                result, render = summarize(args.path), format_summary
    except (ConfigError, OSError, ValueError) as e:  # UnsafeCheckpointError is a ValueError
        print(f"armd inspect: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else render(result), file=stdout)
    return 0
