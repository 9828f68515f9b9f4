"""TokenizerRef: the run's tokenizer as one typed value (location, kind, checksum) that verifies on open."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from armd_scale.data.errors import DataError
from armd_scale.data.manifest import read_manifest
from armd_scale.data.prepare.synthetic import build_synthetic_shards
from armd_scale.data.prepare.tokenizer_training import train_tokenizer
from armd_scale.data.tokenizers.base import MODEL_FILE, Tokenizer
from armd_scale.data.tokenizers.ids import IdTokenizer
from armd_scale.data.tokenizers.ref import TokenizerMismatch, TokenizerRef, open_recorded


def test_open_returns_the_verified_tokenizer(tokenizer_dir: Path, tokenizer: Tokenizer) -> None:
    ref = TokenizerRef(str(tokenizer_dir), "sentencepiece", tokenizer.sha256)
    opened = ref.open()
    assert opened.sha256 == tokenizer.sha256 and opened.encode("def f(x):") == tokenizer.encode("def f(x):")
    assert TokenizerRef.of(opened) == ref


def test_another_tokenizer_in_its_place_is_refused_naming_the_file_and_the_checksum(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer
) -> None:
    """Someone retrained into the directory: model and record agree with each other, not with the run."""
    moved = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, moved)
    ref = TokenizerRef(str(moved), "sentencepiece", "0" * 64)
    with pytest.raises(TokenizerMismatch) as e:
        ref.open()
    text = str(e.value)
    assert str(moved / MODEL_FILE) in text and "0" * 64 in text and tokenizer.sha256 in text
    assert "changed since training" in text


def test_a_replaced_model_file_is_refused_naming_it_and_the_expected_checksum(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer
) -> None:
    """The model file swapped for another valid one, its record left as it was."""
    moved = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, moved)
    other = train_tokenizer(["builtin:pydoc"], str(tmp_path / "other"), vocab_size=96, seed=0)
    (moved / MODEL_FILE).write_bytes((tmp_path / "other" / MODEL_FILE).read_bytes())
    with pytest.raises(DataError) as e:
        TokenizerRef(str(moved), "sentencepiece", tokenizer.sha256).open()
    text = str(e.value)
    assert str(moved / MODEL_FILE) in text and tokenizer.sha256 in text and other.sha256 in text


def test_a_wrong_kind_is_refused(tokenizer_dir: Path, tokenizer: Tokenizer) -> None:
    with pytest.raises(TokenizerMismatch, match="of kind 'sentencepiece', expected 'hf'"):
        TokenizerRef(str(tokenizer_dir), "hf", tokenizer.sha256).open()


def test_old_loose_metadata_still_reads() -> None:
    """Checkpoints and runs written before the reference carry `tokenizer_dir` + `tokenizer_sha256`."""
    ref = TokenizerRef.from_meta({"tokenizer_dir": "/data/tok", "tokenizer_sha256": "ab" * 32})
    assert ref == TokenizerRef("/data/tok", "", "ab" * 32)
    assert TokenizerRef.from_meta({"tokenizer_dir": None, "tokenizer_sha256": "ab" * 32}) == TokenizerRef(
        None, "", "ab" * 32
    )
    assert TokenizerRef.from_meta({"tokenizer_dir": "/data/tok"}) is None  # no identity, nothing to verify
    # an export's config.json names its tokenizer folder under "tokenizer" as a string: the loose keys win
    assert TokenizerRef.from_meta({"tokenizer": "tokenizer", "tokenizer_sha256": "cd" * 32}) == TokenizerRef(
        None, "", "cd" * 32
    )


def test_new_metadata_round_trips_and_keeps_the_checksum_key_for_old_readers() -> None:
    ref = TokenizerRef("/data/tok", "hf", "ef" * 32)
    meta = ref.to_meta()
    assert meta["tokenizer_sha256"] == "ef" * 32
    assert TokenizerRef.from_meta(meta) == ref
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_bad_metadata_is_refused_naming_where_and_the_key() -> None:
    with pytest.raises(DataError, match="run/meta.json: 'tokenizer' lacks key 'checksum'"):
        TokenizerRef.from_meta({"tokenizer": {"location": "x", "kind": "hf"}}, "run/meta.json")
    with pytest.raises(DataError, match="needs a checksum"):
        TokenizerRef("x", "hf", "")


def test_open_without_a_location_says_so() -> None:
    with pytest.raises(DataError, match="no tokenizer location is recorded"):
        TokenizerRef(None, "", "ab" * 32).open()


def test_open_recorded_verifies_only_when_a_checksum_was_recorded(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer
) -> None:
    assert open_recorded(str(tokenizer_dir), None).sha256 == tokenizer.sha256
    with pytest.raises(TokenizerMismatch):
        open_recorded(str(tokenizer_dir), "1" * 64)


def test_a_synthetic_source_opens_as_an_id_tokenizer(tmp_path: Path) -> None:
    spec = "synthetic:markov?vocab=6&order=2&seed=3&samples=100&val_samples=0"
    build_synthetic_shards(spec, str(tmp_path), seq_len=16, samples_per_shard=64)
    manifest = read_manifest(str(tmp_path / "train"))
    tok = TokenizerRef(str(tmp_path / "tokenizer"), "synthetic", manifest.tokenizer_sha256).open()
    assert isinstance(tok, IdTokenizer) and not tok.has_text and tok.vocab_size == manifest.vocab_size


def test_a_re_saved_hugging_face_tokenizer_is_refused_naming_the_file(tmp_path: Path, bpe_dir: Path) -> None:
    """tokenizer.json re-serialised (same vocabulary, other bytes) is another identity."""
    import json

    from armd_scale.data.tokenizers.load import load_tokenizer

    expected = load_tokenizer(str(bpe_dir)).sha256
    moved = tmp_path / "bpe"
    shutil.copytree(bpe_dir, moved)
    (moved / "tokenizer.json").write_text(json.dumps(json.loads((moved / "tokenizer.json").read_text())))
    with pytest.raises(DataError) as e:
        TokenizerRef(str(moved), "hf", expected).open()
    assert str(moved / "tokenizer.json") in str(e.value) and expected in str(e.value)
