"""`armd eval sbp` / tools/sbp_eval.py: the files it writes, judges, entropy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from armd_scale.cli import main
from armd_scale.data.prepare.tokenizer_training import train_tokenizer
from armd_scale.eval import validate
from armd_scale.eval.genppl import CheckpointJudge, load_judge, unigram_entropy
from armd_scale.eval.sbp import write_results
from armd_scale.eval.text import codec_for
from armd_scale.pretrained import load_pretrained

from .runs import cli_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def test_sweep_writes_json_markdown_and_png(text_run, text_ar_run, tmp_path):
    out = tmp_path / "sweep"
    n, k = 16, 3
    assert (
        main(
            [
                "eval",
                "sbp",
                "--checkpoint",
                str(text_run.dir),
                "--judge",
                str(text_ar_run.dir),
                "--streams",
                "1,2,4",
                "--length",
                str(n),
                "--num-samples",
                str(k),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    doc = json.loads((out / "results.json").read_text())
    validate(doc, "sbp")
    assert doc["judge"]["kind"] == "checkpoint" and doc["judge"]["arch"] == "ar"
    assert doc["judge"]["tokenizer"] == "same" and doc["judge"]["dtype"] == "float64"
    assert [r["streams"] for r in doc["results"]] == [1, 2, 4]
    for row in doc["results"]:
        s = row["streams"]
        assert row["forward_calls"] == s + n // s - 1
        assert row["judge_tokens"] == k * n and len(row["samples"]) == k
        assert row["gen_ppl"] == pytest.approx(math.exp(row["gen_nll_per_token"]))
        assert 1 < row["gen_ppl"] < 10 * 128 and 0 < row["entropy"] <= math.log(n)
        assert row["tokens_per_s"] > 0
    table = (out / "results.md").read_text()
    assert "| S | forward calls |" in table and "| 4 | 7 |" in table
    png = (out / "results.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000
    assert not list(out.glob(".*.tmp"))


def test_tools_wrapper_runs_the_same_sweep(text_run, tmp_path):
    """tools/sbp_eval.py in a subprocess; no judge means the generator scores itself."""
    out = tmp_path / "tool"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "sbp_eval.py"),
            "--checkpoint",
            str(text_run.dir),
            "--streams",
            "1,2",
            "--length",
            "8",
            "--num-samples",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "results.json").read_text())
    validate(doc, "sbp")
    assert doc["judge"]["kind"] == "self" and [r["forward_calls"] for r in doc["results"]] == [8, 5]
    assert (out / "results.png").read_bytes()[:8] == PNG_MAGIC


def test_sweep_rejects_streams_that_do_not_divide_the_length(text_run, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "sbp",
                "--checkpoint",
                str(text_run.dir),
                "--streams",
                "1,3",
                "--length",
                "8",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )
    assert "--streams [3]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_judge_retokenizes_text_from_another_tokenizer(text_run, tmp_path):
    """A generator with another tokenizer: the judge reads the decoded text, not the ids."""
    other = train_tokenizer(["builtin:pydoc"], str(tmp_path / "tok"), vocab_size=96, seed=0)
    judge = CheckpointJudge(load_pretrained(text_run.dir, dtype=torch.float64))
    assert other.sha256 != judge.codec.sha256
    rng = np.random.default_rng(0)
    samples = rng.integers(4, other.vocab_size, size=(3, 12))
    score = judge.score(samples, other)
    expected = sum(len(judge.codec.encode(other.decode(row))) for row in samples)
    assert judge.describe()["tokenizer"] == "retokenized" and score.tokens == expected
    same = judge.score(samples, judge.codec)
    assert judge.describe()["tokenizer"] == "same" and same.tokens == samples.size


def test_unigram_entropy_by_hand():
    assert unigram_entropy(np.array([[1, 1, 2, 2]])) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([[5, 5, 5, 5], [1, 2, 3, 4]])) == pytest.approx(math.log(4) / 2)
    with pytest.raises(ValueError, match="num_samples"):
        unigram_entropy(np.array([1, 2, 3]))


def test_transformers_judge_without_transformers_says_so(tmp_path):
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers is installed: the missing-package error cannot happen here")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    with pytest.raises(ImportError, match="pip install transformers"):
        load_judge(str(tmp_path), generator_path="unused")


def test_codec_of_a_synthetic_run_writes_ids(markov_run):
    codec = codec_for(load_pretrained(markov_run.dir))
    assert not codec.has_text and codec.byte_lengths() is None
    assert codec.decode([5, 11, 4]) == "5 11 4" and codec.encode(" 5 11\n4 ") == [5, 11, 4]
    with pytest.raises(ValueError, match="not a token id"):
        codec.encode("5 12")


def test_results_without_matplotlib_keep_the_numbers_and_say_why_there_is_no_plot(tmp_path, monkeypatch, capsys):
    """matplotlib is the optional `plot` extra: without it the JSON and the table are still written."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an interpreter without the package sees
    doc = {
        "checkpoint": "runs/x",
        "step": 10,
        "length": 8,
        "num_samples": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
        "sample_dtype": "fp32",
        "judge": {"kind": "self"},
        "results": [
            {
                "streams": 1,
                "forward_calls": 8,
                "seconds": 0.5,
                "tokens_per_s": 32.0,
                "gen_ppl": 5.0,
                "gen_nll_per_token": math.log(5.0),
                "entropy": 1.5,
            }
        ],
    }
    paths = write_results(doc, tmp_path / "out")
    assert sorted(paths) == ["json", "md"]
    assert json.loads(paths["json"].read_text()) == doc and "| 1 | 8 |" in paths["md"].read_text()
    assert not (tmp_path / "out" / "results.png").exists()
    assert "matplotlib is not installed (pip install 'armd_scale[plot]')" in capsys.readouterr().err
