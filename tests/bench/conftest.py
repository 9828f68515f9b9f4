"""Fixtures for the bench-script tests: the tiny training runs of tests/eval/runs.py."""

from tests.eval.runs import _one_thread, text_ar_run, text_mdlm_run  # noqa: F401  (pytest fixtures)
