"""The bench-script tests run in-process calls on one torch thread (tests/eval/runs.py)."""

from tests.eval.runs import _one_thread  # noqa: F401  (an autouse fixture: applies to this directory)
