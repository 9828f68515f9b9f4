"""SentencePiece backend: training, loading and lossless line-by-line document encoding.

Choices, and why:
- Special ids are fixed (pad=0, unk=1, bos=2, eos=3; eos separates documents) so every model,
  shard set and checkpoint built with these tokenizers agrees on them.
- Normalisation is `identity`, extra whitespace is kept and there is no dummy prefix: decoding the
  tokens of a document gives the document back (code indentation and newlines included), apart
  from characters outside the vocabulary, which become unk (or bytes with `byte_fallback`).
- `\\n` is a user-defined piece and documents are encoded line by line with that piece between
  lines. SentencePiece trains on lines, so this is also how it saw the text, and lines can be
  encoded in parallel and in any grouping with the same result.
- The identity is the SHA-256 of the `.model` file, written to `tokenizer.json` beside it.
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
from armd_scale.data.tokenizer_base import (
    INFO_FILE,
    INFO_FORMAT,
    MODEL_FILE,
    VOCAB_FILE,
    Tokenizer,
    write_tokenizer_info,
)
from armd_scale.data.urls import (
    StorageOptions,
    exists,
    join_url,
    member_url,
    read_bytes,
    sha256_bytes,
    write_atomic,
)

log = logging.getLogger(__name__)

SPECIAL_IDS: dict[str, int] = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
NEWLINE = "\n"
# SentencePiece drops longer training lines; jsonl paragraphs are often long single lines. They are
# skipped before SentencePiece sees them (_training_lines), so a 300 MB line is never held.
MAX_SENTENCE_BYTES = 1 << 15


class SentencePieceTokenizer(Tokenizer):
    """A loaded SentencePiece model plus its identity (`sha256`)."""

    kind = "sentencepiece"
    pad_id = SPECIAL_IDS["pad"]
    unk_id = SPECIAL_IDS["unk"]
    bos_id = SPECIAL_IDS["bos"]
    eos_id = SPECIAL_IDS["eos"]

    def __init__(self, model_proto: bytes, *, source: str = "<bytes>", info: dict[str, Any] | None = None):
        self.model_proto = bytes(model_proto)
        self.sha256 = sha256_bytes(self.model_proto)
        self.source = source
        self.info = info or {}
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        except RuntimeError as e:
            raise DataError(f"tokenizer model {source} is not a SentencePiece model ({e})") from None
        got = dict(pad=self.sp.pad_id(), unk=self.sp.unk_id(), bos=self.sp.bos_id(), eos=self.sp.eos_id())
        if got != SPECIAL_IDS:
            raise DataError(f"tokenizer {source} has special ids {got}; armd_scale requires {SPECIAL_IDS}")
        newline = self.sp.piece_to_id(NEWLINE)
        self.newline_id = None if newline == self.unk_id else newline
        self._bytes: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def payload(self) -> bytes:
        return self.model_proto

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

    def encode_chunk(self, text: str) -> np.ndarray:
        return self.encode_lines(text.split(NEWLINE))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.sp.decode([int(i) for i in ids])

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of each token's decoded surface: 0 for pad/bos/eos, 1 for a byte-fallback piece.

        SentencePiece decodes piece by piece (identity normalisation, no dummy prefix), so the
        bytes of a decoded sequence are the sum of these, and they are the original text's bytes
        whenever no character fell outside the vocabulary. An unknown token counts as the bytes
        of its surface ` ⁇ `, not of the text it replaced: the ids no longer know what that was.
        """
        if self._bytes is None:
            sp = self.sp
            out = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if sp.is_control(i):
                    continue
                out[i] = 1 if sp.is_byte(i) else len(sp.decode([i]).encode("utf-8"))
            self._bytes = out
        return self._bytes

    def files(self) -> dict[str, bytes]:
        record = {"format": INFO_FORMAT, "kind": self.kind, "sha256": self.sha256, "vocab_size": self.vocab_size}
        out = {MODEL_FILE: self.model_proto}
        out[INFO_FILE] = (json.dumps({**record, **self.info, "model": MODEL_FILE}, indent=2) + "\n").encode()
        vocab = (f"{_escape(self.sp.id_to_piece(i))}\t{self.sp.get_score(i):g}" for i in range(self.vocab_size))
        out[VOCAB_FILE] = ("\n".join(vocab) + "\n").encode()
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


