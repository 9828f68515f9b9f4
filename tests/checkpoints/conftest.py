"""Tiny training runs whose checkpoints the conversion and inspection tests read (built once per
session; tests that modify a checkpoint work on a copy)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from armd_scale.commands.train import prepare_data
from armd_scale.config import Config
from armd_scale.train.distributed import DistInfo
from armd_scale.train.objective import make_objective
from armd_scale.train.run_data import open_train_data
from tests.train.conftest import Run, run_train

CHANGED = ("model.mlp_ratio=2.0", "train.lr=0.001")
# Validation at the last step: the engine's own l2r NLL, the reference that conversions must reproduce.
VALIDATE_AT_END = ("train.eval_every=6", "train.eval_batches=2")


def _train(factory: pytest.TempPathFactory, cache: Path, name: str, *overrides: str, nproc: int = 1) -> Run:
    run = run_train(factory.mktemp(name) / "run", cache, *VALIDATE_AT_END, *overrides, nproc=nproc)
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
def zero2_run(tmp_path_factory, data_cache) -> Run:
    """ZeRO-2 on two processes (gradients and optimizer state partitioned)."""
    return _train(tmp_path_factory, data_cache, "zero2", "parallel.zero_stage=2", nproc=2)


@pytest.fixture(scope="session")
def zero3_run(tmp_path_factory, data_cache) -> Run:
    """ZeRO-3 on two processes (the parameters themselves partitioned: no rank holds the whole model)."""
    return _train(tmp_path_factory, data_cache, "zero3", "parallel.zero_stage=3", nproc=2)


@pytest.fixture(scope="session")
def tp2_run(tmp_path_factory, data_cache) -> Run:
    """Tensor parallelism of degree 2 (weights sharded over two model-parallel files), with a
    narrower MLP and another learning rate: also the "changed config" run for --diff."""
    return _train(tmp_path_factory, data_cache, "tp2", "parallel.tp=2", *CHANGED, nproc=2)


def engine_val_nll(run: Run) -> float:
    """The validation NLL the DeepSpeed engine computed at the run's last step (metrics.jsonl), with
    the weights as they lived in training: sharded under tensor parallelism, partitioned under ZeRO."""
    values = [r["val/nll"] for r in run.records() if "val/nll" in r and r["step"] == 6]
    assert len(values) == 1, run.output[-3000:]
    return values[0]


@torch.no_grad()
def recomputed_val_nll(model: torch.nn.Module, cfg: Config, dp_world: int) -> float:
    """The same validation NLL computed with a plain module: the first `train.eval_batches` validation
    micro-batches of every data-parallel rank, exact l2r NLL per token, as the trainer's `evaluate`."""
    data = open_train_data(cfg, DistInfo(0, 1, 0, torch.device("cpu"), "gloo"), prepare_data(cfg, build=False))
    objective = make_objective(cfg, cfg.train.global_batch_size)
    total, count = 0.0, 0
    for dp_rank in range(dp_world):
        loader = data.val_loader(cfg.train.micro_batch_size, dp_rank, dp_world)
        assert loader is not None
        try:
            for i, tokens in enumerate(loader):
                if i >= cfg.train.eval_batches:
                    break
                first = (i * dp_world + dp_rank) * cfg.train.micro_batch_size
                nll, n = objective.eval_batch(model.eval(), tokens, first)
                total, count = total + nll, count + n
        finally:
            loader.close()
    return total / count


def copy_run(run: Run, dest: Path) -> Path:
    """A private copy of a run dir without cached universal forms (so conversions really run)."""
    shutil.copytree(run.dir, dest, ignore=shutil.ignore_patterns("universal", ".universal.*"))
    return dest


def without_weights_file(path: Path) -> Path:
    """Turn every complete checkpoint under `path` (a run directory or one checkpoint folder) into the
    layout saved before checkpoints carried model.safetensors: the file, its `weights` record and its
    `files` entry removed, COMPLETE's checksum of meta.json updated. Returns `path`."""
    folders = [path] if (path / "meta.json").is_file() else sorted((path / "checkpoints").glob("step_*"))
    for folder in folders:
        (folder / "model.safetensors").unlink(missing_ok=True)
        meta = json.loads((folder / "meta.json").read_text())
        meta.pop("weights", None)
        meta.get("files", {}).pop("model.safetensors", None)
        write_meta(folder, meta)
    return path


def write_meta(folder: Path, meta: dict) -> None:
    """Replace a checkpoint's meta.json and the checksum COMPLETE records of it (as a save would write them)."""
    text = json.dumps(meta, indent=1)
    (folder / "meta.json").write_text(text)
    marker = json.loads((folder / "COMPLETE").read_text())
    marker["meta_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (folder / "COMPLETE").write_text(json.dumps(marker))
