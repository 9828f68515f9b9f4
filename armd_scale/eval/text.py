"""Text <-> token ids for evaluation and generation, whatever a checkpoint was trained on.

A run trained on text has a tokenizer (SentencePiece or a Hugging Face tokenizer.json); a run
trained on a synthetic source (`synthetic:markov?...`) has only ids, described by a `tokenizer.json`
of kind `synthetic`, and opens as an `IdTokenizer` (ids written as decimal numbers separated by
spaces, `has_text` False). Commands work on both through the one `Tokenizer` interface (data/tokenizers):
`byte_lengths()` gives, per id, the UTF-8 bytes of text the token stands for, so bits per byte can be
summed token by token and does not depend on where a window boundary falls (exact for byte-level BPE
and lossless SentencePiece; see the backends); an id tokenizer has no bytes, so bits per byte is
undefined (None) for such runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.errors import DataError
from ..data.tokenizers.base import Tokenizer
from ..data.tokenizers.ids import IdTokenizer


def codec_for(pretrained) -> Tokenizer:
    """The tokenizer of a loaded checkpoint (`armd_scale.pretrained.Pretrained`), verified on open.

    A run without a tokenizer gets an `IdTokenizer` (ids written as decimal text), as a synthetic source has.
    A tokenizer directory that has vanished, a tokenizer that is not the one the run was trained with
    (another SHA-256), or one with more ids than the model are errors naming it: its ids would decode
    to nonsense.
    """
    from ..data.tokenizers.base import INFO_FILE

    vocab = pretrained.config.model.vocab_size
    tok_dir = pretrained.tokenizer_dir
    if not tok_dir:
        return IdTokenizer.of(vocab, pretrained.tokenizer_sha256, f"{pretrained.source} (no tokenizer recorded)")
    local = None if "://" in tok_dir else Path(tok_dir)
    if local is not None and local.is_dir() and not (local / INFO_FILE).is_file():
        raise DataError(
            f"checkpoint {pretrained.source} names tokenizer directory {tok_dir}, which has no {INFO_FILE}; "
            "was the data cache deleted? Rebuild it or export the checkpoint with its tokenizer"
        )
    try:
        tokenizer = pretrained.tokenizer()  # verified on open: a changed tokenizer names its file and checksum
    except DataError as e:
        raise DataError(f"checkpoint {pretrained.source} names tokenizer {tok_dir}: {e}") from None
    if tokenizer.vocab_size > vocab:
        raise DataError(
            f"tokenizer {tok_dir} has {tokenizer.vocab_size} ids but the model of {pretrained.source} only "
            f"{vocab}: a model cannot be smaller than its tokenizer"
        )
    return tokenizer


def count_bytes(codec: Tokenizer, tokens: np.ndarray) -> int | None:
    """UTF-8 bytes of the decoded text of `tokens` (any shape), or None when the codec has no text."""
    table = codec.byte_lengths()
    if table is None:
        return None
    return int(table[np.asarray(tokens, dtype=np.int64)].sum())


def bits_per_byte(nll_nats: float, num_bytes: int | None) -> float | None:
    """Total NLL in bits over UTF-8 bytes: comparable across tokenizers, unlike per-token numbers."""
    if not num_bytes:
        return None
    return nll_nats / math.log(2) / num_bytes
