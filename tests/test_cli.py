"""The `armd` entry point."""

import os

from armd_scale.cli import build_parser, main, strip_launcher_args


def test_launcher_local_rank_flag_is_removed(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "unset")  # recorded, so the test leaves the variable as it found it
    monkeypatch.delenv("LOCAL_RANK")
    assert strip_launcher_args(["--local_rank=3", "train", "a.b=1"]) == ["train", "a.b=1"]
    assert os.environ["LOCAL_RANK"] == "3"
    monkeypatch.setenv("LOCAL_RANK", "1")  # the environment wins when both are present
    assert strip_launcher_args(["--local-rank", "5", "train"]) == ["train"]
    assert os.environ["LOCAL_RANK"] == "1"


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in ("train", "tokenizer", "shards", "eval", "generate", "convert", "inspect"):
        assert name in out
    assert build_parser("train").parse_args(["train", "model.n_layers=2"]).overrides == ["model.n_layers=2"]
