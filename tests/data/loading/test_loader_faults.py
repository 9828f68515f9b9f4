"""ShardLoader under faults: bad chunks are named or skipped, the skipped set is part of the resume
state, and transient read errors are retried without changing the data."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from armd_scale.data.errors import BadShardError
from armd_scale.data.prepare.manifest_upgrade import upgrade_manifests
from armd_scale.data.urls import RetryPolicy
from tests.data.loading.test_loader import STEPS, G, make, take_steps

BAD_IDS = set(range(3 * 64, 3 * 64 + 8))  # chunk 0 of shard 3 in `indexed_set` (chunks of 8 samples)


def _damage(url: str, shard: int, how: str) -> str:
    path = Path(url) / f"shard-{shard:06d}.tar"
    data = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "checksum":
        data[600] ^= 0xFF  # inside the first sample's payload: same size, different bytes
        path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize(
    "how,reason", [("missing", "missing"), ("truncated", "truncated"), ("checksum", "checksum mismatch")]
)
@pytest.mark.parametrize("workers", [0, 1])
def test_bad_chunk_raises_naming_the_shard_and_the_chunk(indexed_set: str, how: str, reason: str, workers: int) -> None:
    bad = _damage(indexed_set, 3, how)
    with pytest.raises(BadShardError) as e:
        take_steps([make(indexed_set, num_workers=workers)], STEPS)
    assert e.value.url == bad and bad in str(e.value) and reason in str(e.value)
    assert f"chunk {e.value.chunk} (samples " in str(e.value)
    if how == "checksum":
        assert e.value.chunk == 0 and "chunk 0 (samples 0-7, bytes 0-8192)" in str(e.value)


def test_skip_mode_replaces_only_the_samples_of_the_bad_chunk(indexed_set: str) -> None:
    clean = take_steps([make(indexed_set, loop=False)], None)
    _damage(indexed_set, 3, "checksum")
    loader = make(indexed_set, on_bad_shard="skip", loop=False)
    steps = take_steps([loader], None)
    assert len(steps) == STEPS and all(len(s) == G for s in steps)
    name = f"{indexed_set}/shard-000003.tar#chunk=0"
    assert list(loader.bad_chunks) == [name] and "checksum mismatch" in loader.bad_chunks[name]
    replaced = [(k, i) for k, step in enumerate(clean) for i, sample in enumerate(step) if sample in BAD_IDS]
    assert replaced and loader.skipped_samples == len(replaced)
    for k, (before, after) in enumerate(zip(clean, steps, strict=True)):
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            assert (a == b) == ((k, i) not in replaced)
    assert not BAD_IDS & {i for s in steps for i in s}


def test_a_resumed_run_skips_the_chunks_the_interrupted_run_skipped(indexed_set: str) -> None:
    """The bad chunk is repaired between the two halves of the run: the resumed half must still
    skip it (it is in the saved state), or it would not be the uninterrupted run."""
    clean = take_steps([make(indexed_set, loop=False)], None)
    uses = sorted({k for k, step in enumerate(clean) if set(step) & BAD_IDS})
    path = Path(indexed_set) / "shard-000003.tar"
    original = path.read_bytes()
    _damage(indexed_set, 3, "checksum")
    reference = take_steps([make(indexed_set, on_bad_shard="skip", loop=False)], None)
    stop = uses[0] + 1  # the chunk has been read (and found bad) by then, and is used again later
    assert uses[-1] >= stop
    first = make(indexed_set, on_bad_shard="skip")
    head = take_steps([first], stop)
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    assert state["sources"][0]["bad_chunks"] == {"shard-000003.tar": [0]}
    path.write_bytes(original)
    second = make(indexed_set, on_bad_shard="skip", loop=False)
    second.load_state_dict(state)
    assert head + take_steps([second], None) == reference
    assert second.skipped_samples > 0 and list(second.bad_chunks) == [f"{path}#chunk=0"]


def test_bad_chunks_one_rank_met_reach_the_other_ranks_through_the_state(indexed_set: str) -> None:
    """Ranks read different chunks, so only one rank meets the bad one; merging the ranks' states
    (as the trainer does before saving) gives every rank's state the full set."""
    _damage(indexed_set, 3, "checksum")
    ranks = [make(indexed_set, r, 2, micro=1, on_bad_shard="skip") for r in range(2)]
    take_steps(ranks, STEPS - 1)
    met = [ld for ld in ranks if ld.num_bad_chunks]
    others = [ld for ld in ranks if not ld.num_bad_chunks]
    assert len(met) == 1 and len(others) == 1, "exactly one rank reads the bad chunk"
    others[0].add_bad_chunks(met[0].state_dict())
    assert others[0].state_dict()["sources"] == met[0].state_dict()["sources"]
    for ld in ranks:
        ld.close()


