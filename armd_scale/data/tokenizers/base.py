"""The tokenizer interface every backend implements, the armd tokenizer record and its constants.

Kept apart from `tokenizer.py` (which finds and trains tokenizers and so imports every backend) so
the backends can import the interface without an import loop.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from armd_scale.data.errors import DataError
from armd_scale.data.urls import StorageOptions, exists, join_url, read_bytes, write_atomic

INFO_FILE = "tokenizer.json"
INFO_FORMAT = "armd_scale.tokenizer/1"
MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
TOKENIZER_KINDS = ("sentencepiece", "byte-bpe", "wordpiece")


class Tokenizer(ABC):
    """Text <-> ids for every backend. `eos_id` is the document separator packed after every document."""

    kind: ClassVar[str]
    # False for the id tokenizer of a synthetic source (ids written as numbers, no bytes per id): what
    # a caller checks instead of catching an exception.
    has_text: ClassVar[bool] = True
    sha256: str
    source: str
    info: dict[str, Any]
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    unk_id: int | None
    # Whether a document may be encoded line by line (chunks joined by `newline_id`) with the same
    # result as whole: lets the shard builder cut huge documents across worker processes.
    newline_id: int | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (1 + the largest id); a model's vocabulary must be at least this."""

    @abstractmethod
    def payload(self) -> bytes:
        """The canonical file's bytes (its SHA-256 is the identity)."""

    @abstractmethod
    def encode_chunk(self, text: str) -> np.ndarray:
        """int64 ids of a document, or of a run of whole lines of one when `newline_id` is set."""

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; special tokens (separator, pad, BOS) decode to nothing."""

    @abstractmethod
    def byte_lengths(self) -> np.ndarray | None:
        """Per id, the UTF-8 bytes of text the token stands for (0 for special tokens): bits per
        byte sums this over the scored tokens. See each backend for where it is exact. None for a
        tokenizer without text (`has_text` False)."""

    @abstractmethod
    def files(self) -> dict[str, bytes]:
        """The files of a self-contained tokenizer directory (what an export copies)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for manifests and logs: kind, model, special tokens."""

    def encode(self, text: str) -> list[int]:
        """Token ids of one document (no separator)."""
        return self.encode_chunk(text).tolist()

    def __reduce__(self):  # worker processes rebuild the tokenizer from its file
        return (_restore, (type(self), self.payload(), self.source, self.info))


def _restore(cls, payload: bytes, source: str, info: dict[str, Any]) -> Tokenizer:
    return cls(payload, source=source, info=info)


def tokenizer_info(url: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """The armd record `tokenizer.json` of a SentencePiece or synthetic tokenizer directory."""
    info_url = join_url(url, INFO_FILE)
    if not exists(info_url, storage_options):
        raise DataError(f"{info_url} not found: '{url}' is not a tokenizer directory (train one with `armd tokenizer`)")
    info = read_json(info_url, storage_options)
    for key in ("format", "kind", "sha256", "vocab_size"):
        if key not in info:
            raise DataError(f"{info_url} lacks key '{key}'")
    if info["format"] != INFO_FORMAT:
        raise DataError(f"{info_url} has format {info['format']!r}, expected {INFO_FORMAT!r}")
    return info


def write_tokenizer_info(url: str, info: dict[str, Any], storage_options: StorageOptions = None) -> None:
    write_atomic(join_url(url, INFO_FILE), (json.dumps(info, indent=2) + "\n").encode(), storage_options)


def read_json(url: str, storage_options: StorageOptions) -> Any:
    try:
        return json.loads(read_bytes(url, storage_options))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"{url} is not valid JSON ({e}): the file is damaged; download or train the tokenizer again"
        ) from None


# -- worker-process side of parallel encoding (used by the shard builder) ------------------------

_WORKER_TOKENIZER: Tokenizer | None = None


def init_encode_worker(tokenizer: Tokenizer) -> None:
    """Process-pool initializer: the tokenizer arrives pickled as its file and is rebuilt once."""
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def encode_chunks_in_worker(chunks: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each chunk (see `Tokenizer.encode_chunk`)."""
    assert _WORKER_TOKENIZER is not None, "init_encode_worker was not called"
    return [_WORKER_TOKENIZER.encode_chunk(c) for c in chunks]
