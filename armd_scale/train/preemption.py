"""Stop requests: preemption signals, Ctrl-C, wall-clock limits, from the first moment of the process.

Signal handlers only set a flag: saving inside a handler would race with the step in flight. They are
installed as the first thing `armd train` does, so a signal during the minutes of set-up (imports,
the rendezvous, data, the resume, the engine) is recorded rather than killing the process; it is
acted on at the next point where every rank can agree:

- before the engine exists (`check_setup`): exit 75 without a checkpoint, nothing having changed;
- at the first step boundary and every later one (`should_stop`, an all-reduce of the flag): save a
  checkpoint (unless the step already has one) and exit 75, which the Slurm script turns into a requeue.

SIGUSR1 and SIGTERM ask for that stop; so does the first Ctrl-C (SIGINT): save and stop cleanly. A
second Ctrl-C aborts at once (KeyboardInterrupt). Under `slurm/entrypoint.sh`, which must run torchrun
with USR1 ignored, a USR1 that arrives before this handler exists would be lost; the script records it
in the file named by `ARMD_STOP_FILE`, which counts as a request too.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from .distributed import all_reduce_max

STOP_FILE_ENV = "ARMD_STOP_FILE"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopDuringSetup(Exception):
    """A stop was requested before training could save anything; the run exits 75 with nothing changed."""

    def __init__(self, reason: str, phase: str):
        super().__init__(f"{reason} during set-up ({phase}): stopping before training, no checkpoint written")
        self.reason = reason
        self.phase = phase


class StopRequest:
    def __init__(self, max_minutes: float = 0.0, signals=STOP_SIGNALS):
        self.flag = False
        self.reason = ""
        self.deadline: float | None = None
        self._previous: dict = {}
        self.set_time_limit(max_minutes)
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. inside a test runner thread)
                pass

    def set_time_limit(self, max_minutes: float) -> None:
        """train.max_minutes, counted from now: the trainer calls it when the steps begin."""
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes > 0 else None

    def _handle(self, signum, frame) -> None:
        self.flag = True
        self.reason = self.reason or signal.Signals(signum).name
        if signum == signal.SIGINT:  # the next Ctrl-C is Python's own: KeyboardInterrupt, abort now
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def requested(self) -> bool:
        """This process's own view of a stop request: a signal, or the launcher's stop file."""
        if not self.flag:
            stop_file = os.environ.get(STOP_FILE_ENV)
            if stop_file and os.path.exists(stop_file):
                self.flag = True
                self.reason = self.reason or "SIGUSR1 (recorded by the launcher before the trainer's handler existed)"
        return self.flag

    def should_stop(self, device: torch.device) -> bool:
        """Collective, at a step boundary: a request on any rank, or the time limit."""
        local = self.requested()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            local = True
            self.reason = self.reason or "train.max_minutes reached"
        return self._agree(local, device)

    def check_setup(self, device: torch.device, phase: str) -> None:
        """Collective: raise StopDuringSetup if any rank has a request (set-up phase `phase` just ended)."""
        if self._agree(self.requested(), device):
            raise StopDuringSetup(self.reason, phase)

    def _agree(self, local: bool, device: torch.device) -> bool:
        """Collective: whether any rank has a request. A rank without one of its own takes the strongest
        reason among the ranks (signals are delivered to the nodes of a job at slightly different times,
        so which rank saw it first is a race; the logged reason must not depend on it)."""
        code = _reason_code(self.reason) if local else 0
        agreed = int(all_reduce_max(float(code), device))
        if agreed and not self.reason:
            self.reason = _AGREED_REASONS[agreed]
        return agreed > 0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


# What a rank without a request of its own logs, by the strongest request of any rank (all-reduce max).
_AGREED_REASONS = {
    1: "a stop request on another rank",
    2: "train.max_minutes reached",
    3: "SIGINT",
    4: "SIGTERM",
    5: "SIGUSR1",
}


def _reason_code(reason: str) -> int:
    """The code of a local request's reason (the launcher's stop file counts as the SIGUSR1 it records)."""
    for code in sorted(_AGREED_REASONS, reverse=True):
        if code > 1 and reason.startswith(_AGREED_REASONS[code]):
            return code
    return 1
