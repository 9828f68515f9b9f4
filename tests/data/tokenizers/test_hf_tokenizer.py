"""Hugging Face tokenizer backend: GPT-2-style byte-level BPE and BERT-style WordPiece trained here,
loading by directory / file / cached hub name, special roles, exact bytes, identity and bad files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from armd_scale.cli import main
from armd_scale.data.errors import DataError
from armd_scale.data.manifest import read_manifest
from armd_scale.data.prepare.corpora import pydoc_documents
from armd_scale.data.prepare.shards import build_shards
from armd_scale.data.prepare.textio import expand_inputs, iter_corpus
from armd_scale.data.prepare.tokenizer_training import train_tokenizer
from armd_scale.data.tokenizers.hf import HFTokenizer
from armd_scale.data.tokenizers.load import load_tokenizer
from tests.data.conftest import CORPORA, shard_stream

UNICODE = "naïve café — 日本語 🙂\n\tindented  twice\r\nand <|endoftext|> [SEP] as plain text\n\n"


def test_byte_bpe_has_the_gpt2_layout_and_is_deterministic(bpe_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(bpe_dir))
    spec = json.loads((bpe_dir / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert spec["decoder"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert tok.vocab_size == 400 and tok.eos_id == 399 == tok.bos_id  # <|endoftext|> last, as in GPT-2 (50256)
    assert spec["added_tokens"] == [{**spec["added_tokens"][0], "id": 399, "content": "<|endoftext|>", "special": True}]
    assert tok.pad_id is None and tok.unk_id is None  # 256 byte symbols: nothing is unknown
    assert tok.sha256 == hashlib.sha256((bpe_dir / "tokenizer.json").read_bytes()).hexdigest()
    again = train_tokenizer(["builtin:pydoc"], str(tmp_path / "again"), vocab_size=400, kind="byte-bpe")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (bpe_dir / "tokenizer.json").read_bytes()
    assert again.sha256 == tok.sha256
    record = json.loads((bpe_dir / "armd_tokenizer.json").read_text())
    assert record["sha256"] == tok.sha256 and record["special_tokens"]["separator"] == "<|endoftext|>"


def _first_chars(folder: Path, limit: int) -> str:
    """The first `limit` characters of a corpus folder's text, as the readers give it."""
    parts, size = [], 0
    for doc in iter_corpus(expand_inputs([str(folder)]), doc_split="paragraph", warn=False):
        parts.append(doc)
        size += len(doc)
        if size >= limit:
            break
    return "\n\n".join(parts)


def test_byte_bpe_round_trips_exactly_and_counts_bytes_exactly(bpe_dir: Path) -> None:
    tok = load_tokenizer(str(bpe_dir))
    table = tok.byte_lengths()
    texts = pydoc_documents() + [UNICODE]
    for name in ("tinyshakespeare", "wikitext-2", "state_union"):  # optional real text: 200 KB of each
        if (CORPORA / name).is_dir():
            texts.append(_first_chars(CORPORA / name, 200_000))
    for text in texts:
        ids = np.asarray(tok.encode(text))
        assert tok.decode(ids) == text
        assert int(table[ids].sum()) == len(text.encode("utf-8"))
    ids = tok.encode(UNICODE)
    assert tok.eos_id not in ids  # a literal "<|endoftext|>" is text, never the separator
    assert table[tok.eos_id] == 0 and tok.decode(ids + [tok.eos_id]) == UNICODE


