"""`TokenizerRef`: which tokenizer a run, a shard set or a checkpoint was made with, as one typed value.

The identity used to travel as two loose strings (a directory and a SHA-256), checked by hand
wherever they met. A `TokenizerRef` is (location, kind, checksum), and `open()` is the one place
that loads the tokenizer *and* refuses one whose checksum is not the recorded one: a tokenizer
changed since training would silently garble every id it decodes.

- `location`: what `load_tokenizer` accepts (a tokenizer directory, a `.model` or `tokenizer.json`
  file, a hub name); None when the run named no tokenizer (shards built elsewhere, ids only).
- `kind`: the backend's kind ("sentencepiece", "hf", "synthetic"); "" when unknown (a reference
  converted from old metadata, which did not record it).
- `checksum`: the tokenizer identity shard manifests carry (SHA-256 of the canonical file, or a
  synthetic source's identity).

Old run and checkpoint metadata with the loose keys `tokenizer_dir` / `tokenizer_sha256` still
read: `from_meta` converts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from armd_scale.data.errors import DataError
from armd_scale.data.tokenizers.base import INFO_FILE, MODEL_FILE, Tokenizer
from armd_scale.data.tokenizers.load import load_tokenizer
from armd_scale.data.urls import StorageOptions, join_url

META_KEY = "tokenizer"  # the key of a reference in run facts and checkpoint metadata
LEGACY_LOCATION_KEY = "tokenizer_dir"
LEGACY_CHECKSUM_KEY = "tokenizer_sha256"


class TokenizerMismatch(DataError):
    """The tokenizer at a reference's location is not the one recorded (another checksum or kind)."""

    def __init__(self, message: str, *, file: str, actual: str, expected: str) -> None:
        super().__init__(message)
        self.file, self.actual, self.expected = file, actual, expected

    def __reduce__(self):
        return (_mismatch, (str(self), self.file, self.actual, self.expected))


def _mismatch(message: str, file: str, actual: str, expected: str) -> TokenizerMismatch:
    return TokenizerMismatch(message, file=file, actual=actual, expected=expected)


@dataclass(frozen=True)
class TokenizerRef:
    location: str | None
    kind: str
    checksum: str

    def __post_init__(self) -> None:
        if not isinstance(self.checksum, str) or not self.checksum:
            raise DataError(f"a tokenizer reference needs a checksum, got {self.checksum!r} (location {self.location})")

    @classmethod
    def of(cls, tokenizer: Tokenizer, location: str | None = None) -> TokenizerRef:
        """The reference of a loaded tokenizer (at `location`, default where it was loaded from)."""
        return cls(location if location is not None else tokenizer.source, tokenizer.kind, tokenizer.sha256)

    def open(self, storage_options: StorageOptions = None) -> Tokenizer:
        """The tokenizer at `location`, verified: a DataError names the location when there is none
        or it cannot be read, and a `TokenizerMismatch` names the file and the expected checksum
        when it is another tokenizer than the one recorded."""
        if not self.location:
            raise DataError(
                f"no tokenizer location is recorded (tokenizer {self.checksum[:12]}): pass token ids, or train "
                "with data.tokenizer set"
            )
        tokenizer = load_tokenizer(self.location, storage_options)
        file = self.identity_file(tokenizer)
        if tokenizer.sha256 != self.checksum:
            raise TokenizerMismatch(
                f"tokenizer file {file} has sha256 {tokenizer.sha256}, expected {self.checksum}: the tokenizer "
                "changed since training; restore the one it was trained with",
                file=file,
                actual=tokenizer.sha256,
                expected=self.checksum,
            )
        if self.kind and tokenizer.kind != self.kind:
            raise TokenizerMismatch(
                f"tokenizer {self.location} is of kind {tokenizer.kind!r}, expected {self.kind!r} (checksum "
                f"{self.checksum})",
                file=file,
                actual=tokenizer.sha256,
                expected=self.checksum,
            )
        return tokenizer

    def identity_file(self, tokenizer: Tokenizer | None = None) -> str:
        """The file whose checksum is the identity, for messages: the location itself when it is a
        file, the model of a SentencePiece folder, the resolved file of a hub name, else the folder's
        `tokenizer.json` (a Hugging Face tokenizer, or a synthetic source's record)."""
        location = self.location or "?"
        if location.endswith((".model", ".json")):
            return location
        info = tokenizer.info if tokenizer is not None else {}
        if info.get("resolved"):  # a hub name, found in the local Hugging Face cache
            return str(info["resolved"])
        kind = tokenizer.kind if tokenizer is not None else self.kind
        return join_url(location, str(info.get("model", MODEL_FILE)) if kind == "sentencepiece" else INFO_FILE)

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "kind": self.kind, "checksum": self.checksum}

    @classmethod
    def from_dict(cls, d: Any, where: str = "the metadata") -> TokenizerRef:
        """A reference from `to_dict()`'s form; a DataError names `where` and the key when it is not one."""
        if not isinstance(d, dict):
            raise DataError(f"{where}: '{META_KEY}' must be a mapping of location, kind, checksum, got {d!r}")
        for key in ("location", "kind", "checksum"):
            if key not in d:
                raise DataError(f"{where}: '{META_KEY}' lacks key '{key}' (expected location, kind, checksum)")
        location = d["location"]
        if location is not None and not isinstance(location, str):
            raise DataError(f"{where}: '{META_KEY}.location' must be a string or null, got {location!r}")
        return cls(location, str(d["kind"] or ""), d["checksum"])

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: str = "the metadata") -> TokenizerRef | None:
        """The reference in run or checkpoint metadata: the `tokenizer` mapping, or (written before
        it existed) the loose `tokenizer_dir` + `tokenizer_sha256` strings, converted. None when
        neither records a checksum."""
        if isinstance(meta.get(META_KEY), dict):
            return cls.from_dict(meta[META_KEY], where)
        checksum = meta.get(LEGACY_CHECKSUM_KEY)
        if not checksum:
            return None
        return cls(meta.get(LEGACY_LOCATION_KEY) or None, "", str(checksum))

    def to_meta(self) -> dict[str, Any]:
        """The metadata keys of this reference: the typed mapping, plus the checksum under its old
        key, which readers of older versions (and shard manifests) compare."""
        return {META_KEY: self.to_dict(), LEGACY_CHECKSUM_KEY: self.checksum}


def open_recorded(location: str, checksum: str | None, storage_options: StorageOptions = None) -> Tokenizer:
    """The tokenizer at `location`, verified against `checksum` when one was recorded (every run
    records one; a bare tokenizer folder given by hand has none to check against)."""
    if checksum:
        return TokenizerRef(location, "", checksum).open(storage_options)
    return load_tokenizer(location, storage_options)
