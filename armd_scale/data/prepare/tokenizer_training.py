"""Training a tokenizer of any kind on a corpus (`armd tokenizer`; the built-in corpus's first use).

Lives in `prepare/` with the corpus readers it needs, so neither loading a tokenizer nor training a
model imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from armd_scale.data.errors import DataError
from armd_scale.data.prepare.hf_training import train_hf_tokenizer
from armd_scale.data.prepare.sp_training import train_sentencepiece
from armd_scale.data.prepare.textio import DocSplit
from armd_scale.data.tokenizers.base import TOKENIZER_KINDS, Tokenizer
from armd_scale.data.urls import StorageOptions


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
        return train_sentencepiece(
            inputs, out, vocab_size=vocab_size, storage_options=storage_options, **read, **options
        )
    if kind in ("byte-bpe", "wordpiece"):
        return train_hf_tokenizer(
            inputs, out, kind=kind, vocab_size=vocab_size, storage_options=storage_options, **read, **options
        )
    raise DataError(f"tokenizer kind {kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
