"""Which chunks one rank reads, and when: the steps of a rank's lanes as read plans.

A rank owns a contiguous range of lanes (see `sample_order`). Each lane is in one shuffle window at
a time; the window's chunks are needed from its first step to its last. `plan_steps` walks the
steps and, for each, says which row of which chunk fills each of the rank's places, which chunks
start being needed (`acquire`: the windows entered at this step) and which are no longer needed
(`release`: the windows left). The loader turns acquire/release into read-ahead and freeing, so a
rank holds only the chunks of its lanes' current windows plus what it reads ahead, and the chunks
that two of its lanes share (`SampleOrder.shared_chunks`, at most one per lane), which it keeps for
the whole epoch: one lane needs such a chunk at the start of the epoch, the other at its end.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from armd_scale.data.loading.sample_order import LaneWindow, SampleOrder


@dataclass
class StepPlan:
    epoch: int
    step: int
    keys: np.ndarray  # chunk key of each of the rank's places, in lane order
    rows: np.ndarray  # row within that chunk
    pieces: np.ndarray  # piece of the epoch stream (for stand-ins of bad chunks)
    acquire: list[int]
    release: list[int]


def plan_steps(
    order: SampleOrder, lanes: range, epoch: int, step: int, *, loop: bool
) -> Generator[StepPlan, None, None]:
    """Plans from (epoch, step) on; with loop=False they end with the epoch."""
    count = len(lanes)
    windows: list[LaneWindow | None] = [None] * count
    held: list[list[int]] = [[] for _ in range(count)]
    stops = np.zeros(count, dtype=np.int64)  # where each lane's current window ends
    pinned: list[int] = []  # chunks shared by two of the lanes, held for the epoch
    pinned_epoch = None
    while step < order.steps_per_epoch:
        acquire: list[int] = []
        release: list[int] = []
        if pinned_epoch != epoch:
            release += pinned
            pinned, pinned_epoch = order.shared_chunks(epoch, lanes), epoch
            acquire += pinned
        for i in np.flatnonzero(stops <= step):
            window = order.window_at(epoch, lanes[i], step)
            keys = window.distinct_keys()
            acquire += keys
            release += held[i]
            windows[i], held[i], stops[i] = window, keys, window.stop
        current = [w for w in windows if w is not None]
        offsets = [step - w.start for w in current]
        yield StepPlan(
            epoch,
            step,
            np.array([w.keys[o] for w, o in zip(current, offsets, strict=True)], dtype=np.int64),
            np.array([w.rows[o] for w, o in zip(current, offsets, strict=True)], dtype=np.int64),
            np.array([w.pieces[o] for w, o in zip(current, offsets, strict=True)], dtype=np.int64),
            acquire,
            release,
        )
        step += 1
        if step == order.steps_per_epoch and loop:
            epoch, step = epoch + 1, 0
            stops[:] = 0  # every lane enters the first window of the new epoch
