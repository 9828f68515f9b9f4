"""Training Hugging Face `tokenizers` files: GPT-2-style byte-level BPE and BERT-style WordPiece.

- `byte-bpe` is laid out like GPT-2's tokenizer.json: ByteLevel pre-tokenizer (GPT-2's regex, no
  prefix space), decoder and post-processor, a BPE model whose alphabet is all 256 bytes (so no
  text is ever unknown), and `<|endoftext|>` as the last id, the document separator. A vocabulary
  of N has N - 1 BPE tokens plus that separator.
- `wordpiece` is laid out like bert-base-uncased's: BERT normaliser (lower-casing and accent
  stripping unless `lowercase=False`), BERT pre-tokenizer, WordPiece model with `##` continuations,
  specials [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4, the `[CLS] $A [SEP]` template.

Determinism: the same input and settings give the same file. Byte-level BPE training is
deterministic as it is. WordPiece training is not: the `tokenizers` trainer numbers the `##x`
continuation characters in hash-map order, and merges of equal count are then ordered by those
numbers. So the `##x` tokens are found in a first pass over the text and handed to the trainer
first, in sorted order, which fixes their ids and every tie after them; they stay ordinary
vocabulary entries in the written file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from armd_scale import __version__
from armd_scale.data.errors import DataError
from armd_scale.data.prepare.textio import DocSplit, expand_inputs, iter_corpus
from armd_scale.data.tokenizers.base import INFO_FILE
from armd_scale.data.tokenizers.hf import HF_INFO_FILE, HF_INFO_FORMAT, HFTokenizer
from armd_scale.data.urls import StorageOptions, join_url, write_atomic

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDPIECE_PREFIX = "##"


def _byte_bpe(vocab_size: int) -> tuple[Any, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 257:
        raise DataError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 257 ids (256 bytes + {ENDOFTEXT})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    return tok, trainer


def _wordpiece(vocab_size: int, lowercase: bool, continuations: list[str]) -> tuple[Any, Any]:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=WORDPIECE_PREFIX))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=BERT_SPECIALS + continuations,
        continuing_subword_prefix=WORDPIECE_PREFIX,
        show_progress=False,
    )
    return tok, trainer


def _continuation_tokens(tok: Any, docs: Iterator[str]) -> list[str]:
    """`##c` for every character c that follows another inside a pre-tokenized word, sorted."""
    chars: set[str] = set()
    for doc in docs:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(doc)):
            chars.update(word[1:])
    return sorted(WORDPIECE_PREFIX + c for c in chars)


def _finish_wordpiece(tok: Any) -> Any:
    """Drop the `##c` helpers from the added (special) tokens, keep them in the vocabulary, add the
    [CLS] $A [SEP] template."""
    from tokenizers import Tokenizer, processors

    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in BERT_SPECIALS]
    out = Tokenizer.from_str(json.dumps(spec))
    cls, sep = out.token_to_id("[CLS]"), out.token_to_id("[SEP]")
    out.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return out


def train_hf_tokenizer(
    inputs: Sequence[str],
    out: str,
    *,
    kind: str,
    vocab_size: int,
    lowercase: bool = True,
    text_field: str = "text",
    doc_split: DocSplit = "file",
    input_format: str = "auto",
    progress: bool = False,
    storage_options: StorageOptions = None,
) -> HFTokenizer:
    """Train a `byte-bpe` or `wordpiece` tokenizer on the documents of `inputs`; write
    `out/tokenizer.json` (the Hugging Face file, the identity) and `out/armd_tokenizer.json`
    (how it was trained, written last). Returns the loaded tokenizer."""
    from tokenizers import AddedToken
    from tqdm import tqdm

    sources = expand_inputs(inputs, storage_options, input_format)
    read: dict[str, Any] = dict(
        text_field=text_field, doc_split=doc_split, input_format=input_format, storage_options=storage_options
    )
    stats = {"documents": 0, "characters": 0}

    def documents(count: bool) -> Iterator[str]:
        bar = tqdm(desc="tokenizer: reading", unit="doc", disable=not progress or not count)
        for doc in iter_corpus(sources, warn=count, **read):
            if count:
                stats["documents"] += 1
                stats["characters"] += len(doc)
                bar.update(1)
            yield doc
        bar.close()

    start = time.perf_counter()
    if kind == "byte-bpe":
        tok, trainer = _byte_bpe(vocab_size)
    elif kind == "wordpiece":
        tok, _ = _wordpiece(vocab_size, lowercase, [])
        continuations = _continuation_tokens(tok, documents(count=False))
        tok, trainer = _wordpiece(vocab_size, lowercase, continuations)
    else:
        raise DataError(f"kind={kind!r} is not byte-bpe or wordpiece")
    tok.train_from_iterator(documents(count=True), trainer)
    if stats["documents"] == 0:
        raise DataError(f"inputs {list(inputs)} contain no text to train a tokenizer on")
    if kind == "byte-bpe":
        tok.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    else:
        tok = _finish_wordpiece(tok)
    data = tok.to_str().encode("utf-8")
    result = HFTokenizer(data, source=out)
    if result.vocab_size > vocab_size:  # the trainer never drops characters of the text
        raise DataError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer of {list(inputs)}: its characters "
            f"alone need {result.vocab_size} ids"
        )
    info = {
        "format": HF_INFO_FORMAT,
        "kind": "hf",
        "trained_as": kind,
        "sha256": result.sha256,
        "vocab_size": result.vocab_size,
        "special_tokens": result.special_tokens(),
        "lowercase": lowercase if kind == "wordpiece" else None,
        "trained_on": {"inputs": list(inputs), "text_field": text_field, "doc_split": doc_split, **stats},
        "versions": {"armd_scale": __version__, "tokenizers": _tokenizers_version()},
    }
    write_atomic(join_url(out, INFO_FILE), data, storage_options)
    write_atomic(join_url(out, HF_INFO_FILE), (json.dumps(info, indent=2) + "\n").encode(), storage_options)
    result.info = info
    log.info(
        "trained %s tokenizer (vocab %d) on %d documents in %.1fs: %s",
        kind,
        result.vocab_size,
        stats["documents"],
        time.perf_counter() - start,
        out,
    )
    return result


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__
