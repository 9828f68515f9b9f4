"""run_facts.json: what a run derived, kept out of config.yaml, written whole and read back typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from armd_scale.config import ConfigError
from armd_scale.data.tokenizers.ref import TokenizerRef
from armd_scale.train.run_facts import RUN_FACTS_FILE, RunFacts


def _facts() -> RunFacts:
    return RunFacts(
        tokenizer=TokenizerRef("/data/tok", "sentencepiece", "ab" * 32),
        tokenizer_vocab_size=128,
        train=[{"url": "/data/train", "weight": 1.0, "epochs": 1.0}],
        val="/data/val",
        world_size=4,
        tp=2,
        versions={"armd_scale": "0.1.0"},
    )


def test_facts_round_trip(tmp_path: Path) -> None:
    path = _facts().write(tmp_path)
    assert path == tmp_path / RUN_FACTS_FILE
    assert RunFacts.read(tmp_path) == _facts()
    assert not [p for p in tmp_path.iterdir() if p.name != RUN_FACTS_FILE]  # no temporary file left beside it


def test_a_run_without_facts_reads_as_none(tmp_path: Path) -> None:
    """Run folders written before run_facts.json existed."""
    assert RunFacts.read(tmp_path) is None


def test_bad_facts_are_refused_naming_the_file_and_what_is_wrong(tmp_path: Path) -> None:
    path = _facts().write(tmp_path)
    raw = json.loads(path.read_text())
    del raw["world_size"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=rf"{path} lacks key 'world_size'"):
        RunFacts.read(tmp_path)
    path.write_text(json.dumps({**raw, "format": "other/9"}))
    with pytest.raises(ConfigError, match=rf"{path} has format 'other/9', expected 'armd_scale.run_facts/1'"):
        RunFacts.read(tmp_path)
    path.write_text("{")
    with pytest.raises(ConfigError, match=rf"{path} is not valid JSON"):
        RunFacts.read(tmp_path)
