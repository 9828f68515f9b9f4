"""Every tokenizer backend drives the whole path: a tokenizer trained here -> shards -> 20 training
steps -> `armd eval ppl` -> `armd generate` -> `armd convert --to export` -> generate from the export.
The Hugging Face runs pad the model's vocabulary (400 -> 448); padded ids are never generated."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from armd_scale.cli import main
from armd_scale.data.prepare.corpora import pydoc_documents
from armd_scale.data.prepare.shards import build_shards
from armd_scale.data.tokenizers.load import load_tokenizer
from armd_scale.eval import validate
from armd_scale.pretrained import load_pretrained

from .runs import HF_PADDED_VOCAB, HF_VOCAB, RUNS, SEQ_LEN, cli_env

BACKENDS = ["text_run", "text_bpe_run", "text_wordpiece_run"]


def _json(tmp_path, capsys, *argv: str) -> dict:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.json"
    assert main([*argv, "--json", str(out)]) == 0, capsys.readouterr().err
    return json.loads(out.read_text())


@pytest.mark.parametrize("run_name", BACKENDS)
def test_tokenizer_to_export_for_every_backend(run_name, request, tmp_path, capsys):
    run = request.getfixturevalue(run_name)
    _, val, tok_dir = run.data_urls()
    tok = load_tokenizer(tok_dir)
    pre = load_pretrained(run.dir)
    padded = pre.config.model.vocab_size > tok.vocab_size
    assert pre.config.model.tokenizer_vocab_size == (tok.vocab_size if padded else None)
    assert pre.tokenizer_sha256 == tok.sha256 and padded == (run_name != "text_run")

    ppl = _json(tmp_path, capsys, "eval", "ppl", "--checkpoint", str(run.dir), "--data", val, "--no-progress")
    validate(ppl, "ppl")
    assert np.isfinite(ppl["nll_per_token"]) and ppl["nll_per_token"] < np.log(tok.vocab_size)  # it learned
    assert ppl["bits_per_byte"] > 0 and ppl["bytes"] > ppl["tokens"]  # merges: more bytes than tokens

    args = ["--length", str(SEQ_LEN), "--num-samples", "4", "--seed", "0", "--temperature", "1.5"]
    gen = _json(tmp_path, capsys, "generate", "--checkpoint", str(run.dir), *args)
    validate(gen, "generate")
    tokens = np.asarray([s["tokens"] for s in gen["samples"]])
    assert tokens.max() < tok.vocab_size, "a padded id was sampled"
    assert all(s["text"] == tok.decode(s["tokens"]) and s["text"].strip() for s in gen["samples"])

    export = tmp_path / "export"
    assert main(["convert", "--checkpoint", str(run.dir), "--to", "export", "--out", str(export)]) == 0
    assert load_tokenizer(str(export / "tokenizer")).sha256 == tok.sha256
    again = _json(tmp_path, capsys, "generate", "--checkpoint", str(export), *args)
    assert again["samples"] == gen["samples"]


def test_byte_bpe_text_in_any_format_scores_like_its_shards(text_bpe_run, tmp_path, capsys):
    """Text is packed for evaluation exactly as `armd shards` packs it, whatever the file format."""
    _, _, tok_dir = text_bpe_run.data_urls()
    docs = pydoc_documents()[:12]
    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(lines))
    build_shards([str(tmp_path / "docs.jsonl.gz")], str(tmp_path / "shards"), tok_dir, seq_len=SEQ_LEN)
    common = ["eval", "ppl", "--checkpoint", str(text_bpe_run.dir), "--no-progress"]
    from_text = _json(tmp_path, capsys, *common, "--data", str(tmp_path / "docs.jsonl.gz"))
    from_shards = _json(tmp_path, capsys, *common, "--data", str(tmp_path / "shards" / "train"))
    for key in ("nll_per_token", "tokens", "bytes", "bits_per_byte"):
        assert from_text[key] == from_shards[key], key
    # byte-level BPE: the bytes are the UTF-8 bytes of the text the scored windows cover
    tok = load_tokenizer(tok_dir)
    stream = np.concatenate([np.asarray(tok.encode(d) + [tok.eos_id]) for d in docs])[: from_text["tokens"]]
    assert from_text["bytes"] == len(tok.decode(stream).encode("utf-8"))


def _train(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "armd_scale.cli", "train", *RUNS["text_bpe"], "train.steps=1"]
    cmd += [f"run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_training_refuses_a_model_smaller_than_its_tokenizer_and_a_foreign_tokenizer(
    text_bpe_run, text_wordpiece_run, tmp_path
):
    train, _, tok_dir = text_bpe_run.data_urls()
    _, _, other_tok = text_wordpiece_run.data_urls()
    small = _train(tmp_path, f"data.train={train}", f"data.tokenizer={tok_dir}", "model.vocab_size=256")
    assert small.returncode != 0
    assert f"the tokenizer of {train} has {HF_VOCAB} ids but model.vocab_size=256" in small.stderr
    assert f"set model.vocab_size >= {HF_VOCAB} (e.g. {HF_PADDED_VOCAB}, a multiple of 64)" in small.stderr
    foreign = _train(tmp_path, f"data.train={train}", f"data.tokenizer={other_tok}")
    assert foreign.returncode != 0 and f"data.tokenizer='{other_tok}' has sha256" in foreign.stderr
    assert "point data.tokenizer at the tokenizer the shards were built with" in foreign.stderr


def test_evaluation_refuses_a_tokenizer_that_changed_since_training(text_bpe_run, text_wordpiece_run, tmp_path, capsys):
    export = tmp_path / "export"
    assert main(["convert", "--checkpoint", str(text_bpe_run.dir), "--to", "export", "--out", str(export)]) == 0
    _, _, other = text_wordpiece_run.data_urls()
    for name in ("tokenizer.json", "armd_tokenizer.json"):  # another tokenizer of the same size in its place
        (export / "tokenizer" / name).write_bytes((Path(other) / name).read_bytes())
    from armd_scale.checkpoints.integrity import CorruptCheckpointError
    from armd_scale.data.errors import DataError
    from armd_scale.eval.text import codec_for

    # the export's checksums cover its tokenizer: the swap is caught first, naming the file
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(export / "tokenizer"))):
        load_pretrained(export)
    # without them (an export whose list leaves the tokenizer out) the identity check still refuses
    config_path = export / "config.json"
    config = json.loads(config_path.read_text())
    config["files"] = {k: v for k, v in config["files"].items() if not k.startswith("tokenizer/")}
    config_path.write_text(json.dumps(config))
    with pytest.raises(DataError, match="changed since training; restore the one it was trained with"):
        codec_for(load_pretrained(export))
    # armd generate decodes through the same check: it refuses instead of printing another vocabulary's text
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(export), "--length", "8"]) == 1
    assert "changed since training" in capsys.readouterr().err
