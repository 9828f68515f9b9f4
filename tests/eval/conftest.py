"""Fixtures for the evaluation tests: the tiny training runs of tests/eval/runs.py."""

from .runs import _one_thread, markov_run, text_ar_run, text_mdlm_run, text_run  # noqa: F401  (pytest fixtures)
