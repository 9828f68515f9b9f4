"""`armd generate`: printed text, the --json schema, forward calls, prompts, infilling, id-only runs."""

from __future__ import annotations

import json

import pytest

from armd_scale.cli import main
from armd_scale.eval import validate
from armd_scale.eval.text import codec_for
from armd_scale.pretrained import load_pretrained

N = 16


def _generate(tmp_path, capsys, *args: str) -> tuple[dict, str]:
    out = tmp_path / f"gen-{len(list(tmp_path.iterdir()))}.json"
    assert main(["generate", *args, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    validate(doc, "generate")
    return doc, capsys.readouterr().out


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_unconditional_json_schema_and_forward_calls(text_run, tmp_path, capsys, streams):
    doc, printed = _generate(
        tmp_path,
        capsys,
        "--checkpoint",
        str(text_run.dir),
        "--length",
        str(N),
        "--streams",
        str(streams),
        "--num-samples",
        "3",
        "--seed",
        "1",
    )
    assert doc["streams"] == streams and doc["length"] == N and doc["prompt_tokens"] == 0
    assert doc["forward_calls"] == streams + N // streams - 1
    codec = codec_for(load_pretrained(text_run.dir))
    assert len(doc["samples"]) == 3
    for i, sample in enumerate(doc["samples"]):
        assert len(sample["tokens"]) == N and sample["text"] == codec.decode(sample["tokens"])
        assert f"=== sample {i} ===" in printed
    assert doc["samples"][0]["text"] in printed


def test_one_stream_is_reproducible_and_seeded(text_run, tmp_path, capsys):
    args = ["--checkpoint", str(text_run.dir), "--length", str(N), "--num-samples", "2", "--float64"]
    a, _ = _generate(tmp_path, capsys, *args, "--seed", "3")
    b, _ = _generate(tmp_path, capsys, *args, "--seed", "3")
    c, _ = _generate(tmp_path, capsys, *args, "--seed", "4")
    assert a["samples"] == b["samples"] != c["samples"] and a["sample_dtype"] == "float64"


def test_prompt_is_kept_and_costs_one_call_less_per_token(text_run, tmp_path, capsys):
    codec = codec_for(load_pretrained(text_run.dir))
    prompt = "return x"
    ids = codec.encode(prompt)
    length = len(ids) + 12
    doc, _ = _generate(
        tmp_path,
        capsys,
        "--checkpoint",
        str(text_run.dir),
        "--prompt",
        prompt,
        "--length",
        str(length),
        "--streams",
        "4",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
    )
    assert doc["prompt_tokens"] == len(ids) and doc["forward_calls"] == 4 + 12 // 4 - 1
    assert doc["samples"][0]["tokens"][: len(ids)] == ids and doc["samples"][0]["text"].startswith(prompt)


def test_infill_keeps_the_known_tokens(markov_run, tmp_path, capsys):
    doc, printed = _generate(
        tmp_path,
        capsys,
        "--checkpoint",
        str(markov_run.dir),
        "--infill",
        "5 6 [MASK:4] 7 [MASK] 8 9",
        "--streams",
        "1",
        "--num-samples",
        "2",
    )
    assert doc["length"] == 10 and doc["known_tokens"] == 5 and doc["forward_calls"] == 5
    for sample in doc["samples"]:
        t = sample["tokens"]
        assert t[:2] == [5, 6] and t[6] == 7 and t[8:] == [8, 9]
        assert all(0 <= v < 12 for v in t) and sample["text"] == " ".join(map(str, t))
    assert doc["samples"][0]["text"] in printed


def test_bad_requests_fail_with_a_message(text_run, tmp_path, capsys):
    ckpt = str(text_run.dir)
    assert main(["generate", "--checkpoint", ckpt, "--length", "10", "--streams", "4"]) == 1
    assert "multiple of streams=4" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", ckpt, "--length", "999"]) == 1
    assert "max_seq_len" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", ckpt, "--infill", "no spans here"]) == 1
    assert "[MASK]" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path)]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_mdlm_infill_through_the_cli(text_mdlm_run, tmp_path, capsys):
    """`armd generate --infill` on the masked-diffusion baseline: its ancestral sampler starts from the
    known tokens with the mask id at the spans, keeps the known tokens, and fills every span."""
    tok = load_pretrained(text_mdlm_run.dir).tokenizer()
    left, right = tok.encode("def main"), tok.encode(" return x")
    doc, printed = _generate(
        tmp_path,
        capsys,
        "--checkpoint",
        str(text_mdlm_run.dir),
        "--infill",
        "def main[MASK:5] return x",
        "--steps",
        "4",
        "--num-samples",
        "2",
    )
    length = len(left) + 5 + len(right)
    assert doc["length"] == length and doc["known_tokens"] == len(left) + len(right)
    assert 1 <= doc["forward_calls"] <= 4  # at most one denoiser call per reverse step
    vocab = load_pretrained(text_mdlm_run.dir).config.model.vocab_size
    for sample in doc["samples"]:
        t = sample["tokens"]
        assert t[: len(left)] == left and t[len(left) + 5 :] == right
        assert all(0 <= v < vocab for v in t)  # every span position revealed, never the mask id
    assert doc["samples"][0]["text"] in printed
