"""How a `--tokenizer` / `data.tokenizer` value is found and opened, whatever its backend.

Backends (one `Tokenizer` interface, base.py):
- `SentencePieceTokenizer` (sentencepiece.py): models trained by `armd tokenizer` (the default kind),
  special ids pad=0, unk=1, bos=2, eos=3, documents encoded line by line. Identity: SHA-256 of
  `tokenizer.model`.
- `HFTokenizer` (hf.py): a Hugging Face `tokenizers` file, `tokenizer.json`, such as
  GPT-2's byte-level BPE or bert-base-uncased's WordPiece, or one trained here with
  `armd tokenizer --kind byte-bpe|wordpiece`. Identity: SHA-256 of `tokenizer.json` as stored.
  Special roles (document separator, BOS, pad, unk) come from the tokenizer's own tokens.
- `IdTokenizer` (ids.py): a synthetic token source's record; ids written as numbers, no text.
  Identity: the source's, recorded in its `tokenizer.json`.

The identity travels into shard manifests and checkpoints, so a mismatch is refused wherever ids
meet: a run resuming on other shards, an evaluation on shards of another tokenizer. A run or
checkpoint names its tokenizer by a `TokenizerRef` (ref.py), whose `open()` verifies the identity.

What `load_tokenizer(spec)` accepts, in this order:
1. a `.model` file: a bare SentencePiece model;
2. a directory with `tokenizer.json`: an armd record (SentencePiece or synthetic, with
   `"format": "armd_scale.tokenizer/1"`) or a Hugging Face tokenizer file (e.g. a downloaded
   `gpt2` folder, or the output of `armd tokenizer --kind byte-bpe`);
3. a `.json` file: a Hugging Face tokenizer file;
4. a hub name (`gpt2`, `bert-base-uncased`, `org/name`) that is not a local path: looked up in
   the local Hugging Face cache only (huggingface_hub with local files only). The stack never
   downloads; `hf download gpt2 tokenizer.json` fetches it once on a machine with internet.
"""

from __future__ import annotations

from armd_scale.data.errors import DataError
from armd_scale.data.tokenizers.base import (
    INFO_FILE,
    INFO_FORMAT,
    MODEL_FILE,
    TOKENIZER_KINDS,
    VOCAB_FILE,
    Tokenizer,
    encode_chunks_in_worker,
    init_encode_worker,
    read_json,
    tokenizer_info,
    write_tokenizer_info,
)
from armd_scale.data.tokenizers.hf import HFTokenizer, is_hub_name, load_hf_dir, resolve_hub_name
from armd_scale.data.tokenizers.ids import IdTokenizer
from armd_scale.data.tokenizers.sentencepiece import SentencePieceTokenizer, load_sentencepiece_dir
from armd_scale.data.urls import StorageOptions, exists, join_url, read_bytes, url_to_fs

__all__ = [
    "INFO_FILE",
    "INFO_FORMAT",
    "MODEL_FILE",
    "TOKENIZER_KINDS",
    "VOCAB_FILE",
    "IdTokenizer",
    "Tokenizer",
    "encode_chunks_in_worker",
    "init_encode_worker",
    "load_tokenizer",
    "tokenizer_info",
    "write_tokenizer_info",
]


def load_tokenizer(spec: str, storage_options: StorageOptions = None) -> Tokenizer:
    """The tokenizer a `--tokenizer` value names (see the module docstring for the forms)."""
    if spec.endswith(".model"):
        if not exists(spec, storage_options):
            raise DataError(f"tokenizer model {spec} does not exist")
        return SentencePieceTokenizer(read_bytes(spec, storage_options), source=spec)
    if exists(spec, storage_options):
        fs, path = url_to_fs(spec, storage_options)
        if fs.isdir(path):
            record_url = join_url(spec, INFO_FILE)
            if not exists(record_url, storage_options):
                raise DataError(
                    f"{record_url} not found: '{spec}' is not a tokenizer directory (train one with `armd tokenizer`, "
                    "or pass a folder holding a Hugging Face tokenizer.json)"
                )
            record = read_json(record_url, storage_options)
            if isinstance(record, dict) and record.get("format") == INFO_FORMAT:
                if record.get("kind") == IdTokenizer.kind:
                    return IdTokenizer(read_bytes(record_url, storage_options), source=spec)
                return load_sentencepiece_dir(spec, tokenizer_info(spec, storage_options), storage_options)
            return load_hf_dir(spec, storage_options)
        if spec.endswith(".json"):
            return HFTokenizer(read_bytes(spec, storage_options), source=spec)
        raise DataError(
            f"tokenizer {spec} is a file of unknown kind: pass a tokenizer directory, a tokenizer.json "
            "or a SentencePiece .model file"
        )
    if is_hub_name(spec):
        path = resolve_hub_name(spec)
        with open(path, "rb") as f:
            return HFTokenizer(f.read(), source=spec, info={"hub_name": spec, "resolved": path})
    raise DataError(f"tokenizer {spec} does not exist (not a local path, and not a hub name like gpt2 or org/name)")
