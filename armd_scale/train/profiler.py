"""`train.profile`: torch.profiler traces of chosen optimizer steps, on rank 0, under RUN_DIR/profile.

    armd train ... train.profile.start_step=20 train.profile.steps=3

traces optimizer steps 20, 21 and 22 (steps count from 1, as in metrics.jsonl), after
`train.profile.warmup` steps that run under the profiler unrecorded, so one-off work (CUDA context,
cuDNN/cuBLAS heuristics, torch.compile) lands outside the window. Written when the window closes:
- `RUN_DIR/profile/trace_steps_20-22.json.gz`: a Chrome trace (open in Perfetto or chrome://tracing);
- `RUN_DIR/profile/summary_steps_20-22.txt`: the operators sorted by their own device time (CPU time
  on a CPU run), as `torch.profiler`'s key_averages table prints them.
Only rank 0 profiles (ranks run the same program; one trace is what people open); the others pay
nothing. A run resumed past the window profiles nothing and says so. Inside the trace,
`ProfilerStep#k` counts the steps of this invocation from 0 (a resumed run starts again at 0); the
file names carry the optimizer steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..atomic import atomic_path, write_atomic
from ..config import ProfileConfig

PROFILE_DIR = "profile"


class StepProfiler:
    """Call `start()` before the first step, `step()` after every optimizer step, `stop()` at the end."""

    def __init__(
        self,
        cfg: ProfileConfig,
        run_dir: Path,
        *,
        is_main: bool,
        device: torch.device,
        first_step: int,
        say: Callable[[str], None] = print,
    ):
        self.cfg = cfg
        self.out_dir = run_dir / PROFILE_DIR
        self.say = say
        self.prof: torch.profiler.profile | None = None
        self.first = cfg.start_step
        self.last = cfg.start_step + cfg.steps - 1
        if not cfg.start_step or not is_main:
            return
        # The profiler counts the steps it sees from 0; the first one the loop runs is first_step + 1.
        offset = cfg.start_step - (first_step + 1)
        if offset < 0:
            say(f"train.profile: the run starts after step {first_step}, past start_step={cfg.start_step}; no trace")
            return
        warmup = min(cfg.warmup, offset)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=offset - warmup, warmup=warmup, active=cfg.steps, repeat=1),
            on_trace_ready=self._write,
            record_shapes=cfg.record_shapes,
            profile_memory=cfg.profile_memory,
            with_stack=cfg.with_stack,
        )

    @property
    def active(self) -> bool:
        return self.prof is not None

    def start(self) -> None:
        if self.prof is not None:
            self.prof.start()

    def step(self) -> None:
        if self.prof is not None:
            self.prof.step()

    def stop(self) -> None:
        """End profiling (training ended, maybe before the window closed: what was recorded is written)."""
        if self.prof is not None:
            self.prof.stop()
            self.prof = None

    def _write(self, prof: torch.profiler.profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"steps_{self.first}-{self.last}"
        trace = self.out_dir / f"trace_{name}.json.gz"
        with atomic_path(trace) as tmp:
            prof.export_chrome_trace(str(tmp))
        table = prof.key_averages().table(sort_by=self.sort_key, row_limit=40)
        summary = self.out_dir / f"summary_{name}.txt"
        write_atomic(summary, table + "\n")
        self.say(f"train.profile: steps {self.first}-{self.last} traced -> {trace} and {summary.name}")
