"""`armd tokenizer` and `armd shards` end to end through the command line entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from armd_scale.cli import main
from armd_scale.data.manifest import read_manifest
from armd_scale.data.tokenizer import tokenizer_info


def test_tokenizer_then_shards_then_verify(tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture) -> None:
    tok = tmp_path / "tok"
    assert (
        main(
            [
                "tokenizer",
                "--input",
                str(corpus_dir),
                "builtin:pydoc",
                "--vocab-size",
                "220",
                "--out",
                str(tok),
                "--text-field",
                "body",
                "--no-progress",
            ]
        )
        == 0
    )
    sha = tokenizer_info(str(tok))["sha256"]
    assert sha in capsys.readouterr().out
    out = tmp_path / "shards"
    assert (
        main(
            [
                "shards",
                "--tokenizer",
                str(tok),
                "--input",
                "builtin:pydoc",
                str(corpus_dir / "a.txt"),
                "--seq-len",
                "32",
                "--out",
                str(out),
                "--val-fraction",
                "0.1",
                "--workers",
                "2",
                "--samples-per-shard",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    m = read_manifest(str(out / "train"))
    assert m.tokenizer_sha256 == sha and m.seq_len == 32 and len(m.shards) > 1
    assert read_manifest(str(out / "val")).num_samples > 0
    assert main(["shards", "--verify", str(out / "train"), "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out


def test_upgrade_manifest_adds_chunk_checksums(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = "synthetic:markov?vocab=4&samples=300&val_samples=40"
    assert main(["shards", "--input", spec, "--seq-len", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    before = read_manifest(str(tmp_path / "train"))
    assert before.chunk_samples == 128  # 128 KiB chunks of 1 KiB records
    assert main(["shards", "--upgrade-manifest", str(tmp_path), "--chunk-kb", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'train'}: 1 shards, 10 chunks of 32 samples: manifest upgraded" in out
    after = read_manifest(str(tmp_path / "train"))
    assert after.chunk_samples == 32 and after.fingerprint == before.fingerprint
    assert read_manifest(str(tmp_path / "val")).chunk_samples == 32
    assert main(["shards", "--verify", str(tmp_path), "--no-progress"]) == 0


def test_synthetic_shards_need_no_tokenizer(tmp_path: Path) -> None:
    assert (
        main(
            [
                "shards",
                "--input",
                "synthetic:markov?vocab=4&samples=64&val_samples=0",
                "--seq-len",
                "8",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_manifest(str(tmp_path / "train")).num_samples == 64


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["shards", "--input", "x.txt", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--seq-len, --tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            ["shards", "--input", "synthetic:markov", "--seq-len", "8", "--out", str(tmp_path), "--val-fraction", "0.1"]
        )
    assert "val_samples=" in capsys.readouterr().err
    assert main(["shards", "--verify", str(tmp_path / "nothing")]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert (
        main(["tokenizer", "--input", str(tmp_path / "missing"), "--vocab-size", "100", "--out", str(tmp_path / "t")])
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
