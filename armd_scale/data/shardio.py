"""Reading shards: a whole shard or one chunk of it, checked against the manifest and decoded to a
[samples, seq_len] array.

A shard is a WebDataset tar: sample i is the member `<key>.tokens.<u16|u32>` holding seq_len token
ids as raw little-endian integers (never pickle). Our writer gives every member the same size (one
512-byte header plus the payload padded to 512 bytes), so record i starts at byte i * record_bytes
and any run of records can be fetched with one ranged request and checked against its chunk
checksum. This module reads tars with the standard library's `tarfile` rather than `webdataset` on
purpose: it runs inside loader worker processes, and importing webdataset imports torch, which
would add over a second to every worker start.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import numpy as np

from armd_scale.data.chunk_cache import ChunkCache
from armd_scale.data.errors import BadShardError
from armd_scale.data.manifest import Manifest, ShardEntry, chunk_digest
from armd_scale.data.urls import (
    DEFAULT_RETRY,
    RetryPolicy,
    StorageOptions,
    is_local,
    read_range,
    retry_call,
    retryable_read_error,
    sha256_bytes,
    transient_errors,
    url_to_fs,
)

FIELD_BY_DTYPE = {"uint16": "tokens.u16", "uint32": "tokens.u32"}
NUMPY_DTYPE = {"uint16": "<u2", "uint32": "<u4"}
TAR_BLOCK = 512
# Chunk size of new shard sets: one ranged request each. Larger chunks mean fewer requests and less
# shuffling; smaller ones less over-read at the edges of a rank's range (docs/DATA.md).
DEFAULT_CHUNK_KB = 128.0


def payload_bytes(seq_len: int, dtype: str) -> int:
    return seq_len * np.dtype(NUMPY_DTYPE[dtype]).itemsize


def record_bytes(seq_len: int, dtype: str) -> int:
    """Bytes of one sample in a shard: its tar header plus its payload padded to whole tar blocks."""
    return TAR_BLOCK + -(-payload_bytes(seq_len, dtype) // TAR_BLOCK) * TAR_BLOCK


def chunk_samples_for(seq_len: int, dtype: str, chunk_kb: float) -> int:
    """Records per chunk for chunks of about `chunk_kb` KiB (at least one record)."""
    if chunk_kb <= 0:
        raise ValueError(f"chunk size {chunk_kb} KiB must be > 0")
    return max(1, int(chunk_kb * 1024) // record_bytes(seq_len, dtype))


def chunk_checksums(data: bytes, samples: int, record: int, chunk_samples: int) -> tuple[str, ...]:
    """The checksum of each run of `chunk_samples` records of a shard's bytes (the last run may be shorter)."""
    view = memoryview(data)
    return tuple(
        chunk_digest(view[first * record : min(first + chunk_samples, samples) * record])
        for first in range(0, samples, chunk_samples)
    )


@dataclass(frozen=True)
class ChunkRef:
    """Where one chunk of a shard lives and what its bytes must hash to; small and picklable, so it
    is what crosses the process boundary to a loader worker."""

    url: str  # the shard
    index: int  # chunk number within the shard
    first_sample: int  # within the shard
    samples: int
    start: int  # byte range [start, stop) within the shard
    stop: int
    digest: str  # manifest.chunk_digest of the bytes

    def describe(self) -> str:
        last = self.first_sample + self.samples - 1
        return f"chunk {self.index} (samples {self.first_sample}-{last}, bytes {self.start}-{self.stop})"


def chunk_ref(manifest: Manifest, shard: int, chunk: int) -> ChunkRef:
    per_chunk = manifest.require_chunks()
    entry = manifest.shards[shard]
    first = chunk * per_chunk
    count = min(per_chunk, entry.samples - first)
    record = record_bytes(manifest.seq_len, manifest.dtype)
    return ChunkRef(
        manifest.shard_url(shard), chunk, first, count, first * record, (first + count) * record, entry.chunks[chunk]
    )