def test_bad_chunks_of_a_state_saved_before_rechunking_mark_the_chunks_holding_their_samples(
    indexed_set: str,
) -> None:
    path = Path(indexed_set) / "shard-000003.tar"
    original = path.read_bytes()
    _damage(indexed_set, 3, "checksum")
    first = make(indexed_set, on_bad_shard="skip", loop=False)
    take_steps([first], None)
    state = first.state_dict()
    assert state["sources"][0]["bad_chunks"] == {"shard-000003.tar": [0]}  # samples 0-7 in chunks of 8
    path.write_bytes(original)  # repaired, then re-chunked: the state still says what was skipped
    upgrade_manifests(indexed_set, chunk_kb=3)  # 1 KiB records: chunks of 3 samples
    second = make(indexed_set, on_bad_shard="skip")
    second.load_state_dict(state)
    assert second.state_dict()["sources"][0]["bad_chunks"] == {"shard-000003.tar": [0, 1, 2]}  # samples 0-8


class FlakyFileSystem(LocalFileSystem):
    """The local filesystem under `flaky://`, failing the first read of every byte range once:
    either with a network error or by returning damaged bytes (a broken transfer)."""

    protocol = "flaky"
    mode = "error"
    failures_left = 0  # reads that still fail, in all
    seen: set = set()
    reads = 0

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path[len("flaky://") :] if path.startswith("flaky://") else path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        cls = type(self)
        cls.reads += 1
        first_time = (path, start, end) not in cls.seen
        cls.seen.add((path, start, end))
        if start is not None and cls.failures_left > 0 and (first_time or cls.mode == "always"):
            cls.failures_left -= 1
            if cls.mode in ("error", "always"):
                raise ConnectionResetError(f"connection reset by peer (injected) reading {path}")
            data = super().cat_file(path, start, end, **kwargs)
            return data[:-1] + bytes([data[-1] ^ 1])
        return super().cat_file(path, start, end, **kwargs)


@pytest.fixture()
def flaky(monkeypatch) -> type[FlakyFileSystem]:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    monkeypatch.setattr(FlakyFileSystem, "seen", set())
    monkeypatch.setattr(FlakyFileSystem, "reads", 0)
    return FlakyFileSystem


@pytest.mark.parametrize("mode", ["error", "damaged"])
def test_transient_read_failures_are_retried_and_the_data_is_the_same(indexed_set: str, flaky, monkeypatch, mode):
    plain = take_steps([make(indexed_set, loop=False)], None)
    monkeypatch.setattr(flaky, "mode", mode)
    monkeypatch.setattr(flaky, "failures_left", 10**6)  # every chunk's first read fails
    loader = make(f"flaky://{indexed_set}", loop=False, num_workers=0)
    assert take_steps([loader], None) == plain
    chunks_read = len(flaky.seen) - 1  # minus the manifest
    assert chunks_read > 50 and flaky.reads == 1 + 2 * chunks_read  # each chunk: one failure, one retry
    assert loader.num_bad_chunks == 0


def test_a_chunk_that_keeps_failing_is_bad_after_the_last_attempt(indexed_set: str, flaky, monkeypatch) -> None:
    monkeypatch.setattr(flaky, "mode", "always")
    monkeypatch.setattr(flaky, "failures_left", 3)
    with pytest.raises(BadShardError) as e:
        take_steps([make(f"flaky://{indexed_set}", retry=RetryPolicy(3, 0.001, 0.001))], 1)
    assert "cannot be read (3 attempts): ConnectionResetError" in str(e.value) and e.value.chunk is not None
    assert flaky.reads == 1 + 3


def test_retry_waits_grow_and_stay_bounded() -> None:
    policy = RetryPolicy(attempts=6, first_delay_s=0.5, max_delay_s=3.0)
    waits = [policy.delay(i) for i in range(5)]
    assert 0.25 <= waits[0] < 0.75 and 0.5 <= waits[1] < 1.5 and all(w < 4.5 for w in waits)
