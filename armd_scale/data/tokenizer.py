"""SentencePiece tokenizer: training, loading and lossless document encoding.

Choices, and why:
- Special ids are fixed (pad=0, unk=1, bos=2, eos=3) so every model, shard set and checkpoint of
  the stack agrees on them without looking them up.
- Normalisation is `identity`, extra whitespace is kept and there is no dummy prefix: decoding the
  tokens of a document gives the document back (code indentation and newlines included), apart
  from characters outside the vocabulary, which become unk (or bytes with `byte_fallback`).
- `\\n` is a user-defined piece and documents are encoded line by line with that piece between
  lines. SentencePiece trains on lines, so this is also how it saw the text, and lines can be
  encoded in parallel and in any grouping with the same result.
- The tokenizer's identity is the SHA-256 of its `.model` file, written to `tokenizer.json` beside
  it; it travels into shard manifests and checkpoints so mismatches are caught.
- Training uses a fixed thread count and random seed (SentencePiece's result depends on both), so
  retraining on the same input gives the same file and the same identity.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import sentencepiece as spm

from armd_scale import __version__
from armd_scale.data.errors import DataError
from armd_scale.data.textio import DocSplit, expand_inputs, iter_documents, source_bytes
from armd_scale.data.urls import StorageOptions, exists, join_url, read_bytes, sha256_bytes, write_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
INFO_FILE = "tokenizer.json"
INFO_FORMAT = "armd_scale.tokenizer/1"
SPECIAL_IDS: dict[str, int] = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
NEWLINE = "\n"
# SentencePiece drops longer training lines; jsonl paragraphs are often long single lines.
MAX_SENTENCE_BYTES = 1 << 15


class Tokenizer:
    """A loaded SentencePiece model plus its identity (`sha256`)."""

    def __init__(self, model_proto: bytes, *, source: str = "<bytes>", info: dict[str, Any] | None = None):
        self.model_proto = bytes(model_proto)
        self.sha256 = sha256_bytes(self.model_proto)
        self.source = source
        self.info = info or {}
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        got = dict(pad=self.sp.pad_id(), unk=self.sp.unk_id(), bos=self.sp.bos_id(), eos=self.sp.eos_id())
        if got != SPECIAL_IDS:
            raise DataError(f"tokenizer {source} has special ids {got}; armd_scale requires {SPECIAL_IDS}")
        newline = self.sp.piece_to_id(NEWLINE)
        self.newline_id: int | None = None if newline == self.unk_id else newline

    pad_id = SPECIAL_IDS["pad"]
    unk_id = SPECIAL_IDS["unk"]
    bos_id = SPECIAL_IDS["bos"]
    eos_id = SPECIAL_IDS["eos"]

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @classmethod
    def load(cls, url: str, storage_options: StorageOptions = None) -> Tokenizer:
        """Load a tokenizer directory (checking the model against the SHA-256 in tokenizer.json) or a
        bare `.model` file (its identity is then computed)."""
        if url.endswith(".model"):
            return cls(read_bytes(url, storage_options), source=url)
        info = tokenizer_info(url, storage_options)
        if info.get("kind") != "sentencepiece":
            raise DataError(
                f"tokenizer {url} is a {info.get('kind')} token source ({info.get('source', '?')}), "
                "which has ids but no text tokenizer"
            )
        model_url = join_url(url, info.get("model", MODEL_FILE))
        if not exists(model_url, storage_options):
            raise DataError(f"tokenizer model {model_url} is missing (tokenizer.json names it)")
        tok = cls(read_bytes(model_url, storage_options), source=url, info=info)
        if tok.sha256 != info["sha256"]:
            raise DataError(
                f"tokenizer model {model_url} has sha256 {tok.sha256} but {join_url(url, INFO_FILE)} "
                f"records {info['sha256']}: the model file was replaced; retrain or fix the directory"
            )
        return tok

    def encode_lines(self, lines: Sequence[str]) -> np.ndarray:
        """Token ids of `lines` joined by the newline piece (no trailing newline), int64."""
        if not lines:
            return np.zeros(0, dtype=np.int64)
        if self.newline_id is None:  # a foreign model without a newline piece: encode as one text
            return np.asarray(self.sp.encode(NEWLINE.join(lines)), dtype=np.int64)
        # One call per line: SentencePiece's list API starts a thread pool per call, which costs
        # far more than it saves on the short line groups a document usually has.
        encode = self.sp.encode
        out: list[int] = encode(lines[0])
        for line in lines[1:]:
            out.append(self.newline_id)
            out.extend(encode(line))
        return np.asarray(out, dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        """Token ids of one document (no BOS/EOS)."""
        return self.encode_lines(text.split(NEWLINE)).tolist()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; special ids (pad, bos, eos) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])


def tokenizer_info(url: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """The tokenizer.json of a tokenizer directory (identity, vocab size, how it was built)."""
    info_url = join_url(url, INFO_FILE)
    if not exists(info_url, storage_options):
        raise DataError(f"{info_url} not found: '{url}' is not a tokenizer directory (train one with `armd tokenizer`)")
    try:
        info = json.loads(read_bytes(info_url, storage_options))
    except json.JSONDecodeError as e:
        raise DataError(f"{info_url} is not valid JSON: {e}") from None
    for key in ("format", "kind", "sha256", "vocab_size"):
        if key not in info:
            raise DataError(f"{info_url} lacks key '{key}'")
    if info["format"] != INFO_FORMAT:
        raise DataError(f"{info_url} has format {info['format']!r}, expected {INFO_FORMAT!r}")
    return info


def write_tokenizer_info(url: str, info: dict[str, Any], storage_options: StorageOptions = None) -> None:
    write_atomic(join_url(url, INFO_FILE), (json.dumps(info, indent=2) + "\n").encode(), storage_options)


def _training_lines(
    sources: Sequence[str],
    stats: dict[str, int],
    bar: Any,
    text_field: str,
    doc_split: DocSplit,
    storage_options: StorageOptions,
) -> Iterator[str]:
    """Non-empty lines of every document; counts documents, lines and bytes as SentencePiece reads."""
    done = 0
    for source in sources:
        for doc in iter_documents(source, text_field=text_field, doc_split=doc_split, storage_options=storage_options):
            stats["documents"] += 1
            for line in doc.split(NEWLINE):
                if line:
                    stats["sentences"] += 1
                    yield line
            if bar is not None:
                bar.update(len(doc) + 1)
        size = source_bytes(source, storage_options)
        if bar is not None and size is not None:  # resynchronise with stored sizes (.gz, UTF-8)
            done += size
            bar.update(done - bar.n)


def _escape(piece: str) -> str:
    """Pieces as one line each in tokenizer.vocab (the newline piece would otherwise split a line)."""
    return piece.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def train_tokenizer(
    inputs: Sequence[str],
    out: str,
    *,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    max_sentences: int = 5_000_000,
    num_threads: int = 4,
    seed: int = 0,
    progress: bool = False,
    storage_options: StorageOptions = None,
) -> Tokenizer:
    """Train a SentencePiece model on `inputs` and write tokenizer.model, tokenizer.vocab and
    tokenizer.json (last) into `out`. Returns the loaded tokenizer."""
    if model_type not in ("bpe", "unigram"):
        raise DataError(f"model_type={model_type!r} must be 'bpe' or 'unigram'")
    if not 0.0 < character_coverage <= 1.0:
        raise DataError(f"character_coverage={character_coverage} must be in (0, 1]")
    sources = expand_inputs(inputs, storage_options)
    sizes = [source_bytes(s, storage_options) for s in sources]
    total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
    stats = {"documents": 0, "sentences": 0}
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizer: reading", disable=not progress)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    start = time.perf_counter()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(
                sources, stats, bar if progress else None, text_field, doc_split, storage_options
            ),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            pad_id=SPECIAL_IDS["pad"],
            unk_id=SPECIAL_IDS["unk"],
            bos_id=SPECIAL_IDS["bos"],
            eos_id=SPECIAL_IDS["eos"],
            user_defined_symbols=[NEWLINE],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=False,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        if stats["sentences"] == 0:
            raise DataError(f"inputs {list(inputs)} contain no text to train a tokenizer on") from None
        raise DataError(
            f"sentencepiece could not train a {model_type} tokenizer with vocab_size={vocab_size} on "
            f"{list(inputs)}: {e}"
        ) from None
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    tok = Tokenizer(model.getvalue(), source=out)
    write_atomic(join_url(out, MODEL_FILE), tok.model_proto, storage_options)
    vocab_lines = (f"{_escape(tok.sp.id_to_piece(i))}\t{tok.sp.get_score(i):g}" for i in range(tok.vocab_size))
    write_atomic(join_url(out, VOCAB_FILE), ("\n".join(vocab_lines) + "\n").encode(), storage_options)
    info = {
        "format": INFO_FORMAT,
        "kind": "sentencepiece",
        "model": MODEL_FILE,
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "model_type": model_type,
        "special_ids": SPECIAL_IDS,
        "newline_id": tok.newline_id,
        "character_coverage": character_coverage,
        "byte_fallback": byte_fallback,
        "trained_on": {"inputs": list(inputs), "text_field": text_field, "doc_split": doc_split, **stats},
        "training": {"num_threads": num_threads, "seed": seed, "max_sentences": max_sentences},
        "versions": {"armd_scale": __version__, "sentencepiece": spm.__version__},
    }
    write_tokenizer_info(out, info, storage_options)
    tok.info = info
    log.info(
        "trained %s tokenizer (vocab %d) on %d documents in %.1fs: %s",
        model_type,
        tok.vocab_size,
        stats["documents"],
        elapsed,
        out,
    )
    return tok


# -- worker-process side of parallel encoding (used by the shard builder) ------------------------

_WORKER_TOKENIZER: Tokenizer | None = None


def init_encode_worker(model_proto: bytes) -> None:
    """Process-pool initializer: load the model once per worker."""
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer(model_proto, source="<worker>")


def encode_groups_in_worker(groups: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Token ids of each group of lines (see `Tokenizer.encode_lines`)."""
    assert _WORKER_TOKENIZER is not None, "init_encode_worker was not called"
    return [_WORKER_TOKENIZER.encode_lines(g) for g in groups]
