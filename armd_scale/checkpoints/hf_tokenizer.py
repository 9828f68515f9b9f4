"""The tokenizer files of a Hugging Face export: `tokenizer.json` + `tokenizer_config.json`, so that
`AutoTokenizer.from_pretrained(folder)` gives the ids the model was trained on.

- A Hugging Face tokenizer (GPT-2's BPE, WordPiece, `armd tokenizer --kind byte-bpe|wordpiece`) is
  its own `tokenizer.json`, with one change: a post-processor that adds tokens (WordPiece's
  `[CLS] $A [SEP]`) is removed, because `armd shards` encodes documents without them, so the
  default `tokenizer(text)` gives the training ids.
- A SentencePiece model (`armd tokenizer`, the default kind) is converted to the `tokenizers`
  equivalent: BPE (merges ranked by piece score, control pieces never merged) or Unigram, spaces
  as `▁`, no dummy prefix, no whitespace splitting, the newline as its own piece, byte fallback if
  the model has it.
- For a stock Llama export (`llama_bos`), a start token is appended as the last id and a template
  adds it in front of every text: Llama has no learned start vector, so its embedding row holds it.

Conversion is checked, never assumed: the result must encode a fixed set of texts (the built-in
pydoc corpus plus edge cases: indentation, blank lines, unknown characters, special-token
spellings) to exactly the ids armd_scale's tokenizer gives, or the export stops naming the text.
"""

from __future__ import annotations

import json
from typing import Any

from ..data.tokenizers.base import Tokenizer
from .report import ConversionError

ADDING_POST_PROCESSORS = ("TemplateProcessing", "BertProcessing", "RobertaProcessing")
LLAMA_BOS = "<|armd_start|>"
EDGE_CASES = (
    "",
    "a   b  c",
    "  indented\n\tx = 1\n",
    "multiple\n\n\nnewlines  \n",
    "ünïcödé ✓ 中文 🙂",
    "<unk> <s> </s> <pad> <|endoftext|> [CLS] [SEP]",
    "x" * 200,
    "def f(x):\n    return x ** 2  # squares\n",
)


def check_texts() -> list[str]:
    from ..data.prepare.corpora import pydoc_documents

    return list(EDGE_CASES) + pydoc_documents()


def _sentencepiece_json(tok) -> dict[str, Any]:
    """tokenizers' JSON for an armd SentencePiece model (identity normalisation, no dummy prefix)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer
    from transformers.convert_slow_tokenizer import generate_merges, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tok.model_proto)
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    byte_fallback = bool(proto.trainer_spec.byte_fallback)
    unk = next(p for p, _, t in pieces if t == 2)
    # SentencePiece piece types: 1 normal, 2 unknown, 3 control, 4 user defined, 6 byte
    never_merged = [p for p, _, t in pieces if t in (2, 3, 4)]
    model: Any
    if proto.trainer_spec.model_type == 2:  # BPE
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        scores = {p: s for p, s, t in pieces if t == 1}
        merges = generate_merges(vocab, scores, skip_tokens=never_merged)
        model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback)
    elif proto.trainer_spec.model_type == 1:  # Unigram
        unk_id = next(i for i, (_, _, t) in enumerate(pieces) if t == 2)
        model = models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk_id, byte_fallback=byte_fallback)
    else:
        raise ConversionError(f"SentencePiece model type {proto.trainer_spec.model_type} has no tokenizers equivalent")
    rust = RustTokenizer(model)
    rust.normalizer = normalizers.Replace(" ", "▁")
    rust.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    rust.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # user-defined pieces (the newline) are atomic in SentencePiece: an added token, not special
    rust.add_tokens([AddedToken(p, normalized=False, special=False) for p, _, t in pieces if t == 4])
    return json.loads(rust.to_str())


def _special(spec: dict[str, Any], ids: dict[str, int | None]) -> dict[str, str]:
    """Token strings of the special roles, for tokenizer_config.json."""
    from tokenizers import Tokenizer as RustTokenizer

    rust = RustTokenizer.from_str(json.dumps(spec))
    names = {role: rust.id_to_token(i) for role, i in ids.items() if i is not None}
    return {role: name for role, name in names.items() if name}


def export_tokenizer_files(
    tok: Tokenizer, *, model_max_length: int, llama_bos: int | None = None
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """({file name: bytes}, facts for the model card) of the exported tokenizer, verified."""
    from tokenizers import Tokenizer as RustTokenizer

    if tok.kind == "sentencepiece":
        spec = _sentencepiece_json(tok)
        origin = "converted from the SentencePiece model"
    elif tok.kind == "hf":
        spec = json.loads(tok.payload().decode("utf-8"))
        origin = "the run's tokenizer.json"
        post = spec.get("post_processor") or {}
        if post.get("type") in ADDING_POST_PROCESSORS:
            spec["post_processor"] = None
            origin += f" without its {post['type']} post-processor (training never added those tokens)"
    else:
        raise ConversionError(f"tokenizer kind {tok.kind!r} cannot be exported for transformers")
    roles = {"eos_token": tok.eos_id, "bos_token": tok.bos_id, "pad_token": tok.pad_id, "unk_token": tok.unk_id}
    special = _special(spec, roles)
    if llama_bos is not None:
        spec.setdefault("added_tokens", []).append(
            {
                "id": llama_bos,
                "content": LLAMA_BOS,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
        spec["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": LLAMA_BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": LLAMA_BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {LLAMA_BOS: {"id": LLAMA_BOS, "ids": [llama_bos], "tokens": [LLAMA_BOS]}},
        }
        special["bos_token"] = LLAMA_BOS
    text = json.dumps(spec, ensure_ascii=False)
    rust = RustTokenizer.from_str(text)
    rust.encode_special_tokens = True  # armd_scale encodes special-token spellings as text
    for sample in check_texts():
        got = rust.encode(sample, add_special_tokens=False).ids
        want = tok.encode(sample)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            raise ConversionError(
                f"the transformers tokenizer made from {tok.source} encodes {sample[:60]!r} differently from the "
                f"run's tokenizer (first difference at token {at}: {got[at : at + 4]} vs {want[at : at + 4]}); "
                "export with --no-tokenizer"
            )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,  # a special token's spelling in text is text, as in training
        **special,
    }
    facts = {"origin": origin, "special_tokens": special, "verified_texts": len(check_texts())}
    files = {
        "tokenizer.json": text.encode("utf-8"),
        "tokenizer_config.json": (json.dumps(config, indent=1, ensure_ascii=False) + "\n").encode("utf-8"),
    }
    return files, facts
