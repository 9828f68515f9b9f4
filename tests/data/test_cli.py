"""`armd tokenizer` and `armd shards` end to end through the command line entry point."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from armd_scale.cli import main
from armd_scale.data.manifest import read_manifest
from armd_scale.data.tokenizers.load import load_tokenizer, tokenizer_info
from tests.hold import Hold

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["shards", "--seq-len", "0"], "argument --seq-len: 0 must be >= 1"),
        (["shards", "--seq-len", "-4"], "argument --seq-len: -4 must be >= 1"),
        (["shards", "--samples-per-shard", "0"], "argument --samples-per-shard: 0 must be >= 1"),
        (["shards", "--workers", "0"], "argument --workers: 0 must be >= 1"),
        (["shards", "--shard-size-mb", "0"], "argument --shard-size-mb: 0.0 must be a finite number > 0"),
        (["tokenizer", "--vocab-size", "0"], "argument --vocab-size: 0 must be >= 1"),
        (["generate", "--checkpoint", "x", "--length", "0"], "argument --length: 0 must be >= 1"),
        (["generate", "--checkpoint", "x", "--num-samples", "-1"], "argument --num-samples: -1 must be >= 1"),
        (["generate", "--checkpoint", "x", "--top-p", "0"], "argument --top-p: 0.0 must be in (0, 1]"),
        (["generate", "--checkpoint", "x", "--temperature", "-1"], "argument --temperature: -1.0 must be a finite"),
        (["eval", "ppl", "--checkpoint", "x", "--data", "d", "--seq-len", "0"], "argument --seq-len: 0 must be >= 1"),
        (["eval", "ppl", "--checkpoint", "x", "--data", "d", "--batch-size", "0"], "--batch-size: 0 must be >= 1"),
        (["eval", "ppl", "--checkpoint", "x", "--data", "d", "--max-tokens", "0"], "--max-tokens: 0 must be >= 1"),
        (["eval", "sbp", "--checkpoint", "x", "--out", "o", "--length", "0"], "argument --length: 0 must be >= 1"),
        (["train", "--dry-run", "--world-size", "0"], "argument --world-size: 0 must be >= 1"),
        (["eval", "zeroshot", "--checkpoint", "x", "--batch-size", "0"], "--batch-size: 0 must be >= 1"),
        (["eval", "zeroshot", "--checkpoint", "x", "--block-len", "-8"], "--block-len: -8 must be >= 1"),
        (["eval", "zeroshot", "--checkpoint", "x", "--num-proc", "0"], "--num-proc: 0 must be >= 1"),
        (["eval", "zeroshot", "--checkpoint", "x", "--steps", "-1"], "--steps: -1 must be >= 0"),
        (["eval", "zeroshot", "--checkpoint", "x", "--samples", "0"], "--samples: 0 must be >= 1"),
        (["eval", "harness", "--checkpoint", "x", "--tasks", "t", "--streams", "0"], "--streams: 0 must be >= 1"),
        (
            ["eval", "sbp", "--checkpoint", "x", "--out", "o", "--length", "8", "--judge-batch-size", "0"],
            "0 must be >= 1",
        ),
    ],
)
def test_zero_and_negative_counts_are_refused(argv, fragment, capsys: pytest.CaptureFixture) -> None:
    """0 used to mean "unset" (the default) for --seq-len, --length, --samples-per-shard."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and fragment in capsys.readouterr().err


def test_a_seq_len_longer_than_the_corpus_publishes_nothing(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    """`armd shards --seq-len 100000` used to write a shard set with no samples and exit 0."""
    out = tmp_path / "set"
    argv = ["shards", "--tokenizer", str(tokenizer_dir), "--input", "builtin:pydoc", "--seq-len", "10000000"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{out}/train: the train split has" in err and "not one whole sample of seq_len=10000000" in err
    assert not list(out.rglob("manifest.json"))


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


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tokenizer_refuses_a_non_empty_out_and_overwrite_replaces_it_whole(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """`armd tokenizer --out EXISTING_DIR` silently replaced a tokenizer that runs and shard sets depend on."""
    out = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, out)
    before = _tree(out)
    argv = ["tokenizer", "--input", "builtin:pydoc", "--vocab-size", "300", "--no-progress", "--out", str(out)]
    assert main([*argv, "--kind", "byte-bpe"]) == 1
    err = capsys.readouterr().err
    assert f"--out {out} exists and is not empty; choose a new directory or pass --overwrite" in err
    assert _tree(out) == before  # untouched
    assert main([*argv, "--kind", "byte-bpe", "--overwrite"]) == 0
    replaced = load_tokenizer(str(out))
    assert replaced.kind == "hf" and replaced.sha256 in capsys.readouterr().out
    # the whole folder is the new tokenizer: nothing of the SentencePiece one is left beside it
    assert sorted(p.name for p in out.iterdir()) == ["armd_tokenizer.json", "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no staging left behind


def test_a_tokenizer_overwrite_killed_midway_leaves_the_old_tokenizer_whole(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """SIGKILL right after the new tokenizer.model was written (tests/hold.py): the files are written into a
    staging folder beside --out, which replaces it only once complete."""
    out = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, out)
    before = _tree(out)
    argv = ["tokenizer", "--input", "builtin:pydoc", "--vocab-size", "220", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = Hold(
        "armd_scale.data.prepare.sp_training:write_atomic:kill-after:1", [*argv, "--overwrite"], env, cwd=str(REPO)
    )
    code, output = killed.finish()
    assert code == -signal.SIGKILL, output[-3000:]
    assert _tree(out) == before
    assert load_tokenizer(str(out)).sha256 == tokenizer_info(str(tokenizer_dir))["sha256"]
