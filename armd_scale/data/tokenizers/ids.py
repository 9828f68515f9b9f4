"""The tokenizer of a synthetic token source: ids without text.

A run trained on `synthetic:markov?...` shards has a `tokenizer.json` of kind `synthetic` (written
by `armd_scale.data.prepare.synthetic`) and no text vocabulary. It is still a tokenizer: opening it
gives an `IdTokenizer`, whose text form is the ids as decimal numbers separated by spaces
("5 9 4"), so evaluation and generation work on such a run the same way as on a text run, and no
caller has to catch an exception to learn that a run has no text. `has_text` is False: bits per
byte are undefined (`byte_lengths()` is None) and no tokenizer files are exported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from armd_scale.data.errors import DataError
from armd_scale.data.tokenizers.base import INFO_FILE, INFO_FORMAT, Tokenizer


class IdTokenizer(Tokenizer):
    """Ids <-> their decimal text. The identity (`sha256`) is the synthetic source's, from its record."""

    kind = "synthetic"
    has_text = False
    eos_id = None  # type: ignore[assignment]  # sequences are sampled whole: no document separator
    bos_id = None
    pad_id = None
    unk_id = None

    def __init__(self, payload: bytes, source: str = "", info: dict[str, Any] | None = None) -> None:
        """`payload`: the bytes of the source's `tokenizer.json` record (format, sha256, vocab_size)."""
        try:
            record = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{source or 'an id tokenizer record'} is not valid JSON ({e})") from None
        for key in ("sha256", "vocab_size"):
            if key not in record:
                raise DataError(f"{source or 'an id tokenizer record'} lacks key '{key}'")
        self._payload = payload
        self.info = dict(info or record)
        self.source = source
        self.sha256 = str(record["sha256"])
        self._vocab_size = int(record["vocab_size"])

    @classmethod
    def of(cls, vocab_size: int, sha256: str | None = None, source: str = "") -> IdTokenizer:
        """An id tokenizer of `vocab_size` ids without a record on disk (e.g. a run that named no tokenizer)."""
        record = {"format": INFO_FORMAT, "kind": cls.kind, "sha256": sha256 or "", "vocab_size": vocab_size}
        return cls(json.dumps(record).encode(), source=source)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def payload(self) -> bytes:
        return self._payload

    def encode_chunk(self, text: str) -> np.ndarray:
        """`"5 9 4"` -> [5, 9, 4]; anything else is an error naming the word and the id range."""
        ids = []
        for word in text.split():
            if not word.lstrip("-").isdigit() or not 0 <= int(word) < self._vocab_size:
                raise DataError(
                    f"'{word}' is not a token id in [0, {self._vocab_size}): this run was trained on "
                    f"{self.info.get('source') or self.source or 'a token source without text'}, so text is "
                    "written as ids separated by spaces"
                )
            ids.append(int(word))
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return " ".join(str(int(i)) for i in ids)

    def byte_lengths(self) -> None:
        """None: ids stand for no text, so bits per byte is undefined."""
        return None

    def files(self) -> dict[str, bytes]:
        return {INFO_FILE: self._payload}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.info.get("source", self.source)}