def load_sentencepiece_dir(url: str, info: dict[str, Any], storage_options: StorageOptions) -> SentencePieceTokenizer:
    """A tokenizer directory of `armd tokenizer`, its model checked against the recorded SHA-256."""
    info_url = join_url(url, INFO_FILE)
    # the name is input: a regular file inside the folder, never /dev/zero or ../../ (safe_paths)
    model_url = member_url(
        url, info.get("model", MODEL_FILE), named_by=f"{INFO_FILE} key 'model'", storage_options=storage_options
    )
    if not exists(model_url, storage_options):
        raise DataError(f"tokenizer model {model_url} is missing (tokenizer.json names it)")
    tok = SentencePieceTokenizer(read_bytes(model_url, storage_options), source=url, info=info)
    if tok.sha256 != info["sha256"]:
        raise DataError(
            f"tokenizer model {model_url} has sha256 {tok.sha256} but {info_url} "
            f"records {info['sha256']}: the model file was replaced; retrain or fix the directory"
        )
    return tok


def _training_lines(sources: Sequence[str], stats: dict[str, int], bar: Any, read: dict[str, Any]) -> Iterator[str]:
    """Non-empty lines of every document; counts documents, lines and bytes as SentencePiece reads.
    Lines longer than MAX_SENTENCE_BYTES, which SentencePiece would drop, are left out here: text
    and JSON-lines files skip them while reading, without holding them (one warning per file), the
    lines of other sources (Parquet, datasets) are counted in `stats["long_lines"]`."""
    done = 0
    for source in sources:
        for doc in iter_documents(source, **read, max_line_bytes=MAX_SENTENCE_BYTES):
            stats["documents"] += 1
            for line in doc.split(NEWLINE):
                if len(line) > MAX_SENTENCE_BYTES // 4 and len(line.encode("utf-8")) > MAX_SENTENCE_BYTES:
                    stats["long_lines"] += 1
                elif line:
                    stats["sentences"] += 1
                    yield line
            if bar is not None:
                bar.update(len(doc) + 1)
        size = source_bytes(source, read.get("storage_options"))
        if bar is not None and size is not None:  # resynchronise with stored sizes (.gz, UTF-8)
            done += size
            bar.update(done - bar.n)


def _escape(piece: str) -> str:
    """Pieces as one line each in tokenizer.vocab (the newline piece would otherwise split a line)."""
    return piece.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def train_sentencepiece(
    inputs: Sequence[str],
    out: str,
    *,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    max_sentences: int = 5_000_000,
    num_threads: int = 4,
    seed: int = 0,
    progress: bool = False,
    storage_options: StorageOptions = None,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on `inputs` and write tokenizer.model, tokenizer.vocab and
    tokenizer.json (last) into `out`. Returns the loaded tokenizer."""
    if model_type not in ("bpe", "unigram"):
        raise DataError(f"model_type={model_type!r} must be 'bpe' or 'unigram'")
    if not 0.0 < character_coverage <= 1.0:
        raise DataError(f"character_coverage={character_coverage} must be in (0, 1]")
    sources = expand_inputs(inputs, storage_options, input_format)
    sizes = [source_bytes(s, storage_options) for s in sources]
    total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
    stats = {"documents": 0, "sentences": 0, "long_lines": 0}
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizer: reading", disable=not progress)
    read = dict(text_field=text_field, doc_split=doc_split, input_format=input_format, storage_options=storage_options)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    start = time.perf_counter()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(sources, stats, bar if progress else None, read),
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
    long_lines = stats.pop("long_lines")
    if long_lines:
        log.warning(
            "%d line(s) longer than %d bytes were left out of tokenizer training", long_lines, MAX_SENTENCE_BYTES
        )
    elapsed = time.perf_counter() - start
    tok = SentencePieceTokenizer(model.getvalue(), source=out)
    write_atomic(join_url(out, MODEL_FILE), tok.model_proto, storage_options)
    write_atomic(join_url(out, VOCAB_FILE), tok.files()[VOCAB_FILE], storage_options)
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
