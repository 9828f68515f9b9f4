"""Preemption and wall-clock limits.

Signal handlers only set a flag: saving inside a handler would race with the step in flight. At each
step boundary the ranks agree (all-reduce MAX of the flag) so they all save the same step and exit
together with EXIT_PREEMPTED (75), which the Slurm script turns into a requeue.
"""

from __future__ import annotations

import signal
import time

import torch

from .distributed import all_reduce_max


class StopRequest:
    def __init__(self, max_minutes: float = 0.0, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.flag = False
        self.reason = ""
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes > 0 else None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. inside a test runner thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.flag = True
        self.reason = signal.Signals(signum).name

    def should_stop(self, device: torch.device) -> bool:
        """Collective: every rank must call it at the same step boundary."""
        local = self.flag
        if self.deadline is not None and time.monotonic() >= self.deadline:
            local = True
            self.reason = self.reason or "train.max_minutes reached"
        agreed = all_reduce_max(1.0 if local else 0.0, device) > 0
        if agreed and not self.reason:
            self.reason = "another rank was signalled"
        return agreed

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
