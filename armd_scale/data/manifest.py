"""`manifest.json`: what a shard set is and how it was built.

One manifest per split directory (`OUT/train/manifest.json`, `OUT/val/manifest.json`). It is
written after every shard of its split, so a directory without one is an incomplete build and is
refused. The *fingerprint* (SHA-256 over tokenizer identity, seq_len, dtype and the ordered list of
shard names, sample counts and checksums) identifies the data a loader state refers to; build
settings and versions are kept for people but do not enter it.

Format 2 adds a checksum per *chunk* (`chunk_samples` consecutive records of a shard): the loader
reads single chunks with ranged requests, and a whole-shard checksum cannot be checked on a part.
A chunk's checksum is the first 128 bits of its SHA-256 (32 hex digits), and a shard's checksums
are one string, because every rank reads the whole manifest: at 64 ranks and 128 KiB chunks the
full 64-digit digests as a JSON list cost more than 3% of what a rank trains on in an epoch, at 512
ranks more than a quarter (docs/DATA.md). 128 bits detect any corruption and make collisions of
the content-addressed chunk cache impossible in practice.
Chunk checksums stay out of the fingerprint, so upgrading a format-1 manifest
(`armd shards --upgrade-manifest`) keeps every saved loader state valid. Format 1 is still read
(for verification, evaluation and the upgrade); the training loader asks for the upgrade.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from armd_scale.data.errors import DataError, DataMismatchError
from armd_scale.data.urls import (
    DEFAULT_RETRY,
    StorageOptions,
    exists,
    join_url,
    read_bytes,
    retry_call,
    retryable_read_error,
    sha256_bytes,
    url_to_fs,
    write_atomic,
)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "armd_scale.shards/2"
MANIFEST_FORMAT_V1 = "armd_scale.shards/1"  # no chunk checksums; read, and upgraded on request
DTYPES = ("uint16", "uint32")
CHUNK_DIGEST_CHARS = 32  # hex digits of a chunk checksum: the first 128 bits of its SHA-256


def dtype_for_vocab(vocab_size: int) -> str:
    """Smallest unsigned dtype that holds every id (uint16 halves storage for vocabularies <= 65535)."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class ShardEntry:
    name: str  # relative to the manifest's directory
    samples: int
    sha256: str
    bytes: int
    # checksum of each chunk's bytes (chunk i = records [i*chunk_samples, (i+1)*chunk_samples)); empty in format 1
    chunks: tuple[str, ...] = ()


