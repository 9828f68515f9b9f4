"""Tokenizer: fixed special ids, SHA-256 identity, lossless encoding, every input kind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from armd_scale.data.errors import DataError
from armd_scale.data.prepare.textio import expand_inputs, iter_corpus
from armd_scale.data.prepare.tokenizer_training import train_tokenizer
from armd_scale.data.tokenizers.base import Tokenizer
from armd_scale.data.tokenizers.load import load_tokenizer, tokenizer_info
from tests.data.conftest import CORPORA, DOC_GZ, DOCS_JSONL, DOCS_TXT


def test_special_ids_and_identity(tokenizer_dir: Path, tokenizer: Tokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    info = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    model_sha = hashlib.sha256((tokenizer_dir / "tokenizer.model").read_bytes()).hexdigest()
    assert info["sha256"] == model_sha == tokenizer.sha256 == tokenizer_info(str(tokenizer_dir))["sha256"]
    assert info["vocab_size"] == tokenizer.vocab_size == 256
    assert info["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert len((tokenizer_dir / "tokenizer.vocab").read_text().splitlines()) == 256


def test_encoding_is_lossless_for_covered_text(tokenizer: Tokenizer) -> None:
    text = "def f(x):\n    return x  # twice  spaced\n\n\nclass A:\n    pass"
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids and ids.count(tokenizer.newline_id) == text.count("\n")
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids + [tokenizer.eos_id]) == text  # specials decode to nothing


def test_a_replaced_model_file_is_detected(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train_tokenizer(["builtin:pydoc"], str(a), vocab_size=200)
    train_tokenizer(["builtin:pydoc"], str(b), vocab_size=220)
    (a / "tokenizer.model").write_bytes((b / "tokenizer.model").read_bytes())
    with pytest.raises(DataError, match="was replaced"):
        load_tokenizer(str(a))
    assert load_tokenizer(str(a / "tokenizer.model")).vocab_size == 220  # a bare model file loads


def test_training_is_deterministic_and_unigram_works(tmp_path: Path, tokenizer: Tokenizer) -> None:
    again = train_tokenizer(["builtin:pydoc"], str(tmp_path / "again"), vocab_size=256, character_coverage=1.0)
    assert again.sha256 == tokenizer.sha256
    uni = train_tokenizer(["builtin:pydoc"], str(tmp_path / "uni"), vocab_size=300, model_type="unigram")
    assert uni.sha256 != tokenizer.sha256 and uni.vocab_size == 300 and uni.info["model_type"] == "unigram"
    assert uni.decode(uni.encode("import os\nprint(1)")) == "import os\nprint(1)"


def test_inputs_files_folders_globs_jsonl_gz(tmp_path: Path, corpus_dir: Path) -> None:
    folder = expand_inputs([str(corpus_dir)])
    assert [Path(p).name for p in folder] == ["a.txt", "b.jsonl", "c.txt.gz"]
    assert [Path(p).name for p in expand_inputs([str(corpus_dir / "*.txt*")])] == ["a.txt", "c.txt.gz"]
    with pytest.raises(DataError, match=rf"{corpus_dir / 'README'}: cannot tell its format.*--input-format"):
        expand_inputs([str(corpus_dir / "README")])  # named explicitly, but never read as text by guess
    assert [Path(p).name for p in expand_inputs([str(corpus_dir / "README")], input_format="text")] == ["README"]
    docs = list(iter_corpus(folder, text_field="body"))
    assert docs == ["\n\n".join(DOCS_TXT)] + DOCS_JSONL + [DOC_GZ]  # a .txt file is one document by default
    tok = train_tokenizer([str(corpus_dir), "builtin:pydoc"], str(tmp_path / "t"), vocab_size=256, text_field="body")
    assert tok.info["trained_on"]["documents"] == 5 + len(list(iter_corpus(["builtin:pydoc"])))


def test_input_errors_name_file_line_and_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.txt")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="matches no input file"):
        expand_inputs([str(empty)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: record has no field 'text' \(it has: body\)"):
        list(iter_corpus([str(bad)]))
    bad.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=rf"{bad}:2: not valid JSON"):
        list(iter_corpus([str(bad)]))
    with pytest.raises(DataError, match="synthetic token source"):
        expand_inputs(["synthetic:markov"])
    with pytest.raises(DataError, match="unknown built-in corpus 'builtin:nope'"):
        list(iter_corpus(["builtin:nope"]))
    with pytest.raises(DataError, match="vocab_size=100000"):
        train_tokenizer(["builtin:pydoc"], str(tmp_path / "big"), vocab_size=100_000)


@pytest.mark.skipif(
    not (CORPORA / "tinyshakespeare").is_dir(),
    reason="../shared/corpora/tinyshakespeare is not present (optional real-text check)",
)
def test_real_corpus_round_trip(tmp_path: Path) -> None:
    tok = train_tokenizer(
        [str(CORPORA / "tinyshakespeare")], str(tmp_path / "t"), vocab_size=1000, character_coverage=1.0
    )
    text = next(iter_corpus(expand_inputs([str(CORPORA / "tinyshakespeare")])))[:20_000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text) / 2  # merges do compress


@pytest.mark.parametrize("where", ["device", "outside", "link"])
def test_the_model_a_tokenizer_json_names_stays_inside_its_folder(
    where: str, tmp_path: Path, tokenizer_dir: Path
) -> None:
    """tokenizer.json's `model` naming ../../../dev/zero filled memory in every reader (`armd generate` on an
    export included); naming a copy outside the folder, or a link to one, loaded it."""
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    outside = tmp_path / "elsewhere.model"
    shutil.copy(folder / "tokenizer.model", outside)  # the right bytes and SHA-256: only the name is wrong
    if where == "device":
        name = os.path.relpath("/dev/zero", folder)
        why = "it leads out of the folder (..)"
    elif where == "outside":
        name = "../elsewhere.model"
        why = "it leads out of the folder (..)"
    else:
        name = "linked.model"
        (folder / name).symlink_to(outside)
        why = f"it leads out of the folder through a symbolic link (to {outside})"
    info = json.loads((folder / "tokenizer.json").read_text())
    info["model"] = name
    (folder / "tokenizer.json").write_text(json.dumps(info))
    with pytest.raises(DataError) as refused:
        load_tokenizer(str(folder))
    assert str(refused.value).startswith(
        f"refusing the file name {name!r} that tokenizer.json key 'model' gives in {folder}: {why}"
    )
