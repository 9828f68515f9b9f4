"""Which reader an input file needs, decided from its name, and its bytes as a decompressed stream.

The name decides, read right to left: an optional compression suffix (`.gz`, `.zst`, `.zstd`,
`.bz2`, `.xz`), then the format suffix (`.txt`/`.text`/`.tokens`: text, `.tokens` being how the
language-modelling benchmarks ship their plain text, LM1B's `1b_benchmark.dev.tokens` and
WikiText's `wiki.valid.tokens`; `.jsonl`/`.ndjson`/`.json`: JSON
lines, as Dolma ships them in `.json.gz`; `.parquet`: Parquet). So `corpus.jsonl.zst` is JSON lines
compressed with zstd. A name that fits none of these is an error naming the file: reading a tar
or a Parquet file as plain text would silently train on garbage. `--input-format` forces the format
for files whose names do not say it (LM1B's `news.en-00001-of-00100`); compression is still read
from the suffix.

Streams are read in blocks and never whole (`open_stream`). A zstd stream is decoded frame by frame
with a check at its end, so a truncated `.zst` file is an error rather than a silently shorter corpus.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec

from armd_scale.data.errors import DataError
from armd_scale.data.urls import StorageOptions

COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
FORMAT_SUFFIXES = {
    ".txt": "text",
    ".text": "text",
    ".tokens": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
INPUT_FORMATS = ("auto", "text", "jsonl", "parquet")
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileFormat:
    kind: str  # text, jsonl or parquet
    compression: str | None  # gzip, zstd, bz2, xz or None


def _split_suffixes(name: str) -> tuple[str, str | None]:
    """(name without its compression suffix, compression or None); lower-cased."""
    lower = name.lower()
    for suffix, compression in COMPRESSION_SUFFIXES.items():
        if lower.endswith(suffix):
            return lower[: -len(suffix)], compression
    return lower, None


def _format_suffix(stem: str) -> str | None:
    base = stem.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return FORMAT_SUFFIXES.get(base[dot:]) if dot > 0 else None


def detect_format(path: str, input_format: str = "auto") -> FileFormat:
    """The format of the file at `path`; an unknown name is a DataError that names the file."""
    if input_format not in INPUT_FORMATS:
        raise DataError(f"input format {input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    stem, compression = _split_suffixes(path)
    kind = _format_suffix(stem) if input_format == "auto" else input_format
    if kind is None:
        known = ", ".join(FORMAT_SUFFIXES)
        raise DataError(
            f"input file {path}: cannot tell its format from the name (known: {known}, optionally followed by "
            f"{', '.join(COMPRESSION_SUFFIXES)}); rename it or pass --input-format text|jsonl|parquet"
        )
    if kind == "parquet" and compression is not None:
        raise DataError(
            f"input file {path}: a Parquet file is compressed internally; an outer {compression} layer is not read"
        )
    return FileFormat(kind, compression)


def found_in_folder(path: str, input_format: str = "auto") -> bool:
    """Whether a folder search keeps this file: files whose format the name states, so README,
    LICENSE or notes beside a corpus stay out. A bare `.json` is left out too (dataset folders hold
    metadata like `dataset_info.json`); JSON lines named `.json.gz`/`.json.zst` (Dolma) are kept.
    With a forced format, every file except hidden ones is kept."""
    base = path.rsplit("/", 1)[-1]
    if base.startswith("."):
        return False
    if input_format != "auto":
        return True
    stem, compression = _split_suffixes(path)
    kind = _format_suffix(stem)
    if kind is None or (kind == "parquet" and compression is not None):
        return False
    return not (stem.endswith(".json") and compression is None)


class _ZstdReader(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) zstd stream. Unlike zstandard's stream reader, reaching
    the end of the input inside a frame raises instead of ending quietly, so truncation is caught."""

    def __init__(self, raw: BinaryIO, source: str):
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"input file {source} is zstd-compressed: install zstandard (pip install zstandard)"
            ) from None
        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._raw = raw
        self._source = source
        self._frame: Any = None  # zstandard.ZstdDecompressionObj of the frame being read
        self._input = b""
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self._output):
            if not self._input:
                self._input = self._raw.read(_READ_BLOCK)
                if not self._input:
                    if self._frame is not None and not self._frame.eof:
                        raise DataError(
                            f"input file {self._source}: the zstd stream ends inside a frame (truncated file)"
                        )
                    return 0
            if self._frame is None or self._frame.eof:
                self._frame = self._dctx.decompressobj()
            try:
                out = self._frame.decompress(self._input)
            except self._zstd.ZstdError as e:
                raise DataError(f"input file {self._source} is not a valid zstd stream: {e}") from None
            self._input = self._frame.unused_data if self._frame.eof else b""
            self._output = memoryview(out)
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n


def _decompressed(raw: BinaryIO, compression: str | None, source: str) -> BinaryIO:
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    return io.BufferedReader(_ZstdReader(raw, source), _READ_BLOCK)


@contextmanager
def open_stream(source: str, compression: str | None, storage_options: StorageOptions = None) -> Iterator[BinaryIO]:
    """The decompressed bytes of `source` as a buffered stream. Errors while opening or reading
    (a missing file, a corrupt or truncated archive) become DataErrors that name the file."""
    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as raw:
            with _decompressed(raw, compression, source) as stream:
                yield stream
    except FileNotFoundError:
        raise DataError(f"input file {source} does not exist") from None
    except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
        raise DataError(f"input file {source} is corrupt or truncated ({compression or 'uncompressed'}): {e}") from None
    except OSError as e:
        raise DataError(f"cannot read input file {source}: {e}") from None
