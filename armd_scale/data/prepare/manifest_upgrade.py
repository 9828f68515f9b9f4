"""`armd shards --upgrade-manifest`: add chunk checksums to a shard set's manifest, in place.

Shard sets built before chunked reads have format-1 manifests: a checksum per shard only, which
cannot be checked on the ranged reads the loader now makes. The upgrade reads every shard once,
checks it against its shard checksum (a damaged shard is refused, never given fresh checksums),
checks that its records have the fixed layout that makes chunk offsets computable, and writes the
manifest again (atomically) with a SHA-256 per chunk. The shards are not touched and the
fingerprint does not change, so saved loader states stay valid. The same command re-chunks a
format-2 set with another `--chunk-kb`.
"""

from __future__ import annotations

import dataclasses

from tqdm import tqdm

from armd_scale.data.errors import BadShardError, DataError
from armd_scale.data.manifest import Manifest, read_manifest, split_urls, write_manifest
from armd_scale.data.shardio import DEFAULT_CHUNK_KB, chunk_samples_for, fetch_shard, fixed_layout_chunks
from armd_scale.data.urls import StorageOptions


def upgrade_manifests(
    url: str, *, chunk_kb: float | None = None, progress: bool = False, storage_options: StorageOptions = None
) -> list[Manifest]:
    """Rewrite the manifest of the set at `url` (or of its train/ and val/ splits) with chunk
    checksums for chunks of about `chunk_kb` KiB (default: keep a format-2 set's chunk size, else
    DEFAULT_CHUNK_KB). Returns the new manifests."""
    out = []
    for target in split_urls(url, storage_options):
        m = read_manifest(target, storage_options)
        if chunk_kb is not None:
            per_chunk = chunk_samples_for(m.seq_len, m.dtype, chunk_kb)
        else:
            per_chunk = m.chunk_samples or chunk_samples_for(m.seq_len, m.dtype, DEFAULT_CHUNK_KB)
        shards = []
        for i, entry in enumerate(tqdm(m.shards, desc=f"upgrade {m.split}", unit="shard", disable=not progress)):
            try:
                data = fetch_shard(m.shard_url(i), entry, storage_options)
                shards.append(dataclasses.replace(entry, chunks=fixed_layout_chunks(data, m, i, per_chunk)))
            except BadShardError as e:
                raise DataError(
                    f"cannot upgrade {target}: {e}. Restore the shard or rebuild the set with `armd shards`; "
                    "the manifest was left as it was"
                ) from None
        upgraded = dataclasses.replace(m, shards=shards, chunk_samples=per_chunk)
        assert upgraded.fingerprint == m.fingerprint  # chunk checksums are not part of the data's identity
        write_manifest(upgraded, storage_options)
        out.append(upgraded)
    return out
