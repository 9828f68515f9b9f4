"""Evaluation windows: fixed-length token sequences from shard sets or raw text.

A `--data` path is a shard set if it holds a `manifest.json` (one split directory of
`armd shards`); anything else is text input as `armd shards --input` reads it (files, folders,
globs, `hf:` datasets, `builtin:pydoc`). Text is turned into windows exactly as `armd shards` packs
it: every document is encoded with the checkpoint's tokenizer, followed by the separator, the
documents are concatenated in input order and cut into `seq_len` windows, and the last partial
window is dropped.
Evaluating text therefore gives the same number as evaluating shards built from that text.

Windows are read in file order, never shuffled, so `--max-tokens` always takes the same prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data.errors import DataError, DataMismatchError
from ..data.manifest import MANIFEST_FILE, Manifest, read_manifest
from ..data.prepare.textio import DocSplit, expand_inputs, iter_corpus
from ..data.shardio import load_shard, out_of_vocab
from ..data.tokenizers.base import Tokenizer
from ..data.urls import exists, join_url


@dataclass
class _ShardPart:
    manifest: Manifest
    windows: int  # how many of its samples are used (max_tokens may cut it)

    def read(self) -> Iterator[np.ndarray]:
        left = self.windows
        for entry in self.manifest.shards:
            if left <= 0:
                return
            url = join_url(self.manifest.url, entry.name)
            rows = load_shard(url, entry, seq_len=self.manifest.seq_len, dtype=self.manifest.dtype)[:left]
            bad = out_of_vocab(rows, self.manifest.vocab_size)  # as the writer and `armd shards --verify` check
            if bad is not None:
                raise DataError(f"shard {url}: {bad}")
            yield rows.astype(np.int64)
            left -= len(rows)


@dataclass
class EvalData:
    """The windows of every `--data` source, in order, as one stream of [batch, seq_len] arrays."""

    seq_len: int
    sources: list[dict] = field(default_factory=list)  # per source: path, kind, windows (for the JSON)
    _parts: list[_ShardPart | np.ndarray] = field(default_factory=list)

    @property
    def num_windows(self) -> int:
        return sum(s["windows"] for s in self.sources)

    @property
    def num_tokens(self) -> int:
        return self.num_windows * self.seq_len

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """[batch_size, seq_len] int64 arrays (the last one may be smaller), in source order."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        pending: list[np.ndarray] = []
        count = 0
        for part in self._parts:
            for rows in part.read() if isinstance(part, _ShardPart) else [part]:
                pending.append(rows)
                count += len(rows)
                if count < batch_size:
                    continue
                stacked = np.concatenate(pending)
                full = count - count % batch_size
                for start in range(0, full, batch_size):
                    yield stacked[start : start + batch_size]
                pending, count = [stacked[full:]], count - full
        if count:
            yield np.concatenate(pending)


def is_shard_set(url: str) -> bool:
    return exists(join_url(url, MANIFEST_FILE))


def pack_text(
    inputs: Sequence[str],
    codec: Tokenizer,
    seq_len: int,
    *,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    max_windows: int | None = None,
) -> np.ndarray:
    """[windows, seq_len] token ids of text inputs, packed as `armd shards` packs them."""
    if not codec.has_text:
        raise DataError(
            f"text inputs {list(inputs)} need a text tokenizer, but the checkpoint was trained on ids only "
            "(a synthetic source); evaluate it on shard sets"
        )
    eos = codec.eos_id
    if eos is None:
        raise DataError(f"the tokenizer (sha256 {codec.sha256}) has no end-of-sequence id to separate documents")
    sources = expand_inputs(inputs, input_format=input_format)
    stream: list[int] = []
    for doc in iter_corpus(sources, text_field=text_field, doc_split=doc_split, input_format=input_format):
        stream.extend(codec.encode(doc))
        stream.append(eos)
        if max_windows is not None and len(stream) >= max_windows * seq_len:
            break
    n = len(stream) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise DataError(
            f"text inputs {list(inputs)} give {len(stream)} tokens, less than one window of seq_len={seq_len}; "
            "pass more text or a smaller --seq-len"
        )
    return np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


def open_eval_data(
    paths: Sequence[str],
    codec: Tokenizer,
    *,
    seq_len: int,
    max_tokens: int | None = None,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
) -> EvalData:
    """Shard sets (in the order given) then all text inputs together as one packed stream.

    `seq_len` is the window length for text; every shard set must hold windows of that length, and
    its tokenizer must be the checkpoint's. `max_tokens` keeps the first max_tokens // seq_len windows.
    """
    if not paths:
        raise DataError("no --data given: pass shard-set directories or text files")
    if max_tokens is not None and max_tokens < seq_len:
        raise DataError(f"--max-tokens {max_tokens} is less than one window (seq_len={seq_len})")
    budget = None if max_tokens is None else max_tokens // seq_len
    data = EvalData(seq_len)
    texts: list[str] = []
    for path in paths:
        if not is_shard_set(path):
            for split in ("train", "val"):
                if exists(join_url(path, split, MANIFEST_FILE)):
                    raise DataError(f"{path} holds shard sets in {path}/train and {path}/val: pass one of them")
            texts.append(path)
            continue
        m = read_manifest(path)
        if m.seq_len != seq_len:
            raise DataMismatchError(
                f"shard set {path} holds windows of seq_len={m.seq_len}, but this evaluation uses seq_len={seq_len}"
            )
        if codec.sha256 and m.tokenizer_sha256 != codec.sha256:
            raise DataMismatchError(
                f"shard set {path} was built with tokenizer {m.tokenizer_sha256[:12]} but the checkpoint uses "
                f"{codec.sha256[:12]}: its ids mean different things"
            )
        if m.vocab_size > codec.vocab_size:
            raise DataMismatchError(f"shard set {path} has vocab_size={m.vocab_size} > the model's {codec.vocab_size}")
        take = m.num_samples if budget is None else min(m.num_samples, budget - data.num_windows)
        if take > 0:
            data._parts.append(_ShardPart(m, take))
            data.sources.append({"path": path, "kind": "shards", "windows": take})
    if texts:
        left = None if budget is None else budget - data.num_windows
        if left is None or left > 0:
            windows = pack_text(
                texts,
                codec,
                seq_len,
                text_field=text_field,
                doc_split=doc_split,
                input_format=input_format,
                max_windows=left,
            )
            data._parts.append(windows)
            data.sources.append({"path": texts, "kind": "text", "windows": len(windows)})
    if data.num_windows == 0:
        raise DataError(f"--data {list(paths)} holds no complete window of seq_len={seq_len}")
    return data
