"""The loader state format: small, versioned; older and changed states resume or are refused clearly."""

from __future__ import annotations

import json
import logging

import pytest

from armd_scale.data.errors import DataError
from tests.data.loading.test_loader import G, make, take_steps


def test_state_is_small_plain_json_and_names_its_version(indexed_set: str) -> None:
    loader = make(indexed_set)
    take_steps([loader], 5)
    state = loader.state_dict()
    assert state["version"] == 2 and state["cursor"] == 5 * G and state["shuffle_chunks"] == 4
    assert json.loads(json.dumps(state)) == state and len(json.dumps(state)) < 1500


def _version_1(state: dict) -> dict:
    """The state as the loader before chunked reads wrote it (same keys, same fingerprint)."""
    keys = ("epoch", "cursor", "seed", "fingerprint", "num_samples", "global_batch_size", "url")
    return {"version": 1, **{k: state[k] for k in keys}}


def test_a_version_1_state_at_an_epoch_start_resumes_exactly(indexed_set: str, caplog) -> None:
    loader = make(indexed_set)
    take_steps([loader], loader.steps_per_epoch)  # a whole epoch: the state is at the start of epoch 1
    old = _version_1(loader.state_dict())
    assert (old["epoch"], old["cursor"]) == (1, 0)
    resumed = make(indexed_set)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(old)
    assert caplog.text == ""
    assert take_steps([resumed], 3) == take_steps([loader], 3)


def test_a_version_1_state_mid_epoch_continues_at_its_position_with_a_warning(indexed_set: str, caplog) -> None:
    loader = make(indexed_set)
    take_steps([loader], 10)
    resumed = make(indexed_set)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(_version_1(loader.state_dict()))
    assert "loader state version 1" in caplog.text and "from epoch 1 on the order is exact" in caplog.text
    assert resumed.state_dict()["cursor"] == 10 * G


def test_a_state_from_a_newer_release_is_refused(indexed_set: str) -> None:
    state = {**make(indexed_set).state_dict(), "version": 3}
    with pytest.raises(DataError, match="version 3 is not one this armd_scale reads"):
        make(indexed_set).load_state_dict(state)


def test_seed_and_shuffle_window_of_the_state_win_so_the_epoch_keeps_its_order(indexed_set: str, caplog) -> None:
    reference = make(indexed_set, seed=5, shuffle_chunks=2)
    head = take_steps([reference], 7)
    state = reference.state_dict()
    resumed = make(indexed_set, seed=99, shuffle_chunks=6)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    assert "data seed 5" in caplog.text and "shuffle window of 2 chunks" in caplog.text
    assert take_steps([resumed], 5) == take_steps([reference], 5) and head


def test_another_global_batch_continues_at_the_same_position_with_a_warning(indexed_set: str, caplog) -> None:
    loader = make(indexed_set)
    take_steps([loader], 6)
    wider = make(indexed_set, gbs=32)
    with caplog.at_level(logging.WARNING):
        wider.load_state_dict(loader.state_dict())
    assert "global batch changed from 16 to 32" in caplog.text
    assert wider.state_dict()["cursor"] == 6 * G
