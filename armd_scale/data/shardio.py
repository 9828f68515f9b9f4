"""Reading one shard: fetch, check against the manifest, decode to a [samples, seq_len] array.

A shard is a WebDataset tar: sample i is the member `<key>.tokens.<u16|u32>` holding seq_len token
ids as raw little-endian integers (never pickle). This module reads it with the standard library's
`tarfile` rather than `webdataset` on purpose: it runs inside loader worker processes, and importing
webdataset imports torch, which would add over a second to every worker start.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np

from armd_scale.data.errors import BadShardError
from armd_scale.data.manifest import ShardEntry
from armd_scale.data.urls import StorageOptions, sha256_bytes, url_to_fs

FIELD_BY_DTYPE = {"uint16": "tokens.u16", "uint32": "tokens.u32"}
NUMPY_DTYPE = {"uint16": "<u2", "uint32": "<u4"}


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


def _decode_fixed(data: bytes, samples: int, width: int, field: str, dtype: str) -> np.ndarray | None:
    """Fast path for shards laid out as our writer lays them out: `samples` records of one 512-byte
    header (name `<10-digit key>.<field>`, size `width`) plus the payload padded to 512 bytes, then
    only end-of-archive zeros. Checks every header with vectorised comparisons and slices all
    payloads at once; returns None if anything differs, so the caller falls back to `tarfile`
    (which parses a member at a time and is several times slower)."""
    record = 512 + -(-width // 512) * 512
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
    width = seq_len * np.dtype(NUMPY_DTYPE[dtype]).itemsize
    if expected_samples is not None:
        fast = _decode_fixed(data, expected_samples, width, field, dtype)
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
