"""The evaluation tests run in-process CLI calls on one torch thread (tests/eval/runs.py)."""

from .runs import _one_thread  # noqa: F401  (an autouse fixture: applies to this directory)
