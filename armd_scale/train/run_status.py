"""How a training invocation ended (RUN_DIR/exit_status.json) and the optional work after it.

The status is written the moment training ends, before anything optional (the end-of-run sample)
runs: launchers that cannot see the trainer's exit code (torchrun, slurm/entrypoint.sh) read this
file, and a run whose last checkpoint is saved has finished, whatever happens next. Optional work
that fails is reported on the console and in the status file (`end_of_run_errors`), and the status
stays what training made it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import write_atomic
from ..error_text import error_text

STATUS_FILE = "exit_status.json"


def write_exit_status(run_dir: Path, code: int, step: int, reason: str, **extra) -> None:
    """RUN_DIR/exit_status.json: how the last invocation ended, written whole (temp file, then rename).
    slurm/entrypoint.sh turns code 75 into a requeue."""
    status = {"code": code, "step": step, "reason": reason, "time": time.time(), **extra}
    write_atomic(run_dir / STATUS_FILE, json.dumps(status) + "\n")


def finish_run(
    run_dir: Path,
    code: int,
    step: int,
    reason: str,
    optional: Sequence[tuple[str, Callable[[], None]]] = (),
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Write the final status, then run each optional `(name, work)`; returns {name: error} of those that
    failed. An error in optional work never changes the status or the exit code."""
    write_exit_status(run_dir, code, step, reason)
    errors: dict[str, str] = {}
    for name, work in optional:
        try:
            work()
        except Exception as e:  # noqa: BLE001 - any failure of optional work is reported, never raised
            errors[name] = error_text(e)
            say(f"end-of-run {name} failed ({errors[name]}); training itself ended as '{reason}' (code {code})")
    if errors:
        write_exit_status(run_dir, code, step, reason, end_of_run_errors=errors)
    return errors
