"""`manifest.json`: what a shard set is and how it was built.

One manifest per split directory (`OUT/train/manifest.json`, `OUT/val/manifest.json`). It is
written after every shard of its split, so a directory without one is an incomplete build and is
refused. The *fingerprint* (SHA-256 over tokenizer identity, seq_len, dtype and the ordered list of
shard names, sample counts and checksums) identifies the data a loader state refers to; build
settings and versions are kept for people but do not enter it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from armd_scale.data.errors import DataError, DataMismatchError
from armd_scale.data.urls import StorageOptions, exists, join_url, read_bytes, url_to_fs, write_atomic

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "armd_scale.shards/1"
DTYPES = ("uint16", "uint32")


def dtype_for_vocab(vocab_size: int) -> str:
    """Smallest unsigned dtype that holds every id (uint16 halves storage for vocabularies <= 65535)."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class ShardEntry:
    name: str  # relative to the manifest's directory
    samples: int
    sha256: str
    bytes: int


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

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "tokenizer": {"sha256": self.tokenizer_sha256, "vocab_size": self.vocab_size, **self.tokenizer},
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "totals": self.totals,
            "shards": [asdict(s) for s in self.shards],
            "build": self.build,
        }

    @classmethod
    def from_json(cls, raw: Any, url: str = "") -> Manifest:
        where = join_url(url, MANIFEST_FILE) if url else MANIFEST_FILE
        if not isinstance(raw, dict):
            raise DataError(f"{where}: top level must be an object")
        if raw.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{where}: format {raw.get('format')!r} is not {MANIFEST_FORMAT!r}")
        try:
            tok = dict(raw["tokenizer"])
            shards = [
                ShardEntry(str(s["name"]), int(s["samples"]), str(s["sha256"]), int(s["bytes"])) for s in raw["shards"]
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
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: missing or malformed key {e}") from None
        if m.dtype not in DTYPES:
            raise DataError(f"{where}: dtype {m.dtype!r} is not one of {', '.join(DTYPES)}")
        if "fingerprint" in raw and raw["fingerprint"] != m.fingerprint:
            raise DataError(
                f"{where}: stored fingerprint {raw['fingerprint']} does not match its content ({m.fingerprint}); "
                "the manifest was edited"
            )
        return m


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
    try:
        raw = json.loads(read_bytes(path, storage_options))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    return Manifest.from_json(raw, url=url)


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