@dataclass
class Manifest:
    split: str
    tokenizer_sha256: str
    vocab_size: int
    seq_len: int
    dtype: str
    shards: list[ShardEntry]
    totals: dict[str, int] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # kind, source; informational
    url: str = ""  # where it was read from (not stored)
    chunk_samples: int | None = None  # records per checksummed chunk; None for a format-1 manifest

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def fingerprint(self) -> str:
        core = {
            "tokenizer_sha256": self.tokenizer_sha256,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "shards": [[s.name, s.samples, s.sha256] for s in self.shards],
        }
        return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def shard_url(self, index: int) -> str:
        return join_url(self.url, self.shards[index].name)

    @property
    def has_chunks(self) -> bool:
        return self.chunk_samples is not None

    def require_chunks(self) -> int:
        """`chunk_samples`, or an error saying how to add chunk checksums to a format-1 manifest."""
        if self.chunk_samples is None:
            raise DataError(
                f"{join_url(self.url, MANIFEST_FILE)} is format {MANIFEST_FORMAT_V1!r}: it has no chunk checksums, "
                f"which the loader needs to read and verify parts of shards. Add them in place with `armd shards "
                f"--upgrade-manifest {self.url}` (reads every shard once; the shards and the fingerprint stay the "
                "same, so saved loader states stay valid), or rebuild the set with `armd shards`"
            )
        return self.chunk_samples

    def to_json(self) -> dict[str, Any]:
        chunked = self.chunk_samples is not None
        out: dict[str, Any] = {
            "format": MANIFEST_FORMAT if chunked else MANIFEST_FORMAT_V1,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "tokenizer": {"sha256": self.tokenizer_sha256, "vocab_size": self.vocab_size, **self.tokenizer},
            "seq_len": self.seq_len,
            "dtype": self.dtype,
        }
        if chunked:
            out["chunk_samples"] = self.chunk_samples
        shards = []
        for s in self.shards:
            entry = {"name": s.name, "samples": s.samples, "sha256": s.sha256, "bytes": s.bytes}
            if chunked:
                entry["chunk_sha256"] = "".join(s.chunks)
            shards.append(entry)
        return {**out, "totals": self.totals, "shards": shards, "build": self.build}

    @classmethod
    def from_json(cls, raw: Any, url: str = "") -> Manifest:
        where = join_url(url, MANIFEST_FILE) if url else MANIFEST_FILE
        if not isinstance(raw, dict):
            raise DataError(f"{where}: top level must be an object")
        fmt = raw.get("format")
        if fmt not in (MANIFEST_FORMAT, MANIFEST_FORMAT_V1):
            raise DataError(f"{where}: format {fmt!r} is not {MANIFEST_FORMAT!r} (or {MANIFEST_FORMAT_V1!r})")
        chunked = fmt == MANIFEST_FORMAT
        try:
            tok = dict(raw["tokenizer"])
            shards = [
                ShardEntry(
                    str(s["name"]),
                    int(s["samples"]),
                    str(s["sha256"]),
                    int(s["bytes"]),
                    _split_digests(str(s["chunk_sha256"]), where, str(s["name"])) if chunked else (),
                )
                for s in raw["shards"]
            ]
            m = cls(
                split=str(raw["split"]),
                tokenizer_sha256=str(tok.pop("sha256")),
                vocab_size=int(tok.pop("vocab_size")),
                seq_len=int(raw["seq_len"]),
                dtype=str(raw["dtype"]),
                shards=shards,
                totals=dict(raw.get("totals", {})),
                build=dict(raw.get("build", {})),
                tokenizer=tok,
                url=url,
                chunk_samples=int(raw["chunk_samples"]) if chunked else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: missing or malformed key {e}") from None
        if m.dtype not in DTYPES:
            raise DataError(f"{where}: dtype {m.dtype!r} is not one of {', '.join(DTYPES)}")
        if m.chunk_samples is not None:
            _check_chunk_lists(m, where)
        if "fingerprint" in raw and raw["fingerprint"] != m.fingerprint:
            raise DataError(
                f"{where}: stored fingerprint {raw['fingerprint']} does not match its content ({m.fingerprint}); "
                "the manifest was edited"
            )
        return m


def chunk_digest(data: bytes | memoryview) -> str:
    """The checksum of a chunk's bytes as the manifest stores it."""
    return sha256_bytes(data)[:CHUNK_DIGEST_CHARS]


def _split_digests(joined: str, where: str, shard: str) -> tuple[str, ...]:
    n = CHUNK_DIGEST_CHARS
    if len(joined) % n or any(c not in "0123456789abcdef" for c in joined):
        raise DataError(f"{where}: shard {shard}: chunk_sha256 must be {n} hex digits per chunk, one after another")
    return tuple(joined[i : i + n] for i in range(0, len(joined), n))


def chunk_count(samples: int, chunk_samples: int) -> int:
    return -(-samples // chunk_samples)


def _check_chunk_lists(m: Manifest, where: str) -> None:
    assert m.chunk_samples is not None
    if m.chunk_samples < 1:
        raise DataError(f"{where}: chunk_samples={m.chunk_samples} must be >= 1")
    for s in m.shards:
        expected = chunk_count(s.samples, m.chunk_samples)
        if len(s.chunks) != expected:
            raise DataError(
                f"{where}: shard {s.name} lists {len(s.chunks)} chunk checksums, but {s.samples} samples in chunks of "
                f"{m.chunk_samples} make {expected}"
            )


def read_manifest(url: str, storage_options: StorageOptions = None) -> Manifest:
    """Read `url/manifest.json`; a missing manifest means an incomplete build or a wrong URL."""
    url = url.rstrip("/")
    path = join_url(url, MANIFEST_FILE)
    if not exists(path, storage_options):
        hint = ""
        fs, base = url_to_fs(url, storage_options)
        splits = [s for s in ("train", "val") if fs.exists(f"{base}/{s}/{MANIFEST_FILE}")]
        if splits:
            hint = f"; it holds splits {', '.join(splits)}: use {join_url(url, splits[0])}"
        elif fs.exists(base):
            hint = "; the build did not finish (the manifest is written last) - rebuild it"
        raise DataError(f"no {MANIFEST_FILE} at {url}{hint}")
    data = retry_call(
        lambda: read_bytes(path, storage_options), DEFAULT_RETRY, retryable=retryable_read_error, what=f"reading {path}"
    )
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    return Manifest.from_json(raw, url=url)


def split_urls(url: str, storage_options: StorageOptions = None) -> list[str]:
    """`url` if it is a shard set, else its `train` and `val` splits that are; raises the
    explanatory error of `read_manifest` when there is neither."""
    url = url.rstrip("/")
    if exists(join_url(url, MANIFEST_FILE), storage_options):
        return [url]
    found = [join_url(url, s) for s in ("train", "val") if exists(join_url(url, s, MANIFEST_FILE), storage_options)]
    if not found:
        read_manifest(url, storage_options)
    return found


def write_manifest(manifest: Manifest, storage_options: StorageOptions = None) -> None:
    data = (json.dumps(manifest.to_json(), indent=2) + "\n").encode()
    write_atomic(join_url(manifest.url, MANIFEST_FILE), data, storage_options)


def manifest_info(url: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """The facts a run checks against its config before training: tokenizer sha256, vocab size,
    seq_len, dtype, sample count and fingerprint of the shard set at `url`."""
    m = read_manifest(url, storage_options)
    return {
        "tokenizer_sha256": m.tokenizer_sha256,
        "vocab_size": m.vocab_size,
        "seq_len": m.seq_len,
        "dtype": m.dtype,
        "samples": m.num_samples,
        "fingerprint": m.fingerprint,
    }


def check_expectations(m: Manifest, *, tokenizer_sha: str | None, seq_len: int | None) -> None:
    """Refuse shards built with another tokenizer or sequence length, printing both values."""
    if tokenizer_sha is not None and tokenizer_sha != m.tokenizer_sha256:
        raise DataMismatchError(
            f"tokenizer mismatch: shards at {m.url} were built with tokenizer sha256 "
            f"{m.tokenizer_sha256}, but the run expects {tokenizer_sha}"
        )
    if seq_len is not None and seq_len != m.seq_len:
        raise DataMismatchError(
            f"seq_len mismatch: shards at {m.url} hold sequences of seq_len={m.seq_len}, "
            f"but the run expects seq_len={seq_len}"
        )
