"""Hugging Face `tokenizers` backend: a `tokenizer.json` (GPT-2 byte-level BPE, BERT WordPiece, ...).

Identity is the SHA-256 of the `tokenizer.json` bytes as stored. A re-saved copy with other
whitespace is therefore another identity; copy the file, never re-serialise it.

Special roles come from the tokenizer's own tokens, never from fixed ids:
- document separator (`eos_id`), packed after every document: `<|endoftext|>` (GPT-2: 50256),
  else `[SEP]` (BERT: 102), `</s>`, `<eos>`; a tokenizer with none of these is refused.
- BOS (optional): `<|endoftext|>` for GPT-2 (it is its BOS too), `[CLS]`, `<s>`; recorded, not packed.
- pad and unk (optional): `[PAD]`/`<pad>`, the model's unk token.
Text that happens to contain a special token's spelling ("<|endoftext|>" in a web page) is encoded
as ordinary text, so only the packer ever writes a separator.

Documents are encoded whole (`add_special_tokens=False`): byte-level BPE's pre-tokenizer may join
a newline with the spaces after it, so encoding line by line would give other ids than the
tokenizer gives the document.

Bytes per token (`byte_lengths`, used by bits per byte):
- byte-level BPE: each character of a token is one byte (GPT-2's byte-to-unicode table), so the
  sum over a document's tokens is exactly its UTF-8 length and decoding gives the text back.
- WordPiece: `##x` counts the bytes of `x`; any other token those of its text plus one for the
  space (or line break) before it; the sum is the length of the *normalised* text with one space
  between words. Normalisation is lossy (lower-casing keeps ASCII lengths, stripping accents
  shortens `é` from 2 bytes to 1, whitespace runs and line breaks become one space, a word with a
  character outside the vocabulary becomes `[UNK]`, counted as its spelling), so this is exact
  only for text that is already in that form (see docs/EVALUATION.md).
- anything else: the bytes of each token decoded alone (`▁` read as a space, `<0xNN>` as 1 byte).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from armd_scale.data.errors import DataError
from armd_scale.data.tokenizers.base import INFO_FILE, Tokenizer
from armd_scale.data.urls import StorageOptions, exists, join_url, read_bytes, sha256_bytes

HF_INFO_FILE = "armd_tokenizer.json"
HF_INFO_FORMAT = "armd_scale.hf-tokenizer/1"
SEPARATORS = ("<|endoftext|>", "[SEP]", "</s>", "<eos>", "<|end_of_text|>")
BOS_TOKENS = ("<|endoftext|>", "[CLS]", "<s>", "<bos>", "<|begin_of_text|>")
PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>")
UNK_TOKENS = ("[UNK]", "<unk>")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, data: bytes, *, source: str = "<bytes>", info: dict[str, Any] | None = None):
        from tokenizers import Tokenizer as RustTokenizer

        self.data = bytes(data)
        self.sha256 = sha256_bytes(self.data)
        self.source = source
        self.info = info or {}
        try:
            text = self.data.decode("utf-8")
            self.spec = json.loads(text)
            self.tok = RustTokenizer.from_str(text)
        except Exception as e:  # UnicodeDecodeError, JSONDecodeError, or the Rust parser's error
            raise DataError(
                f"tokenizer {source} does not parse as a Hugging Face tokenizer.json ({str(e)[:200]}): "
                "download it again (e.g. `hf download gpt2 tokenizer.json`) or train one with "
                "`armd tokenizer --kind byte-bpe`"
            ) from None
        self.tok.encode_special_tokens = True  # a literal "<|endoftext|>" in the text stays text
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.eos_token = next((t for t in SEPARATORS if t in vocab), None)
        if self.eos_token is None:
            raise DataError(
                f"tokenizer {source} has no document separator token (looked for {', '.join(SEPARATORS)}); "
                "add one as a special token"
            )
        self.eos_id = vocab[self.eos_token]
        self.bos_token = next((t for t in BOS_TOKENS if t in vocab), None)
        self.bos_id = vocab.get(self.bos_token) if self.bos_token else None
        pad = next((t for t in PAD_TOKENS if t in vocab), None)
        self.pad_id = vocab[pad] if pad else None
        model_unk = (self.spec.get("model") or {}).get("unk_token")
        unk = model_unk if model_unk in vocab else next((t for t in UNK_TOKENS if t in vocab), None)
        self.unk_id = vocab[unk] if unk else None
        self.model_type = (self.spec.get("model") or {}).get("type", "?")
        specials = {t["id"] for t in self.spec.get("added_tokens", []) if t.get("special")}
        self._silent = frozenset(specials - {self.unk_id})
        self._bytes: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def payload(self) -> bytes:
        return self.data

    def encode_chunk(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Special tokens decode to nothing, except unk, which stays visible (as SentencePiece's ⁇ does)."""
        return self.tok.decode([int(i) for i in ids if int(i) not in self._silent], skip_special_tokens=False)

    def special_tokens(self) -> dict[str, str | None]:
        vocab = {i: t for t, i in self.tok.get_vocab(with_added_tokens=True).items()}
        return {
            "separator": self.eos_token,
            "bos": self.bos_token,
            "pad": vocab.get(self.pad_id) if self.pad_id is not None else None,
            "unk": vocab.get(self.unk_id) if self.unk_id is not None else None,
        }

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_type, "separator": self.eos_token}

    def files(self) -> dict[str, bytes]:
        record = {k: v for k, v in self.info.items() if k not in ("resolved",)}
        record.update(format=HF_INFO_FORMAT, kind=self.kind, sha256=self.sha256, vocab_size=self.vocab_size)
        return {INFO_FILE: self.data, HF_INFO_FILE: (json.dumps(record, indent=2) + "\n").encode()}

    # -- bytes per token ---------------------------------------------------------------------------

    def _decoder_types(self) -> set[str]:
        dec = self.spec.get("decoder") or {}
        parts = dec.get("decoders", [dec]) if dec.get("type") == "Sequence" else [dec]
        return {str(p.get("type")) for p in parts if isinstance(p, dict)}

    def byte_lengths(self) -> np.ndarray:
        if self._bytes is not None:
            return self._bytes
        out = np.zeros(self.vocab_size, dtype=np.int64)
        decoders = self._decoder_types()
        prefix = (self.spec.get("model") or {}).get("continuing_subword_prefix") or "##"
        byte_of = _byte_decoder()
        added = {t["id"]: t for t in self.spec.get("added_tokens", [])}
        for token, i in self.tok.get_vocab(with_added_tokens=True).items():
            if i in added and i != self.unk_id:
                out[i] = 0 if added[i].get("special") else len(added[i]["content"].encode("utf-8"))
            elif "ByteLevel" in decoders:
                out[i] = len(token) if all(c in byte_of for c in token) else len(token.encode("utf-8"))
            elif self.model_type == "WordPiece":
                out[i] = len(token[len(prefix) :].encode()) if token.startswith(prefix) else len(token.encode()) + 1
            elif _BYTE_PIECE.match(token):
                out[i] = 1
            elif "▁" in token:
                out[i] = len(token.replace("▁", " ").encode("utf-8"))
            else:
                out[i] = len(self.tok.decode([i], skip_special_tokens=True).encode("utf-8"))
        self._bytes = out
        return out


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table inverted: the character each byte is spelled with -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def load_hf_dir(url: str, storage_options: StorageOptions = None) -> HFTokenizer:
    """A folder holding a Hugging Face tokenizer.json (and, if armd trained it, its record, whose
    SHA-256 must match: a replaced tokenizer.json is refused)."""
    file_url = join_url(url, INFO_FILE)
    info: dict[str, Any] = {}
    record_url = join_url(url, HF_INFO_FILE)
    if exists(record_url, storage_options):
        try:
            info = json.loads(read_bytes(record_url, storage_options))
        except json.JSONDecodeError as e:
            raise DataError(f"{record_url} is not valid JSON ({e}); delete it or train the tokenizer again") from None
    tok = HFTokenizer(read_bytes(file_url, storage_options), source=url, info=info)
    if info.get("sha256") and info["sha256"] != tok.sha256:
        raise DataError(
            f"{file_url} has sha256 {tok.sha256} but {record_url} records {info['sha256']}: the tokenizer file "
            "was replaced; train it again or delete the record"
        )
    return tok


def is_hub_name(spec: str) -> bool:
    return bool(_HUB_NAME.match(spec)) and not spec.startswith((".", "/"))


def resolve_hub_name(name: str) -> str:
    """Path of `name`'s tokenizer.json in the local Hugging Face cache; never downloads."""
    from huggingface_hub import constants, hf_hub_download

    try:
        return hf_hub_download(name, "tokenizer.json", local_files_only=True)
    except Exception as e:  # not cached (the error class differs between huggingface_hub versions)
        raise DataError(
            f"tokenizer '{name}' is not a local path and its tokenizer.json is not in the local Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}; {type(e).__name__}). armd_scale never downloads: on a machine "
            f"with internet run `hf download {name} tokenizer.json` (older huggingface_hub: "
            f"`huggingface-cli download {name} tokenizer.json`), or pass the path of a tokenizer.json"
        ) from None
