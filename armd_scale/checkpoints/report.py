"""What a conversion reports: progress lines while it runs, and a record of what it validated."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO


class ConversionError(RuntimeError):
    """A conversion cannot be done, or its result does not reproduce the source."""


class Progress:
    """Timestamped progress lines on stderr (stdout is kept for results and --json)."""

    def __init__(self, prefix: str = "armd convert", stream: TextIO | None = None, quiet: bool = False):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.prefix} {time.perf_counter() - self.start:6.1f}s] {message}", file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class ConversionReport:
    to: str  # "universal" or "export"
    source: str
    source_kind: str
    out: str
    step: int | None
    reference: str  # which weights the result was compared against
    batch: dict[str, Any]
    max_abs_logit_diff: float
    exact_required: bool  # fp32 results must reproduce the reference bit for bit
    dtype: str = "fp32"
    parameters: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, to: str, source: Any, out: str | Path, progress: Progress, **validated: Any) -> ConversionReport:
        """The report of converting `source` (an opened checkpoint: its folder, kind and step) into `out`,
        timed by `progress`; `validated` holds what the conversion compared and found."""
        return cls(
            to=to,
            source=str(source.folder),
            source_kind=source.kind,
            out=str(out),
            step=source.step,
            seconds=progress.elapsed,
            **validated,
        )

    def require_exact(self, what: str) -> None:
        """Refuse a result that must reproduce its source bit for bit and does not (`what` names it)."""
        if self.exact_required and self.max_abs_logit_diff != 0:
            raise ConversionError(
                f"{what} of {self.source} does not reproduce it: "
                f"max abs logit difference {self.max_abs_logit_diff:g} (must be 0)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.max_abs_logit_diff == 0:
            verdict = "exact"
        else:
            verdict = "FAILED: must be 0" if self.exact_required else "rounding, see note"
        b = self.batch
        lines = [
            f"converted {self.source} ({self.source_kind}, step {self.step}) -> {self.to}: {self.out}",
            f"validation: max abs logit difference {self.max_abs_logit_diff:.6g} ({verdict}) on a fixed batch "
            f"({b['batch']}x{b['seq_len']} tokens, seed {b['seed']}, {b['order']} order) against {self.reference}",
            f"parameters: {self.parameters:,}; dtype {self.dtype}; {self.seconds:.1f}s",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])