def _fetch_chunk(ref: ChunkRef, storage_options: StorageOptions, retry: RetryPolicy) -> bytes:
    """The chunk's bytes in one ranged read, after checking their length and SHA-256. Read errors
    are retried; so are wrong bytes from remote storage (a damaged transfer), but not from a local
    file, where a second read gives the same bytes."""
    local = is_local(ref.url)
    what = ref.describe()

    def attempt() -> bytes:
        data = read_range(ref.url, ref.start, ref.stop, storage_options)
        if len(data) != ref.stop - ref.start:
            raise BadShardError(
                ref.url, f"{what}: truncated: {len(data)} of {ref.stop - ref.start} bytes could be read", ref.index
            )
        digest = chunk_digest(data)
        if digest != ref.digest:
            raise BadShardError(
                ref.url, f"{what}: checksum mismatch: sha256 {digest}..., the manifest says {ref.digest}...", ref.index
            )
        return data

    def retryable(e: BaseException) -> bool:
        return not local if isinstance(e, BadShardError) else retryable_read_error(e)

    try:
        return retry_call(attempt, retry, retryable=retryable, what=f"reading {ref.url} {what}")
    except FileNotFoundError:
        raise BadShardError(
            ref.url, f"{what}: missing (the shard is listed in the manifest but not found)", ref.index
        ) from None
    except BadShardError:
        raise
    except transient_errors() as e:
        raise BadShardError(
            ref.url, f"{what}: cannot be read ({retry.attempts} attempts): {type(e).__name__}: {e}", ref.index
        ) from None


def read_chunk(
    ref: ChunkRef,
    *,
    seq_len: int,
    dtype: str,
    storage_options: StorageOptions = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    cache: ChunkCache | None = None,
    vocab_size: int | None = None,
) -> np.ndarray:
    """Fetch (through `cache` when given), verify and decode one chunk to [samples, seq_len].
    Raises BadShardError naming the shard URL and the chunk; with `vocab_size` (the manifest's) also
    for a token id outside [0, vocab_size), as the writer and `armd shards --verify` check (an
    external converter may write ids the model has no row for)."""
    if cache is not None:
        data = cache.get_or_fetch(ref.digest, lambda: _fetch_chunk(ref, storage_options, retry))
    else:
        data = _fetch_chunk(ref, storage_options, retry)
    width = payload_bytes(seq_len, dtype)
    rows = decode_records(data, ref.samples, width, FIELD_BY_DTYPE[dtype], dtype)
    if rows is None:
        raise BadShardError(
            ref.url, f"{ref.describe()}: its records are not laid out as `armd shards` writes them", ref.index
        )
    if vocab_size is not None:
        bad = out_of_vocab(rows, vocab_size)
        if bad is not None:
            raise BadShardError(ref.url, f"{ref.describe()}: {bad}", ref.index)
    return rows


def out_of_vocab(rows: np.ndarray, vocab_size: int) -> str | None:
    """None when every id of `rows` is in [0, vocab_size), else what the first bad one is."""
    if not rows.size:
        return None
    high, low = int(rows.max()), int(rows.min())
    if high < vocab_size and low >= 0:
        return None
    value = high if high >= vocab_size else low
    sample = int(np.argwhere(rows == value)[0][0]) if rows.ndim == 2 else 0
    return (
        f"token id {value} (sample {sample}) is outside the vocabulary [0, {vocab_size}) of its manifest: "
        "the set was not written by `armd shards` or was changed since (`armd shards --verify` names every such shard)"
    )


def fetch_shard(url: str, entry: ShardEntry, storage_options: StorageOptions = None, verify: bool = True) -> bytes:
    """The shard's bytes, after checking size and SHA-256 against its manifest entry."""
    try:
        fs, path = url_to_fs(url, storage_options)
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise BadShardError(url, "missing (listed in the manifest but not found)") from None
    except OSError as e:
        raise BadShardError(url, f"cannot be read: {e}") from None
    if len(data) != entry.bytes:
        what = "truncated" if len(data) < entry.bytes else "wrong size"
        raise BadShardError(url, f"{what}: {len(data)} bytes, the manifest says {entry.bytes}")
    if verify:
        digest = sha256_bytes(data)
        if digest != entry.sha256:
            raise BadShardError(url, f"checksum mismatch: sha256 {digest}, the manifest says {entry.sha256}")
    return data


