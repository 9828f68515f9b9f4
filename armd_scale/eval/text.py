"""Text <-> token ids for evaluation and generation, whatever a checkpoint was trained on.

A run trained on text has a SentencePiece tokenizer; a run trained on a synthetic source
(`synthetic:markov?...`) has only ids, described by a `tokenizer.json` of kind `synthetic`. Commands
should work on both, so they go through a `TextCodec`:

- `SentencePieceCodec`: the run's tokenizer. `byte_lengths()` gives the UTF-8 length of every token's
  decoded surface, so bits per byte can be summed token by token and does not depend on where a
  window boundary falls.
- `IdCodec`: ids written as decimal numbers separated by spaces. It has no bytes, so bits per byte is
  undefined (None) for such runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..data.errors import DataError


class TextCodec(Protocol):
    kind: str  # "sentencepiece" or "ids"
    sha256: str | None  # tokenizer identity (shard manifests and checkpoints carry the same value)
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def byte_lengths(self) -> np.ndarray | None: ...


class SentencePieceCodec:
    """The run's SentencePiece tokenizer (documents are encoded line by line, as `armd shards` does)."""

    kind = "sentencepiece"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sha256: str | None = tokenizer.sha256
        self.vocab_size: int = tokenizer.vocab_size
        self.eos_id: int | None = tokenizer.eos_id
        self._bytes: np.ndarray | None = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tokenizer.decode(ids)

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of each token's decoded surface: 0 for pad/bos/eos, 1 for a byte-fallback piece.

        SentencePiece decodes piece by piece (identity normalisation, no dummy prefix), so the
        bytes of a decoded sequence are the sum of these. An unknown token counts as the bytes of
        its surface ` ⁇ `, not of the text it replaced: the ids no longer know what that was.
        """
        if self._bytes is None:
            sp = self.tokenizer.sp
            out = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if sp.is_control(i):
                    continue
                out[i] = 1 if sp.is_byte(i) else len(sp.decode([i]).encode("utf-8"))
            self._bytes = out
        return self._bytes


class IdCodec:
    """Ids as text (`"5 9 4"`), for runs trained on a synthetic token source with no text tokenizer."""

    kind = "ids"
    eos_id: int | None = None

    def __init__(self, vocab_size: int, sha256: str | None = None, source: str = "") -> None:
        self.vocab_size = vocab_size
        self.sha256 = sha256
        self.source = source

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if not word.lstrip("-").isdigit() or not 0 <= int(word) < self.vocab_size:
                raise DataError(
                    f"'{word}' is not a token id in [0, {self.vocab_size}): this checkpoint was trained on "
                    f"{self.source or 'a token source without text'}, so text is written as ids separated by spaces"
                )
            ids.append(int(word))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return " ".join(str(int(i)) for i in ids)

    def byte_lengths(self) -> None:
        return None


def codec_for(pretrained) -> TextCodec:
    """The codec of a loaded checkpoint (`armd_scale.pretrained.Pretrained`).

    A run without a tokenizer directory, or with a synthetic one, gets an `IdCodec`; a tokenizer
    directory that has vanished is an error naming it, since its ids would decode to nonsense.
    """
    from ..data.tokenizer import INFO_FILE, Tokenizer, tokenizer_info

    vocab = pretrained.config.model.vocab_size
    tok_dir = pretrained.tokenizer_dir
    if not tok_dir:
        return IdCodec(vocab, pretrained.tokenizer_sha256, f"{pretrained.source} (no tokenizer recorded)")
    if "://" not in tok_dir and not (Path(tok_dir) / INFO_FILE).is_file():
        raise DataError(
            f"checkpoint {pretrained.source} names tokenizer directory {tok_dir}, which has no {INFO_FILE}; "
            "was the data cache deleted? Rebuild it or export the checkpoint with its tokenizer"
        )
    info = tokenizer_info(tok_dir)
    if info.get("kind") != "sentencepiece":
        return IdCodec(vocab, info.get("sha256", pretrained.tokenizer_sha256), info.get("source", tok_dir))
    return SentencePieceCodec(Tokenizer.load(tok_dir))


def count_bytes(codec: TextCodec, tokens: np.ndarray) -> int | None:
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
