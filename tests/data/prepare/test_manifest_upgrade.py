"""Manifest format 1 (no chunk checksums): refused by the loader with the command that fixes it;
`upgrade_manifests` adds the checksums in place without changing the fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from armd_scale.data.errors import DataError
from armd_scale.data.manifest import MANIFEST_FORMAT_V1, read_manifest
from armd_scale.data.prepare.manifest_upgrade import upgrade_manifests
from armd_scale.data.prepare.verify import verify_shards
from tests.data.conftest import write_indexed_set
from tests.data.loading.test_loader import make, take_steps


def _as_version_1(url: str) -> dict:
    """Rewrite the set's manifest as a format-1 manifest (what older releases wrote)."""
    path = Path(url) / "manifest.json"
    raw = json.loads(path.read_text())
    raw["format"] = MANIFEST_FORMAT_V1
    raw.pop("chunk_samples")
    for shard in raw["shards"]:
        shard.pop("chunk_sha256")
    path.write_text(json.dumps(raw))
    return raw


def test_the_loader_refuses_a_format_1_set_naming_the_upgrade_command(indexed_set: str) -> None:
    _as_version_1(indexed_set)
    with pytest.raises(DataError, match=f"armd shards --upgrade-manifest {indexed_set}"):
        make(indexed_set)
    assert all(r.ok for r in verify_shards(indexed_set))  # whole-shard verification still works


def test_upgrade_adds_the_checksums_a_build_writes_and_keeps_the_fingerprint(indexed_set: str) -> None:
    built = read_manifest(indexed_set)
    reference = take_steps([make(indexed_set, loop=False)], None)
    _as_version_1(indexed_set)
    (upgraded,) = upgrade_manifests(indexed_set, chunk_kb=8)  # records of 1 KiB: chunks of 8, as built
    assert upgraded.fingerprint == built.fingerprint and upgraded.chunk_samples == 8
    assert [s.chunks for s in read_manifest(indexed_set).shards] == [s.chunks for s in built.shards]
    assert take_steps([make(indexed_set, loop=False)], None) == reference


def test_upgrade_can_rechunk_and_a_saved_state_stays_valid(indexed_set: str) -> None:
    loader = make(indexed_set)
    take_steps([loader], 4)
    state = loader.state_dict()
    upgrade_manifests(indexed_set, chunk_kb=16)
    assert read_manifest(indexed_set).chunk_samples == 16
    make(indexed_set).load_state_dict(state)  # same fingerprint: accepted (with a warning about the chunk size)
    assert all(r.ok for r in verify_shards(indexed_set))


def test_upgrade_refuses_a_damaged_shard_and_leaves_the_manifest(tmp_path: Path) -> None:
    url = str(tmp_path / "set")
    write_indexed_set(url, 200)
    raw = _as_version_1(url)
    shard = Path(url) / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard}.*checksum mismatch"):
        upgrade_manifests(url)
    assert json.loads((Path(url) / "manifest.json").read_text()) == raw


def test_verify_reports_chunk_checksums_that_do_not_describe_the_shard(indexed_set: str) -> None:
    path = Path(indexed_set) / "manifest.json"
    raw = json.loads(path.read_text())
    digests = raw["shards"][2]["chunk_sha256"]
    raw["shards"][2]["chunk_sha256"] = digests[:32] + "0" * 32 + digests[64:]  # chunk 1
    path.write_text(json.dumps(raw))
    (report,) = verify_shards(indexed_set)
    assert [url for url, _ in report.bad] == [f"{indexed_set}/shard-000002.tar"]
    assert "chunk checksum mismatch in chunk(s) [1]" in report.bad[0][1]


def test_malformed_chunk_checksums_are_refused(indexed_set: str) -> None:
    path = Path(indexed_set) / "manifest.json"
    raw = json.loads(path.read_text())
    raw["shards"][0]["chunk_sha256"] = raw["shards"][0]["chunk_sha256"][:-32]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="shard-000000.tar lists 7 chunk checksums, but 64 samples"):
        read_manifest(indexed_set)
    raw["shards"][0]["chunk_sha256"] = "x" * 32 * 8
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="shard-000000.tar: chunk_sha256 must be 32 hex digits per chunk"):
        read_manifest(indexed_set)
