"""Tiny training runs whose checkpoints the conversion and inspection tests read (built once per
session; tests that modify a checkpoint work on a copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.train.conftest import Run, data_cache, run_train  # noqa: F401  (data_cache is a fixture)

CHANGED = ("model.mlp_ratio=2.0", "train.lr=0.001")


def _train(factory: pytest.TempPathFactory, cache: Path, name: str, *overrides: str, nproc: int = 1) -> Run:
    run = run_train(factory.mktemp(name) / "run", cache, *overrides, nproc=nproc)
    assert run.returncode == 0, run.output[-3000:]
    assert run.checkpoints(), run.output[-3000:]
    return run


@pytest.fixture(scope="session")
def zero0_run(tmp_path_factory, data_cache) -> Run:
    """ZeRO-0, one process; checkpoints at steps 3 and 6."""
    return _train(tmp_path_factory, data_cache, "zero0")


@pytest.fixture(scope="session")
def zero1_run(tmp_path_factory, data_cache) -> Run:
    """ZeRO-1 on two processes (optimizer state partitioned over two data-parallel ranks)."""
    return _train(tmp_path_factory, data_cache, "zero1", "parallel.zero_stage=1", nproc=2)


@pytest.fixture(scope="session")
def tp2_run(tmp_path_factory, data_cache) -> Run:
    """Tensor parallelism of degree 2 (weights sharded over two model-parallel files), with a
    narrower MLP and another learning rate: also the "changed config" run for --diff."""
    return _train(tmp_path_factory, data_cache, "tp2", "parallel.tp=2", *CHANGED, nproc=2)


def copy_run(run: Run, dest: Path) -> Path:
    """A private copy of a run dir without cached universal forms (so conversions really run)."""
    shutil.copytree(run.dir, dest, ignore=shutil.ignore_patterns("universal", ".universal.*"))
    return dest
