"""Tokenizers: one interface, two backends, and how a `--tokenizer` / `data.tokenizer` value is found.

Backends:
- `SentencePieceTokenizer` (sp_tokenizer.py): models trained by `armd tokenizer` (the default kind),
  special ids pad=0, unk=1, bos=2, eos=3, documents encoded line by line. Identity: SHA-256 of
  `tokenizer.model`.
- `HFTokenizer` (hf_tokenizer.py): a Hugging Face `tokenizers` file, `tokenizer.json`, such as
  GPT-2's byte-level BPE or bert-base-uncased's WordPiece, or one trained here with
  `armd tokenizer --kind byte-bpe|wordpiece`. Identity: SHA-256 of `tokenizer.json` as stored.
  Special roles (document separator, BOS, pad, unk) come from the tokenizer's own tokens.

The identity travels into shard manifests and checkpoints, so a mismatch is refused wherever ids
meet: a run resuming on other shards, an evaluation on shards of another tokenizer.

What `load_tokenizer(spec)` accepts, in this order:
1. a `.model` file: a bare SentencePiece model;
2. a directory with `tokenizer.json`: an armd record (SentencePiece or synthetic, with
   `"format": "armd_scale.tokenizer/1"`) or a Hugging Face tokenizer file (e.g. a downloaded
   `gpt2` folder, or the output of `armd tokenizer --kind byte-bpe`);
3. a `.json` file: a Hugging Face tokenizer file;
4. a hub name (`gpt2`, `bert-base-uncased`, `org/name`) that is not a local path: looked up in
   the local Hugging Face cache only (huggingface_hub with local files only). The stack never
   downloads; `hf download gpt2 tokenizer.json` fetches it once on a machine with internet.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from armd_scale.data.errors import DataError
from armd_scale.data.textio import DocSplit
from armd_scale.data.urls import StorageOptions, exists, join_url, read_bytes, url_to_fs, write_atomic

INFO_FILE = "tokenizer.json"
INFO_FORMAT = "armd_scale.tokenizer/1"
MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
TOKENIZER_KINDS = ("sentencepiece", "byte-bpe", "wordpiece")


class IdsOnlyTokenizer(DataError):
    """The tokenizer record describes a token source without text (a synthetic source)."""

    def __init__(self, message: str, info: dict[str, Any]):
        super().__init__(message)
        self.info = info

    def __reduce__(self):
        return (type(self), (str(self), self.info))


class Tokenizer(ABC):
    """Text <-> ids for every backend. `eos_id` is the document separator packed after every document."""

    kind: ClassVar[str]
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
    def byte_lengths(self) -> np.ndarray:
        """Per id, the UTF-8 bytes of text the token stands for (0 for special tokens): bits per
        byte sums this over the scored tokens. See each backend for where it is exact."""

    @abstractmethod
    def files(self) -> dict[str, bytes]:
        """The files of a self-contained tokenizer directory (what an export copies)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for manifests and logs: kind, model, special tokens."""

    def encode(self, text: str) -> list[int]:
        """Token ids of one document (no separator)."""
        return self.encode_chunk(text).tolist()

    @classmethod
    def load(cls, spec: str, storage_options: StorageOptions = None) -> Tokenizer:
        return load_tokenizer(spec, storage_options)

    def __reduce__(self):  # worker processes rebuild the tokenizer from its file
        return (_restore, (type(self), self.payload(), self.source, self.info))


def _restore(cls, payload: bytes, source: str, info: dict[str, Any]) -> Tokenizer:
    return cls(payload, source=source, info=info)


def tokenizer_info(url: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """The armd record `tokenizer.json` of a SentencePiece or synthetic tokenizer directory."""
    info_url = join_url(url, INFO_FILE)
    if not exists(info_url, storage_options):
        raise DataError(f"{info_url} not found: '{url}' is not a tokenizer directory (train one with `armd tokenizer`)")
    info = _read_json(info_url, storage_options)
    for key in ("format", "kind", "sha256", "vocab_size"):
        if key not in info:
            raise DataError(f"{info_url} lacks key '{key}'")
    if info["format"] != INFO_FORMAT:
        raise DataError(f"{info_url} has format {info['format']!r}, expected {INFO_FORMAT!r}")
    return info


def write_tokenizer_info(url: str, info: dict[str, Any], storage_options: StorageOptions = None) -> None:
    write_atomic(join_url(url, INFO_FILE), (json.dumps(info, indent=2) + "\n").encode(), storage_options)


def _read_json(url: str, storage_options: StorageOptions) -> Any:
    try:
        return json.loads(read_bytes(url, storage_options))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"{url} is not valid JSON ({e}): the file is damaged; download or train the tokenizer again"
        ) from None


def load_tokenizer(spec: str, storage_options: StorageOptions = None) -> Tokenizer:
    """The tokenizer a `--tokenizer` value names (see the module docstring for the forms)."""
    from armd_scale.data.hf_tokenizer import HFTokenizer, is_hub_name, load_hf_dir, resolve_hub_name
    from armd_scale.data.sp_tokenizer import SentencePieceTokenizer, load_sentencepiece_dir

    if spec.endswith(".model"):
        if not exists(spec, storage_options):
            raise DataError(f"tokenizer model {spec} does not exist")
        return SentencePieceTokenizer(read_bytes(spec, storage_options), source=spec)
    if exists(spec, storage_options):
        fs, path = url_to_fs(spec, storage_options)
        if fs.isdir(path):
            record_url = join_url(spec, INFO_FILE)
            if not exists(record_url, storage_options):
                raise DataError(
                    f"{record_url} not found: '{spec}' is not a tokenizer directory (train one with `armd tokenizer`, "
                    "or pass a folder holding a Hugging Face tokenizer.json)"
                )
            record = _read_json(record_url, storage_options)
            if isinstance(record, dict) and record.get("format") == INFO_FORMAT:
                if record.get("kind") != "sentencepiece":
                    raise IdsOnlyTokenizer(
                        f"tokenizer {spec} is a {record.get('kind')} token source ({record.get('source', '?')}), "
                        "which has ids but no text tokenizer",
                        record,
                    )
                return load_sentencepiece_dir(spec, tokenizer_info(spec, storage_options), storage_options)
            return load_hf_dir(spec, storage_options)
        if spec.endswith(".json"):
            return HFTokenizer(read_bytes(spec, storage_options), source=spec)
        raise DataError(
            f"tokenizer {spec} is a file of unknown kind: pass a tokenizer directory, a tokenizer.json "
            "or a SentencePiece .model file"
        )
    if is_hub_name(spec):
        path = resolve_hub_name(spec)
        with open(path, "rb") as f:
            return HFTokenizer(f.read(), source=spec, info={"hub_name": spec, "resolved": path})
    raise DataError(f"tokenizer {spec} does not exist (not a local path, and not a hub name like gpt2 or org/name)")


def train_tokenizer(
    inputs: Sequence[str],
    out: str,
    *,
    vocab_size: int,
    kind: str = "sentencepiece",
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    progress: bool = False,
    storage_options: StorageOptions = None,
    **options: Any,
) -> Tokenizer:
    """Train a tokenizer of `kind` on `inputs` into the directory `out` and return it loaded.
    SentencePiece options (model_type, character_coverage, byte_fallback, max_sentences,
    num_threads, seed) apply to kind "sentencepiece"; `lowercase` to "wordpiece"."""
    read: dict[str, Any] = dict(
        text_field=text_field, doc_split=doc_split, input_format=input_format, progress=progress
    )
    if kind == "sentencepiece":
        from armd_scale.data.sp_tokenizer import train_sentencepiece

        return train_sentencepiece(
            inputs, out, vocab_size=vocab_size, storage_options=storage_options, **read, **options
        )
    if kind in ("byte-bpe", "wordpiece"):
        from armd_scale.data.hf_training import train_hf_tokenizer

        return train_hf_tokenizer(
            inputs, out, kind=kind, vocab_size=vocab_size, storage_options=storage_options, **read, **options
        )
    raise DataError(f"tokenizer kind {kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")


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
