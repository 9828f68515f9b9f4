"""Writing shard sets (text or a synthetic source -> packed sequences -> WebDataset tars) and
verifying them against their manifest.

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

import io
import logging
import tarfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np
from tqdm import tqdm

from armd_scale import __version__
from armd_scale.data.errors import BadShardError, DataError
from armd_scale.data.manifest import (
    Manifest,
    ShardEntry,
    dtype_for_vocab,
    read_manifest,
    split_urls,
    write_manifest,
)
from armd_scale.data.permutations import holdout
from armd_scale.data.shardio import (
    DEFAULT_CHUNK_KB,
    FIELD_BY_DTYPE,
    NUMPY_DTYPE,
    chunk_checksums,
    chunk_samples_for,
    decode_shard,
    fetch_shard,
    fixed_layout_chunks,
    record_bytes,
)
from armd_scale.data.staging import staged_out
from armd_scale.data.textio import DocSplit, expand_inputs, iter_corpus
from armd_scale.data.tokenizer import Tokenizer, encode_chunks_in_worker, init_encode_worker, load_tokenizer
from armd_scale.data.urls import StorageOptions, join_url, sha256_bytes, write_atomic

log = logging.getLogger(__name__)

SHARD_NAME = "shard-{:06d}.tar"
# Lines of one document are sent to tokenizer workers in chunks of about this many characters,
# so one huge document (a whole book) is still tokenized in parallel.
CHUNK_CHARS = 1 << 16
# the longest text without a line break encoded at once (_chunks): ~12 MB of tokenizer memory
MAX_PIECE_CHARS = 1 << 18
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
    manifests = {s: _published(m, out, s) for s, m in manifests.items()}
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


def _published(manifest: Manifest, out: str, split: str) -> Manifest:
    """The manifest as read from where it was published (it was written in the staging folder)."""
    manifest.url = join_url(out, split).rstrip("/")
    return manifest


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


def build_synthetic_shards(
    spec: str,
    out: str,
    *,
    seq_len: int,
    seed: int = 0,
    samples_per_shard: int | None = None,
    shard_size_mb: float = 64.0,
    chunk_kb: float = DEFAULT_CHUNK_KB,
    overwrite: bool = False,
    storage_options: StorageOptions = None,
) -> dict[str, Manifest]:
    """Shards of independent stationary sequences from `synthetic:markov?...` (ids shifted past the
    special ids), plus `out/tokenizer/tokenizer.json` describing the source and its entropy rate."""
    from armd_scale.data.corpora import SYNTHETIC_TOKEN_OFFSET, parse_synthetic
    from armd_scale.data.tokenizer import INFO_FORMAT

    source, sizes = parse_synthetic(spec)
    vocab = source.vocab_size + SYNTHETIC_TOKEN_OFFSET
    info = {
        "format": INFO_FORMAT,
        "kind": "synthetic",
        "source": spec,
        "sha256": source.identity(),
        "vocab_size": vocab,
        "token_offset": SYNTHETIC_TOKEN_OFFSET,
        "params": source.params,
        "entropy_rate_nats": source.entropy_rate(),
        "sequence_entropy_nats": source.sequence_entropy(seq_len),
    }
    dtype = dtype_for_vocab(vocab)
    per_shard = samples_per_shard or samples_for_size(seq_len, dtype, shard_size_mb)
    build = {"inputs": [spec], "seed": seed, "samples_per_shard": per_shard, "tool": f"armd_scale {__version__}"}
    outputs = ("tokenizer", "val", "train")
    with staged_out(out, outputs, overwrite=overwrite, storage_options=storage_options) as target:
        manifests = _sample_into(
            target, source, sizes, info, build, seq_len, vocab, per_shard, chunk_kb, seed, spec, storage_options
        )
    return {s: _published(m, out, s) for s, m in manifests.items()}


def _sample_into(
    out: str,
    source: Any,
    sizes: dict[str, int],
    info: dict[str, Any],
    build: dict[str, Any],
    seq_len: int,
    vocab: int,
    per_shard: int,
    chunk_kb: float,
    seed: int,
    spec: str,
    storage_options: StorageOptions,
) -> dict[str, Manifest]:
    from armd_scale.data.corpora import SYNTHETIC_TOKEN_OFFSET
    from armd_scale.data.tokenizer import write_tokenizer_info

    dtype = dtype_for_vocab(vocab)
    write_tokenizer_info(join_url(out, "tokenizer"), info, storage_options)
    manifests = {}
    for split, count, stream in (("val", sizes["val_samples"], 2 * seed + 1), ("train", sizes["samples"], 2 * seed)):
        if count <= 0:
            continue
        writer = ShardSetWriter(
            join_url(out, split),
            split,
            seq_len,
            vocab,
            source.identity(),
            per_shard,
            None,
            build=build,
            tokenizer_meta={"kind": "synthetic", "source": spec},
            storage_options=storage_options,
            chunk_samples=chunk_samples_for(seq_len, dtype, chunk_kb),
        )
        writer.add_samples(source.sample(count, seq_len, seed=stream) + SYNTHETIC_TOKEN_OFFSET)
        manifests[split] = writer.finish()
    return manifests


@dataclass
class VerifyReport:
    url: str
    shards: int
    samples: int
    bad: list[tuple[str, str]]  # (shard URL, reason)

    @property
    def ok(self) -> bool:
        return not self.bad


def verify_shards(url: str, *, progress: bool = False, storage_options: StorageOptions = None) -> list[VerifyReport]:
    """Check every shard of the set at `url` (or of its train/ and val/ splits) against the
    manifest: presence, size, SHA-256, tar structure, sample count, every chunk checksum (format 2)
    and token ids < vocab_size."""
    reports = []
    for target in split_urls(url, storage_options):
        m = read_manifest(target, storage_options)
        bad: list[tuple[str, str]] = []
        samples = 0
        for i, entry in enumerate(tqdm(m.shards, desc=f"verify {m.split}", unit="shard", disable=not progress)):
            shard_url = m.shard_url(i)
            try:
                data = fetch_shard(shard_url, entry, storage_options)
                arr = decode_shard(
                    data, url=shard_url, seq_len=m.seq_len, dtype=m.dtype, expected_samples=entry.samples
                )
                if m.chunk_samples is not None:
                    sums = fixed_layout_chunks(data, m, i, m.chunk_samples)
                    wrong = [c for c, (a, b) in enumerate(zip(sums, entry.chunks, strict=True)) if a != b]
                    if wrong:
                        raise BadShardError(
                            shard_url,
                            f"chunk checksum mismatch in chunk(s) {wrong[:8]}: the manifest's chunk list does not "
                            "describe this shard; rewrite it with `armd shards --upgrade-manifest`",
                        )
                if arr.size and int(arr.max()) >= m.vocab_size:
                    raise BadShardError(shard_url, f"token id {int(arr.max())} >= vocab_size {m.vocab_size}")
                samples += len(arr)
            except BadShardError as e:
                bad.append((shard_url, e.reason))
        reports.append(VerifyReport(target, len(m.shards), samples, bad))
    return reports
