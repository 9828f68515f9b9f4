"""open_train_data: resolving the run's data, including the first build of a built-in corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from armd_scale.config import load_config
from armd_scale.train.distributed import DistInfo
from armd_scale.train.run_data import open_train_data


@pytest.mark.parametrize("bars", [False, True])
def test_building_the_builtin_corpus_follows_log_progress_bar(tmp_path: Path, capfd, monkeypatch, bars: bool) -> None:
    """A run with log.progress_bar=false (Slurm logs, the study scripts) must not fill its log with
    the shard builder's bars the first time it builds a built-in corpus; with it on, the bars show.
    The builder is the process whose DistInfo says local rank 0, whatever a stray LOCAL_RANK says."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    cfg = load_config(
        "tiny-cpu",
        [
            "data.train=builtin:pydoc",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"log.progress_bar={str(bars).lower()}",
        ],
    )
    capfd.readouterr()
    open_train_data(cfg, DistInfo(0, 1, 0, torch.device("cpu"), "gloo"))
    err = capfd.readouterr().err
    assert ("shards: tokenizing" in err) is bars, err[-500:]
