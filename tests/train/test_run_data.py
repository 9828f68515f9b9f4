"""The run's data: the command layer prepares it (the first build of a built-in corpus), the trainer
opens the prepared shard sets and records what they say in run_facts.json, never in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from armd_scale.commands.train import prepare_data
from armd_scale.config import ConfigError, load_config
from armd_scale.train.distributed import DistInfo
from armd_scale.train.run_data import DataSources, open_train_data


@pytest.mark.parametrize("bars", [False, True])
def test_building_the_builtin_corpus_follows_log_progress_bar(tmp_path: Path, capfd, monkeypatch, bars: bool) -> None:
    """A run with log.progress_bar=false (Slurm logs, the study scripts) must not fill its log with
    the shard builder's bars the first time it builds a built-in corpus; with it on, the bars show.
    The builder is local rank 0 of a launch; a stray LOCAL_RANK in a single process does not stop it."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.delenv("RANK", raising=False)
    cfg = load_config(
        "tiny-cpu",
        [
            "data.train=builtin:pydoc",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"log.progress_bar={str(bars).lower()}",
        ],
    )
    capfd.readouterr()
    prepare_data(cfg)
    err = capfd.readouterr().err
    assert ("shards: tokenizing" in err) is bars, err[-500:]


def test_opening_the_data_never_writes_into_the_config(tmp_path: Path) -> None:
    """The shards' vocabulary size used to be written into `model.tokenizer_vocab_size` of the run's
    config. Now it is a fact: the config stays as resolved, the model config is a completed copy."""
    cfg = load_config(
        "tiny-cpu",
        [
            "data.train=builtin:pydoc",
            "data.vocab_size=128",
            "model.vocab_size=192",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    before = cfg.to_dict()
    assert cfg.model.vocab_size > cfg.data.vocab_size  # a padded vocabulary: there is a fact to record
    data = open_train_data(cfg, DistInfo(0, 1, 0, torch.device("cpu"), "gloo"), prepare_data(cfg))
    assert cfg.to_dict() == before
    assert data.vocab_size == cfg.data.vocab_size
    assert data.model_config().model.tokenizer_vocab_size == cfg.data.vocab_size
    assert data.tokenizer.kind == "sentencepiece" and data.tokenizer.location is not None
    assert data.tokenizer.open().sha256 == data.tokenizer.checksum


def test_a_builtin_corpus_must_be_prepared_by_the_command_layer() -> None:
    cfg = load_config("tiny-cpu", ["data.train=builtin:pydoc"])
    with pytest.raises(ConfigError, match="built-in corpus: prepare it first"):
        DataSources.of_config(cfg)
