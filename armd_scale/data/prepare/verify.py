"""Checking a built shard set against its manifest, shard by shard (`armd shards --verify`)."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from armd_scale.data.errors import BadShardError
from armd_scale.data.manifest import read_manifest, split_urls
from armd_scale.data.shardio import decode_shard, fetch_shard, fixed_layout_chunks
from armd_scale.data.urls import StorageOptions


@dataclass
class VerifyReport:
    url: str
    shards: int
    samples: int
    bad: list[tuple[str, str]]  # (shard URL, reason)

    @property
    def ok(self) -> bool:
        return not self.bad


def verify_shards(url: str, *, progress: bool = False, storage_options: StorageOptions = None) -> list[VerifyReport]:
    """Check every shard of the set at `url` (or of its train/ and val/ splits) against the
    manifest: presence, size, SHA-256, tar structure, sample count, every chunk checksum (format 2)
    and token ids < vocab_size."""
    reports = []
    for target in split_urls(url, storage_options):
        m = read_manifest(target, storage_options)
        bad: list[tuple[str, str]] = []
        samples = 0
        for i, entry in enumerate(tqdm(m.shards, desc=f"verify {m.split}", unit="shard", disable=not progress)):
            shard_url = m.shard_url(i)
            try:
                data = fetch_shard(shard_url, entry, storage_options)
                arr = decode_shard(
                    data, url=shard_url, seq_len=m.seq_len, dtype=m.dtype, expected_samples=entry.samples
                )
                if m.chunk_samples is not None:
                    sums = fixed_layout_chunks(data, m, i, m.chunk_samples)
                    wrong = [c for c, (a, b) in enumerate(zip(sums, entry.chunks, strict=True)) if a != b]
                    if wrong:
                        raise BadShardError(
                            shard_url,
                            f"chunk checksum mismatch in chunk(s) {wrong[:8]}: the manifest's chunk list does not "
                            "describe this shard; rewrite it with `armd shards --upgrade-manifest`",
                        )
                if arr.size and int(arr.max()) >= m.vocab_size:
                    raise BadShardError(shard_url, f"token id {int(arr.max())} >= vocab_size {m.vocab_size}")
                samples += len(arr)
            except BadShardError as e:
                bad.append((shard_url, e.reason))
        reports.append(VerifyReport(target, len(m.shards), samples, bad))
    return reports
