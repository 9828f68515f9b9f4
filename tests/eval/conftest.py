"""Fixtures for the evaluation tests: the tiny training runs of tests/eval/runs.py."""

from .runs import (  # noqa: F401  (pytest fixtures)
    _one_thread,
    markov_run,
    text_ar_run,
    text_bpe_run,
    text_mdlm_run,
    text_run,
    text_wordpiece_run,
)
