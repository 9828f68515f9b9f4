"""Training a SentencePiece tokenizer on a corpus (the tokenizer itself is
`armd_scale.data.tokenizers.sentencepiece`).

Kept with the other text-reading code in `prepare/` so loading a tokenizer never imports the corpus
readers. Training uses a fixed thread count and random seed (SentencePiece's result depends on
both), so retraining on the same input gives the same file and the same identity.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import sentencepiece as spm

from armd_scale import __version__
from armd_scale.data.errors import DataError
from armd_scale.data.prepare.textio import DocSplit, expand_inputs, iter_documents, source_bytes
from armd_scale.data.tokenizers.base import INFO_FORMAT, MODEL_FILE, VOCAB_FILE, write_tokenizer_info
from armd_scale.data.tokenizers.sentencepiece import (
    MAX_SENTENCE_BYTES,
    NEWLINE,
    SPECIAL_IDS,
    SentencePieceTokenizer,
)
from armd_scale.data.urls import StorageOptions, join_url, write_atomic

log = logging.getLogger(__name__)


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
