"""Mixtures of shard sets: quotas from weights and per-source epochs, realised proportions, a
source's order continuing across mixture epochs, exact resume on another world size."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from armd_scale.data.errors import DataError, DataMismatchError
from armd_scale.data.loading.mixture import MixtureSource, as_sources, quotas
from tests.data.conftest import write_indexed_set
from tests.data.loading.test_loader import make, take_steps

A_IDS = range(0, 1000)
B_IDS = range(2000, 2300)


@pytest.fixture()
def two_sets(tmp_path: Path) -> tuple[str, str]:
    """A: 1000 samples (ids 0..999); B: 300 samples (ids 2000..2299); chunks of 8 samples."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_indexed_set(a, 1000)
    write_indexed_set(b, 300, first_id=2000)
    return a, b


def test_quotas_use_the_scarcest_source_up_to_its_epochs() -> None:
    assert quotas([1000], [1.0], [1.0]) == [1000]
    assert quotas([1000, 300], [3, 1], [1, 1]) == [900, 300]  # B binds: 300 = 1/4 of 1200
    assert quotas([1000, 300], [0.5, 0.5], [1, 2]) == [600, 600]  # B may be read twice
    assert quotas([1000, 300], [0.9, 0.1], [1, 1]) == [1000, 111]  # A binds: 1000 = 0.9 of 1111
    assert quotas([1000, 300], [1, 1], [0.5, 1]) == [300, 300]  # B binds before A reaches its cap of 500


def test_sources_are_checked() -> None:
    with pytest.raises(DataError, match="weight=0"):
        as_sources([MixtureSource("a", weight=0)])
    with pytest.raises(DataError, match="appears twice"):
        as_sources(["a", MixtureSource("a/", 2.0)])


def test_an_epoch_of_the_mixture_holds_exactly_each_sources_quota(two_sets: tuple[str, str]) -> None:
    a, b = two_sets
    loader = make([MixtureSource(a, 3.0), MixtureSource(b, 1.0)], loop=False)
    assert loader.num_samples == 1200 and loader.steps_per_epoch == 75
    seen = [i for step in take_steps([loader], None) for i in step]
    from_a = [i for i in seen if i in A_IDS]
    from_b = [i for i in seen if i in B_IDS]
    assert len(from_a) == 900 == len(set(from_a)) and len(from_b) == 300 == len(set(from_b))


def test_realised_proportions_match_the_weights_over_a_run(two_sets: tuple[str, str]) -> None:
    a, b = two_sets
    loader = make([MixtureSource(a, 0.9), MixtureSource(b, 0.1)], micro=16)  # quotas 1000 and 111
    steps = take_steps([loader], 4 * loader.steps_per_epoch)
    counts = Counter("a" if i in A_IDS else "b" for step in steps for i in step)
    share_b = counts["b"] / (counts["a"] + counts["b"])
    assert abs(share_b - 0.1) < 0.002  # 111 / 1111, the tail of 7 samples per epoch aside
    # and halfway through, the share is already close (chunks are spread over the whole epoch)
    half = Counter("b" for step in steps[: loader.steps_per_epoch // 2] for i in step if i in B_IDS)
    assert abs(half["b"] / (16 * (loader.steps_per_epoch // 2)) - 0.1) < 0.05


def test_a_partly_used_source_gives_unseen_samples_in_the_next_mixture_epoch(two_sets: tuple[str, str]) -> None:
    """B (epochs=2) is read twice per mixture epoch and binds; A gives 600 samples per mixture
    epoch, continuing its own order: epochs 0 and 1 together use all 1000 of A before any repeats."""
    a, b = two_sets
    loader = make([MixtureSource(a, 0.5), MixtureSource(b, 0.5, epochs=2)], micro=16)
    assert loader.quotas == [600, 600]
    steps = take_steps([loader], 2 * loader.steps_per_epoch)
    epochs = [[i for step in part for i in step] for part in (steps[:75], steps[75:])]
    b_counts = Counter(i for i in epochs[0] if i in B_IDS)
    assert set(b_counts) == set(B_IDS) and set(b_counts.values()) == {2}
    a0 = [i for i in epochs[0] if i in A_IDS]
    a1 = [i for i in epochs[1] if i in A_IDS]
    assert len(set(a0)) == 600 and set(a0) | set(a1) == set(A_IDS)
    assert len(set(a0) & set(a1)) <= 200  # only A's second pass (the last 200 of epoch 1) may repeat


@pytest.mark.parametrize("before,after", [(2, 3), (3, 1)])
def test_a_mixture_resumes_exactly_on_another_world_size(two_sets: tuple[str, str], before: int, after: int) -> None:
    a, b = two_sets
    sources = [MixtureSource(a, 3.0), MixtureSource(b, 1.0)]
    reference = take_steps([make(sources, gbs=24, micro=1, loop=False)], None)
    first = [make(sources, r, before, gbs=24, micro=1) for r in range(before)]
    head = take_steps(first, 19)
    state = json.loads(json.dumps(first[0].state_dict()))
    second = [make(sources, r, after, gbs=24, micro=1, loop=False) for r in range(after)]
    for ld in second:
        ld.load_state_dict(state)
    assert head + take_steps(second, None) == reference


def test_state_of_another_mixture_is_refused_and_new_weights_are_announced(
    two_sets: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_sets
    loader = make([MixtureSource(a, 3.0), MixtureSource(b, 1.0)])
    take_steps([loader], 3)
    state = loader.state_dict()
    with pytest.raises(DataMismatchError, match="fingerprint"):
        make([MixtureSource(b, 1.0), MixtureSource(a, 3.0)]).load_state_dict(state)
    with pytest.raises(DataMismatchError):
        make(a).load_state_dict(state)
    reweighted = make([MixtureSource(a, 1.0), MixtureSource(b, 1.0)])
    with caplog.at_level(logging.WARNING):
        reweighted.load_state_dict(state)
    assert "source 0" in caplog.text and "weight changed from 3.0 to 1.0" in caplog.text
    assert reweighted.state_dict()["cursor"] == state["cursor"]


def test_sources_of_different_sequence_lengths_do_not_mix(tmp_path: Path, two_sets: tuple[str, str]) -> None:
    other = str(tmp_path / "long")
    write_indexed_set(other, 300, seq_len=8)
    with pytest.raises(DataMismatchError, match="seq_len"):
        make([two_sets[0], other])