def test_wordpiece_has_the_bert_layout_roles_and_counts_normalised_bytes(wordpiece_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(wordpiece_dir))
    spec = json.loads((wordpiece_dir / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "WordPiece" and spec["normalizer"]["lowercase"] is True
    assert [t["content"] for t in spec["added_tokens"]] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)  # [PAD] [UNK] [CLS] [SEP]
    assert tok.vocab_size == 400 and any(t.startswith("##") for t in spec["model"]["vocab"])
    again = train_tokenizer(["builtin:pydoc"], str(tmp_path / "again"), vocab_size=400, kind="wordpiece")
    assert again.sha256 == tok.sha256, "WordPiece training must not depend on hash-map order"
    # lossy: lower-cased, whitespace runs become one space, accents stripped
    assert tok.decode(tok.encode("The  Naïve\nCafé")) == "the naive cafe"
    # bytes: exact for text already in the normalised form (lower case, single spaces), one per line break
    lines = ["the quick brown fox jumps over the lazy dog .", "import os , sys"]
    ids = np.asarray([i for line in lines for i in tok.encode(line) + [tok.eos_id]])
    assert int(tok.byte_lengths()[ids].sum()) == sum(len(line) + 1 for line in lines)


def test_a_hub_name_is_found_only_in_the_local_cache(bpe_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--tiny-bpe" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(bpe_dir / "tokenizer.json", snapshot / "tokenizer.json")
    (cache / "models--some-org--tiny-bpe" / "refs").mkdir()
    (cache / "models--some-org--tiny-bpe" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer("some-org/tiny-bpe")
    assert tok.sha256 == load_tokenizer(str(bpe_dir / "tokenizer.json")).sha256 == load_tokenizer(str(bpe_dir)).sha256
    with pytest.raises(
        DataError, match=r"'gpt2' is not a local path.*never downloads.*hf download gpt2 tokenizer\.json"
    ):
        load_tokenizer("gpt2")


def test_bad_tokenizer_files_name_the_file_and_the_fix(bpe_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(DataError, match=rf"{re.escape(str(broken))}.*not valid JSON.*download or train"):
        load_tokenizer(str(broken))
    odd = tmp_path / "odd.json"
    odd.write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    with pytest.raises(DataError, match=rf"{re.escape(str(odd))} does not parse as a Hugging Face tokenizer.json"):
        load_tokenizer(str(odd))
    spec = json.loads((bpe_dir / "tokenizer.json").read_text())
    spec["added_tokens"] = []
    (tmp_path / "nosep.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="no document separator token"):
        load_tokenizer(str(tmp_path / "nosep.json"))
    replaced = tmp_path / "replaced"
    shutil.copytree(bpe_dir, replaced)
    (replaced / "tokenizer.json").write_text(json.dumps(json.loads((bpe_dir / "tokenizer.json").read_text())))
    with pytest.raises(DataError, match="tokenizer file was replaced"):
        load_tokenizer(str(replaced))
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing" / "dir"))


def test_hf_shards_are_worker_independent_and_record_the_tokenizer(bpe_dir: Path, tmp_path: Path) -> None:
    kw = dict(seq_len=32, val_fraction=0.1, samples_per_shard=60)
    build_shards(["builtin:pydoc"], str(tmp_path / "a"), str(bpe_dir), workers=1, **kw)
    build_shards(["builtin:pydoc"], str(tmp_path / "b"), str(bpe_dir / "tokenizer.json"), workers=2, **kw)
    for split in ("train", "val"):
        a = sorted((tmp_path / "a" / split).glob("*.tar"))
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in sorted((tmp_path / "b" / split).glob("*.tar"))]
    m = read_manifest(str(tmp_path / "a" / "train"))
    tok = load_tokenizer(str(bpe_dir))
    assert m.tokenizer_sha256 == tok.sha256 and m.vocab_size == 400 and m.build["eos_id"] == 399
    assert m.tokenizer == {"kind": "hf", "model": "BPE", "separator": "<|endoftext|>"}
    stream = shard_stream(str(tmp_path / "a" / "train"))
    docs = tok.decode(stream).count("\n")  # the separator decodes to nothing, text is intact
    assert docs > 100 and (stream == tok.eos_id).sum() >= m.totals["documents"] - 1


def test_tokenizer_cli_kinds_and_option_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "wp"
    args = ["tokenizer", "--input", "builtin:pydoc", "--vocab-size", "300", "--no-progress"]
    assert main([*args, "--kind", "wordpiece", "--cased", "--out", str(out)]) == 0
    tok = load_tokenizer(str(out))
    assert isinstance(tok, HFTokenizer) and tok.sha256 in capsys.readouterr().out
    assert tok.decode(tok.encode("The Python Language")) == "The Python Language"  # --cased keeps case
    assert tok.decode(tok.encode("Café x")) == "[UNK] x"  # a word with a character outside the vocabulary
    with pytest.raises(SystemExit):
        main([*args, "--kind", "byte-bpe", "--model-type", "unigram", "--out", str(tmp_path / "x")])
    assert "--model-type apply to --kind sentencepiece only" in capsys.readouterr().err
    assert main([*args, "--kind", "byte-bpe", "--vocab-size", "200", "--out", str(tmp_path / "y")]) == 1
    assert "at least 257 ids" in capsys.readouterr().err
