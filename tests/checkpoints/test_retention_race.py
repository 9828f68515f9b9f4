"""A tool reading a run directory while the trainer running there saves a newer checkpoint and its
retention (`train.keep_last=1`) removes the one the tool resolved to: the tool reads the newer one.

The race is made deterministic with an audit hook (Python's own `open` events): at a chosen file
opened inside the resolved checkpoint, the hook does what the trainer does, publishing the newer
checkpoint and removing the older folder, and the reader's `open` then meets the removed file."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from armd_scale.checkpoints.layout import tag_for
from armd_scale.checkpoints.pretrained import load_pretrained
from armd_scale.checkpoints.source import CheckpointRemovedError
from armd_scale.checkpoints.summary import summarize
from tests.checkpoints.conftest import copy_run


class _Retention:
    """Calls `act` at the `at`-th (1-based) file opened under `folder`; counts the opens."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.at = 0
        self.opens = 0
        self.act: Callable[[], None] | None = None
        self.busy = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or self.folder is None or self.busy or not isinstance(args[0], str):
            return
        if not args[0].startswith(self.folder):
            return
        self.opens += 1
        if self.opens == self.at and self.act is not None:
            self.busy = True
            try:
                self.act()
            finally:
                self.busy = False

    def watch(self, folder: Path, at: int = 0, act: Callable[[], None] | None = None) -> None:
        self.folder, self.at, self.opens, self.act = str(folder) + "/", at, 0, act

    def stop(self) -> None:
        self.folder = None


_HOOK = _Retention()
sys.addaudithook(_HOOK)  # audit hooks cannot be removed: it does nothing while no folder is watched


@pytest.fixture
def retention():
    yield _HOOK
    _HOOK.stop()


READERS = {"load_pretrained": lambda p: load_pretrained(p).step, "summarize": lambda p: summarize(p)["step"]}


@pytest.mark.parametrize("when", ["first", "last"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_checkpoint_removed_by_retention_while_read_gives_way_to_the_newer_one(
    tmp_path: Path, zero0_run, retention: _Retention, caplog: pytest.LogCaptureFixture, reader: str, when: str
) -> None:
    run = copy_run(zero0_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    older, newer = ckpts / tag_for(3), ckpts / tag_for(6)
    assert older.is_dir() and newer.is_dir()
    aside = tmp_path / "not-yet-saved"
    newer.rename(aside)
    (ckpts / "latest").write_text(tag_for(3))
    read = READERS[reader]
    retention.watch(older)  # how many files the reader opens in the checkpoint, untouched
    assert read(run) == 3
    opens = retention.opens
    assert opens >= 2

    def save_and_retain() -> None:  # the trainer: step 6 saved, then keep_last=1 removes step 3
        aside.rename(newer)
        (ckpts / "latest").write_text(tag_for(6))
        shutil.rmtree(older)

    retention.watch(older, at=1 if when == "first" else opens, act=save_and_retain)
    with caplog.at_level(logging.WARNING):
        assert read(run) == 6
    assert not older.exists() and retention.opens >= 1
    assert any(f"checkpoint {older} was removed while it was read" in r.getMessage() for r in caplog.records)
    assert not any("damaged" in r.getMessage() for r in caplog.records)


def test_a_second_removal_names_both_checkpoints(tmp_path: Path, zero0_run, retention: _Retention) -> None:
    run = copy_run(zero0_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    older, newer = ckpts / tag_for(3), ckpts / tag_for(6)
    aside, spare = tmp_path / "not-yet-saved", tmp_path / "spare"
    newer.rename(aside)
    shutil.copytree(aside, spare)

    def first() -> None:
        aside.rename(newer)
        shutil.rmtree(older)
        retention.watch(newer, at=2, act=second)

    def second() -> None:  # step 6 goes too, a copy of it is published as step 9
        spare.rename(ckpts / tag_for(9))
        shutil.rmtree(newer)

    retention.watch(older, at=2, act=first)
    with pytest.raises(CheckpointRemovedError) as e:
        load_pretrained(run)
    assert str(e.value).startswith(f"checkpoint {newer} was removed while it was read, as was {older} before it")
