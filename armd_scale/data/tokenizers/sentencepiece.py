"""SentencePiece backend: loading and lossless line-by-line document encoding (training is
`armd_scale.data.prepare.sp_training`, which reads corpora).

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

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from armd_scale.data.errors import DataError
from armd_scale.data.tokenizers.base import (
    INFO_FILE,
    INFO_FORMAT,
    MODEL_FILE,
    VOCAB_FILE,
    Tokenizer,
)
from armd_scale.data.urls import (
    StorageOptions,
    exists,
    join_url,
    member_url,
    read_bytes,
    sha256_bytes,
)

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


def _escape(piece: str) -> str:
    """Pieces as one line each in tokenizer.vocab (the newline piece would otherwise split a line)."""
    return piece.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
