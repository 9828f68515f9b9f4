"""The shard format's writer: packed sequences -> WebDataset tars with a SHA-256 per chunk -> the
manifest, written last (so a split without a manifest is incomplete by construction).

Shared by the text builder (`shards.py`) and the synthetic builder (`synthetic.py`). Tar members
carry fixed metadata (mtime 0, owner armd, mode 0444), so the same ids give byte-identical shards.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from armd_scale.data.errors import DataError
from armd_scale.data.manifest import Manifest, ShardEntry, dtype_for_vocab, write_manifest
from armd_scale.data.shardio import (
    DEFAULT_CHUNK_KB,
    FIELD_BY_DTYPE,
    NUMPY_DTYPE,
    chunk_checksums,
    chunk_samples_for,
    record_bytes,
)
from armd_scale.data.urls import StorageOptions, join_url, sha256_bytes, write_atomic

SHARD_NAME = "shard-{:06d}.tar"
# Lines of one document are sent to tokenizer workers in chunks of about this many characters,
# so one huge document (a whole book) is still tokenized in parallel.
SPLITS = ("train", "val")


def samples_for_size(seq_len: int, dtype: str, shard_size_mb: float) -> int:
    """How many samples fit a shard of about `shard_size_mb` MiB (tar header + padded payload each)."""
    return max(1, int(shard_size_mb * (1 << 20)) // record_bytes(seq_len, dtype))


def encode_shard(samples: np.ndarray, first_index: int, dtype: str) -> bytes:
    """Tar bytes of one shard; member i is `<first_index + i>.tokens.<u16|u32>`.

    Written with the standard library exactly as webdataset's `TarWriter(encoder=False, mtime=0,
    user="armd", group="armd", mode=0o444)` writes it (a test compares the bytes), without importing
    webdataset, which imports torch and would add ~200 MB to the builder's memory."""
    buf = io.BytesIO()
    field_name = FIELD_BY_DTYPE[dtype]
    raw = np.ascontiguousarray(samples, dtype=NUMPY_DTYPE[dtype])
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for i, row in enumerate(raw):
            data = row.tobytes()
            info = tarfile.TarInfo(f"{first_index + i:010d}.{field_name}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "armd", "armd"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class ShardSetWriter:
    """Packs a token stream into seq_len samples and writes full shards as they fill, with a
    SHA-256 per chunk of `chunk_samples` records (default: chunks of about DEFAULT_CHUNK_KB).

    `finish()` writes the last (smaller) shard and then the manifest; until then the split is
    incomplete by construction.
    """

    url: str
    split: str
    seq_len: int
    vocab_size: int
    tokenizer_sha256: str
    samples_per_shard: int
    eos_id: int | None
    build: dict[str, Any] = field(default_factory=dict)
    tokenizer_meta: dict[str, Any] = field(default_factory=dict)
    storage_options: StorageOptions = None
    chunk_samples: int | None = None

    def __post_init__(self) -> None:
        self.dtype = dtype_for_vocab(self.vocab_size)
        if self.chunk_samples is None:
            self.chunk_samples = chunk_samples_for(self.seq_len, self.dtype, DEFAULT_CHUNK_KB)
        if self.chunk_samples < 1:
            raise DataError(f"chunk_samples={self.chunk_samples} must be >= 1")
        self.entries: list[ShardEntry] = []
        # One shard's worth of ids in the shard's dtype, filled in place: memory stays at one shard
        # whatever the corpus (a list of per-document arrays cost ~4x that in array headers).
        self._buffer = np.empty(0, dtype=NUMPY_DTYPE[self.dtype])
        self._fill = 0
        self._samples = 0
        self.documents = 0

    def add_document(self, tokens: np.ndarray) -> None:
        """Append one document followed by the separator."""
        self.add_tokens(tokens)
        self.end_document()

    def add_tokens(self, tokens: np.ndarray) -> None:
        """Append part of the current document (a long document arrives in pieces)."""
        self._append(np.asarray(tokens))

    def end_document(self) -> None:
        """Close the current document: append the separator."""
        self.documents += 1
        if self.eos_id is not None:
            self._append(np.array([self.eos_id]))

    def add_samples(self, samples: np.ndarray) -> None:
        """Append ready-made sequences (synthetic sources): rows are not joined with EOS."""
        self._append(np.asarray(samples).reshape(-1))

    def _append(self, tokens: np.ndarray) -> None:
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise DataError(f"token id outside [0, {self.vocab_size}) while writing {self.url}")
        if not len(self._buffer):
            self._buffer = np.empty(self.seq_len * self.samples_per_shard, dtype=NUMPY_DTYPE[self.dtype])
        start = 0
        while start < len(tokens):
            take = min(len(tokens) - start, len(self._buffer) - self._fill)
            self._buffer[self._fill : self._fill + take] = tokens[start : start + take]
            self._fill += take
            start += take
            if self._fill == len(self._buffer):
                self._write_shard(self._buffer.reshape(self.samples_per_shard, self.seq_len))
                self._fill = 0

    def _write_shard(self, samples: np.ndarray) -> None:
        name = SHARD_NAME.format(len(self.entries))
        data = encode_shard(samples, self._samples, self.dtype)
        write_atomic(join_url(self.url, name), data, self.storage_options)
        assert self.chunk_samples is not None
        chunks = chunk_checksums(data, len(samples), record_bytes(self.seq_len, self.dtype), self.chunk_samples)
        self.entries.append(ShardEntry(name, len(samples), sha256_bytes(data), len(data), chunks))
        self._samples += len(samples)

    def finish(self) -> Manifest:
        whole = self._fill // self.seq_len
        if whole:
            self._write_shard(self._buffer[: whole * self.seq_len].reshape(whole, self.seq_len))
        dropped = self._fill - whole * self.seq_len
        if not self.entries:  # a manifest over no samples would be a shard set that trains on nothing
            raise DataError(
                f"{self.url}: the {self.split} split has {dropped} tokens, not one whole sample of seq_len="
                f"{self.seq_len}; lower --seq-len or add input (nothing was published)"
            )
        manifest = Manifest(
            split=self.split,
            tokenizer_sha256=self.tokenizer_sha256,
            vocab_size=self.vocab_size,
            seq_len=self.seq_len,
            dtype=self.dtype,
            shards=self.entries,
            build=self.build,
            tokenizer=self.tokenizer_meta,
            url=self.url.rstrip("/"),
            chunk_samples=self.chunk_samples,
            totals={
                "shards": len(self.entries),
                "samples": self._samples,
                "tokens": self._samples * self.seq_len,
                "documents": self.documents,
                "dropped_tail_tokens": dropped,
                "bytes": sum(e.bytes for e in self.entries),
            },
        )
        write_manifest(manifest, self.storage_options)
        return manifest


def published(manifest: Manifest, out: str, split: str) -> Manifest:
    """The manifest as read from where it was published (it was written in the staging folder)."""
    manifest.url = join_url(out, split).rstrip("/")
    return manifest
