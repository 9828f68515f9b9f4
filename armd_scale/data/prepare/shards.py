"""Building shard sets from text: documents -> tokenizer (a process pool) -> packed sequences ->
WebDataset tars (`shard_writer.py`). Synthetic sources are `synthetic.py`; checking a built set is
`verify.py`.

Layout of a build into OUT:
    OUT/train/shard-000000.tar ... OUT/train/manifest.json
    OUT/val/shard-000000.tar   ... OUT/val/manifest.json      (only with a validation fraction)
Each split is a self-contained shard set; a loader is pointed at one split directory.

Determinism: documents are read in input order, tokenized in order-preserving chunks (by a process
pool with `workers > 1`), packed the same way, and tar members carry fixed metadata (mtime 0,
owner armd, mode 0444). The same inputs and settings therefore give byte-identical shards whatever
the worker count. The last partial sequence of each split is dropped (counted in the manifest).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
from tqdm import tqdm

from armd_scale import __version__
from armd_scale.data.errors import DataError
from armd_scale.data.manifest import Manifest, dtype_for_vocab
from armd_scale.data.permutations import holdout
from armd_scale.data.prepare.shard_writer import ShardSetWriter, published, samples_for_size
from armd_scale.data.prepare.staging import staged_out
from armd_scale.data.prepare.textio import DocSplit, expand_inputs, iter_corpus
from armd_scale.data.shardio import DEFAULT_CHUNK_KB, chunk_samples_for
from armd_scale.data.tokenizers.base import Tokenizer, encode_chunks_in_worker, init_encode_worker
from armd_scale.data.tokenizers.load import load_tokenizer
from armd_scale.data.urls import StorageOptions, join_url

log = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 16
# the longest text without a line break encoded at once (_chunks): ~12 MB of tokenizer memory
MAX_PIECE_CHARS = 1 << 18


def _ordered_map(
    tok: Tokenizer, tasks: Iterable[tuple[Any, list[str]]], workers: int
) -> Iterator[tuple[Any, list[np.ndarray]]]:
    """(meta, token ids of each chunk) for each (meta, chunks) task, in task order; parallel with
    workers > 1. A bounded window of futures keeps memory flat (Pool.imap would read the whole
    corpus ahead)."""
    if workers <= 1:
        for meta, chunks in tasks:
            yield meta, [tok.encode_chunk(c) for c in chunks]
        return
    ctx = get_context("spawn")  # no fork of a process that may hold threads (tqdm's monitor)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_encode_worker, initargs=(tok,)) as pool:
        window: deque[tuple[Any, Future]] = deque()
        for meta, chunks in tasks:
            window.append((meta, pool.submit(encode_chunks_in_worker, chunks)))
            if len(window) >= 4 * workers:
                m, fut = window.popleft()
                yield m, fut.result()
        while window:
            m, fut = window.popleft()
            yield m, fut.result()


def _cut_point(doc: str, start: int) -> int:
    """Where to cut a run of MAX_PIECE_CHARS characters without a line break: before its last space
    in the second half of the run (a word stays whole and the space starts the next piece, as the
    tokenizers' own pre-splitting would put it), else after exactly MAX_PIECE_CHARS characters."""
    end = start + MAX_PIECE_CHARS
    space = doc.rfind(" ", start + MAX_PIECE_CHARS // 2, end)
    return space if space > start else end


def _chunks(doc: str, cut: bool) -> Iterator[tuple[str, bool, bool]]:
    """(chunk, is the last, a line break follows it) for a document cut after about CHUNK_CHARS
    characters at line breaks, the breaks themselves left out (the packer puts the newline id
    back between such chunks); whole when `cut` is false. Either way a stretch of more than
    MAX_PIECE_CHARS characters without a line break (a 50 MB line) is cut into pieces of at most
    MAX_PIECE_CHARS characters that are joined with nothing between them: encoding one costs
    tens of times its size in memory, so the whole line would cost gigabytes. The text is kept
    whole; only the tokens around a cut may differ from those of the uncut line."""
    start = 0
    while len(doc) - start > (CHUNK_CHARS if cut else MAX_PIECE_CHARS):
        if cut:
            end = doc.find("\n", start + CHUNK_CHARS, start + MAX_PIECE_CHARS)
            if end >= 0:
                yield doc[start:end], False, True
                start = end + 1
                continue
            if len(doc) - start <= MAX_PIECE_CHARS:
                break
        end = _cut_point(doc, start)
        yield doc[start:end], False, False
        start = end
    yield doc[start:], True, False


def _tasks(docs: Iterable[str], cut: bool) -> Iterator[tuple[list[tuple[int, bool, bool]], list[str]]]:
    """Encoding tasks of about CHUNK_CHARS characters, in document order. A task is a list of
    chunks with, per chunk, (document index, is the document's last chunk, a line break follows
    it): small documents are batched into one task, large ones are cut at line breaks across tasks
    when the tokenizer encodes line by line (`cut`), and over-long lines into pieces (_chunks)."""
    meta: list[tuple[int, bool, bool]] = []
    chunks: list[str] = []
    size = 0
    for index, doc in enumerate(docs):
        for chunk, last, newline in _chunks(doc, cut):
            meta.append((index, last, newline))
            chunks.append(chunk)
            size += len(chunk) + 1
            if size >= CHUNK_CHARS:
                yield meta, chunks
                meta, chunks, size = [], [], 0
    if chunks:
        yield meta, chunks


def build_shards(
    inputs: Sequence[str],
    out: str,
    tokenizer: str | Tokenizer,
    *,
    seq_len: int,
    val_fraction: float = 0.0,
    seed: int = 0,
    workers: int = 1,
    samples_per_shard: int | None = None,
    shard_size_mb: float = 64.0,
    chunk_kb: float = DEFAULT_CHUNK_KB,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
    storage_options: StorageOptions = None,
) -> dict[str, Manifest]:
    """Tokenize `inputs` and write `out/train` (and `out/val` when val_fraction > 0).

    Whole documents are held out for validation (a seeded choice of round(val_fraction * docs)):
    a first pass counts the documents, the second tokenizes them; both stream the inputs.
    Returns the manifests by split."""
    if seq_len < 1:
        raise DataError(f"seq_len={seq_len} must be >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be in [0, 1)")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer, storage_options)
    sources = expand_inputs(inputs, storage_options, input_format)
    read: dict[str, Any] = dict(
        text_field=text_field, doc_split=doc_split, input_format=input_format, storage_options=storage_options
    )
    scan = iter_corpus(sources, warn=False, **read)
    n_docs = sum(1 for _ in tqdm(scan, desc="shards: scanning", unit="doc", disable=not progress))
    if n_docs == 0:
        raise DataError(f"inputs {list(inputs)} contain no documents")
    if val_fraction > 0 and n_docs < 2:
        raise DataError(
            f"val_fraction={val_fraction} needs at least 2 documents, inputs have {n_docs}; try doc_split='paragraph'"
        )
    is_val = holdout(n_docs, val_fraction, seed)
    dtype = dtype_for_vocab(tok.vocab_size)
    per_shard = samples_per_shard or samples_for_size(seq_len, dtype, shard_size_mb)
    build = {
        "inputs": list(inputs),
        "val_fraction": val_fraction,
        "seed": seed,
        "text_field": text_field,
        "doc_split": doc_split,
        "input_format": input_format,
        "samples_per_shard": per_shard,
        "eos_id": tok.eos_id,
        "tool": f"armd_scale {__version__}",
    }
    # written beside `out` and renamed into place whole (staging.py): two builds never mix
    with staged_out(out, ("val", "train"), overwrite=overwrite, storage_options=storage_options) as target:
        manifests = _tokenize_into(
            target, tok, sources, read, build, is_val, n_docs, seq_len, per_shard, chunk_kb, workers, progress
        )
    manifests = {s: published(m, out, s) for s, m in manifests.items()}
    if "val" in manifests:
        share = manifests["val"].totals["tokens"] / max(1, sum(m.totals["tokens"] for m in manifests.values()))
        if share > 2 * val_fraction + 0.02:
            log.warning(
                "the validation split holds %.0f%% of the tokens for val_fraction=%g: the inputs have few, "
                "large documents; doc_split='paragraph' holds out finer units",
                100 * share,
                val_fraction,
            )
    return manifests


def _tokenize_into(
    out: str,
    tok: Tokenizer,
    sources: Any,
    read: dict[str, Any],
    build: dict[str, Any],
    is_val: np.ndarray,
    n_docs: int,
    seq_len: int,
    per_shard: int,
    chunk_kb: float,
    workers: int,
    progress: bool,
) -> dict[str, Manifest]:
    """Tokenize the documents into `out`/train (and `out`/val); the manifests, val's first."""
    storage_options = read["storage_options"]
    dtype = dtype_for_vocab(tok.vocab_size)
    splits = ["train", "val"] if is_val.any() else ["train"]
    writers = {
        s: ShardSetWriter(
            join_url(out, s),
            s,
            seq_len,
            tok.vocab_size,
            tok.sha256,
            per_shard,
            tok.eos_id,
            build=build,
            tokenizer_meta=tok.describe(),
            storage_options=storage_options,
            chunk_samples=chunk_samples_for(seq_len, dtype, chunk_kb),
        )
        for s in splits
    }
    bar = tqdm(total=n_docs, desc="shards: tokenizing", unit="doc", disable=not progress)
    newline = np.array([tok.newline_id if tok.newline_id is not None else 0])
    tasks = _tasks(iter_corpus(sources, **read), cut=tok.newline_id is not None)
    for metas, encoded in _ordered_map(tok, tasks, workers):
        for (index, last, line_break), ids in zip(metas, encoded, strict=True):
            writer = writers["val" if is_val[index] else "train"]
            writer.add_tokens(ids)
            if last:
                writer.end_document()
                bar.update(1)
            elif line_break:
                writer.add_tokens(newline)
    bar.close()
    # val first: the train manifest, the one a run needs, is the very last file written
    return {s: writers[s].finish() for s in reversed(splits)}