def decode_records(data: bytes, samples: int, width: int, field: str, dtype: str) -> np.ndarray | None:
    """Fast path for shards laid out as our writer lays them out: `samples` records of one 512-byte
    header (name `<10-digit key>.<field>`, size `width`) plus the payload padded to 512 bytes, then
    only end-of-archive zeros. Checks every header with vectorised comparisons and slices all
    payloads at once; returns None if anything differs, so the caller falls back to `tarfile`
    (which parses a member at a time and is several times slower)."""
    record = TAR_BLOCK + -(-width // TAR_BLOCK) * TAR_BLOCK
    if samples < 1 or len(data) < samples * record:
        return None
    blocks = np.frombuffer(data, dtype=np.uint8, count=samples * record).reshape(samples, record)
    suffix = f".{field}\0".encode()
    expect = {
        (124, 136): f"{width:011o}\0".encode(),  # size field
        (156, 157): b"0",  # regular file
        (257, 262): b"ustar",
        (10, 10 + len(suffix)): suffix,
    }
    for (a, b), value in expect.items():
        if not (blocks[:, a:b] == np.frombuffer(value, dtype=np.uint8)).all():
            return None
    if data[samples * record :].strip(b"\0"):  # more members than the manifest says
        return None
    payload = np.ascontiguousarray(blocks[:, 512 : 512 + width])
    return payload.view(NUMPY_DTYPE[dtype]).reshape(samples, -1).astype(dtype, copy=False)


def decode_shard(data: bytes, *, url: str, seq_len: int, dtype: str, expected_samples: int | None = None) -> np.ndarray:
    """Tar bytes -> array [samples, seq_len] of `dtype`, in member order."""
    field = FIELD_BY_DTYPE[dtype]
    width = payload_bytes(seq_len, dtype)
    if expected_samples is not None:
        fast = decode_records(data, expected_samples, width, field, dtype)
        if fast is not None:
            return fast
    rows: list[bytes] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if not member.name.endswith("." + field):
                    raise BadShardError(url, f"member {member.name} is not a '{field}' sample")
                if member.size != width:
                    raise BadShardError(
                        url,
                        f"member {member.name} has {member.size} bytes, expected {width} (seq_len={seq_len}, {dtype})",
                    )
                f = tar.extractfile(member)
                assert f is not None
                rows.append(f.read())
    except tarfile.TarError as e:
        raise BadShardError(url, f"not a readable tar file: {e}") from None
    if expected_samples is not None and len(rows) != expected_samples:
        raise BadShardError(url, f"holds {len(rows)} samples, the manifest says {expected_samples}")
    out = np.frombuffer(b"".join(rows), dtype=NUMPY_DTYPE[dtype]).reshape(len(rows), seq_len)
    return out.astype(dtype, copy=False)


def fixed_layout_chunks(data: bytes, manifest: Manifest, shard: int, chunk_samples: int) -> tuple[str, ...]:
    """The chunk checksums of a whole shard's bytes (already checked against its SHA-256), after
    checking that its records have the fixed layout that makes chunk offsets computable."""
    entry = manifest.shards[shard]
    width = payload_bytes(manifest.seq_len, manifest.dtype)
    if decode_records(data, entry.samples, width, FIELD_BY_DTYPE[manifest.dtype], manifest.dtype) is None:
        raise BadShardError(
            manifest.shard_url(shard),
            "its records are not all of one fixed size, so chunks cannot be read by offset; rebuild the set "
            "with `armd shards`",
        )
    return chunk_checksums(data, entry.samples, record_bytes(manifest.seq_len, manifest.dtype), chunk_samples)


def load_shard(
    url: str,
    entry: ShardEntry,
    *,
    seq_len: int,
    dtype: str,
    storage_options: StorageOptions = None,
    verify: bool = True,
) -> np.ndarray:
    """Fetch, verify and decode one shard. Raises BadShardError naming the shard URL."""
    data = fetch_shard(url, entry, storage_options, verify)
    return decode_shard(data, url=url, seq_len=seq_len, dtype=dtype, expected_samples=entry.samples)
