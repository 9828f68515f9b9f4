"""Transformers judges: MDLM's generative-perplexity protocol, and judges named by hub name.

A real (tiny, randomly initialised) GPT-2 with the byte-level BPE tokenizer of the `text_bpe` run
stands in for gpt2-large; the reference is MDLM's `compute_generative_perplexity` written out in the
test with transformers calls, as MDLM runs it (transformers 4.38: `batch_decode` cleans up spaces).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from armd_scale.cli import main
from armd_scale.eval import validate
from armd_scale.eval.genppl import TransformersJudge, load_judge
from armd_scale.eval.text import codec_for
from armd_scale.pretrained import load_pretrained

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_gpt2(text_bpe_run, tmp_path_factory):
    """A 1-layer GPT-2 over the run's 400-id byte-level BPE, saved as a transformers folder."""
    pre = load_pretrained(text_bpe_run.dir)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(pre.tokenizer_dir) + "/tokenizer.json", eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    tok.save_pretrained(out)
    torch.manual_seed(0)
    eos = tok.eos_token_id
    cfg = transformers.GPT2Config(
        vocab_size=400, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=eos, eos_token_id=eos
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


def _samples(text_bpe_run) -> tuple[np.ndarray, object]:
    """Three samples of 24 ids: a separator in the middle, none, and two."""
    from armd_scale.generate import sample_sbp

    pre = load_pretrained(text_bpe_run.dir)
    codec = codec_for(pre)
    rows = sample_sbp(pre.model, 24, 1, batch_size=3, seed=1).tokens.numpy().copy()
    rows[rows == codec.eos_id] = 5
    rows[0, 10] = codec.eos_id
    rows[2, 4] = rows[2, 15] = codec.eos_id
    return rows, codec


@torch.no_grad()
def _mdlm_reference(folder, tokenizer_file, samples, max_length, batch_size=8):
    """kuleshov-group/mdlm diffusion.py: batch_decode, eval_retokenize, compute_generative_perplexity."""
    import torch.nn.functional as F

    gen_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file,
        eos_token="<|endoftext|>",
        clean_up_tokenization_spaces=True,  # transformers 4.38's default, which MDLM pins
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True,
    )
    text_samples = gen_tok.batch_decode(samples.tolist())
    eval_tok = transformers.AutoTokenizer.from_pretrained(folder)
    eval_tok.pad_token = eval_tok.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    enc = eval_tok(text_samples, return_tensors="pt", return_token_type_ids=False, return_attention_mask=True,
                   truncation=True, padding=True, max_length=max_length)  # fmt: skip
    ids, mask = enc["input_ids"], enc["attention_mask"]
    total = count = 0.0
    for i in range(0, ids.shape[0], batch_size):
        chunk, attn = ids[i : i + batch_size], mask[i : i + batch_size]
        logits = model(chunk, attention_mask=attn)[0].transpose(-1, -2)
        nlls = F.cross_entropy(logits[..., :-1], chunk[..., 1:], reduction="none")
        first_eos = (chunk == eval_tok.eos_token_id).cumsum(-1) == 1
        token_mask = chunk != eval_tok.eos_token_id
        weight = (first_eos[..., 1:] + token_mask[..., 1:]).double()
        total += float((nlls.double() * weight).sum())
        count += float(weight.sum())
    return total, count, text_samples


@pytest.mark.parametrize("max_length", [24, 9])
def test_transformers_judge_follows_mdlm(text_bpe_run, tiny_gpt2, max_length):
    samples, codec = _samples(text_bpe_run)
    judge = TransformersJudge(tiny_gpt2, max_length=max_length, batch_size=2)
    score = judge.score(samples, codec)
    tokenizer_file = str(tiny_gpt2 / "tokenizer.json")
    total, count, texts = _mdlm_reference(tiny_gpt2, tokenizer_file, samples, max_length, batch_size=2)
    assert judge.texts(samples, codec) == texts  # separators written as <|endoftext|>, spaces cleaned as MDLM's
    assert "<|endoftext|>" in texts[0] and "<|endoftext|>" not in texts[1]
    assert score.tokens == count and score.nll == pytest.approx(total, rel=1e-9)
    full = [len(judge.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert score.truncated == sum(n > max_length for n in full) and (max_length > 10 or score.truncated == 3)
    assert judge.describe() == {
        "kind": "transformers",
        "path": str(tiny_gpt2),
        "tokenizer": "retokenized",
        "dtype": "float32",
        "protocol": "mdlm",
        "max_length": max_length,
        "batch_size": 2,
    }


def test_a_judge_by_hub_name_comes_from_the_local_cache(text_bpe_run, tiny_gpt2, tmp_path, monkeypatch, capsys):
    """`--judge org/name` resolves in the Hugging Face cache (its on-disk layout built here), never online."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--local--tiny-gpt2" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_gpt2, snapshot)
    (cache / "models--local--tiny-gpt2" / "refs").mkdir()
    (cache / "models--local--tiny-gpt2" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "sweep"
    args = ["eval", "sbp", "--checkpoint", str(text_bpe_run.dir), "--judge", "local/tiny-gpt2", "--streams", "1,2",
            "--length", "16", "--num-samples", "3", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    validate(doc, "sbp")
    assert doc["judge"]["kind"] == "transformers" and doc["judge"]["name"] == "local/tiny-gpt2"
    assert doc["judge"]["path"] == str(snapshot) and doc["judge"]["dtype"] == "float32"
    codec = codec_for(load_pretrained(text_bpe_run.dir))
    judge = TransformersJudge(snapshot, max_length=16)
    for row in doc["results"]:
        samples = np.array([s["tokens"] for s in row["samples"]])
        assert row["gen_ppl"] == pytest.approx(judge.score(samples, codec).ppl, rel=1e-9)

    with pytest.raises(FileNotFoundError, match=r"hf download local/absent-model"):
        load_judge("local/absent-model", generator_path=str(text_bpe_run.dir))
