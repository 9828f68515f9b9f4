"""Likelihoods: the Markov entropy-rate check, random orders, diffusion trajectories, bits per byte,
text input vs shards, and errors that name what is wrong."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from armd_scale.cli import main
from armd_scale.data.errors import DataError, DataMismatchError
from armd_scale.data.prepare.corpora import SYNTHETIC_TOKEN_OFFSET, parse_synthetic
from armd_scale.data.prepare.shards import build_shards
from armd_scale.eval import validate
from armd_scale.eval.likelihood import draw_orders, evaluate_likelihood, score_orders
from armd_scale.eval.ppl import eval_ppl
from armd_scale.eval.text import bits_per_byte, codec_for, count_bytes
from armd_scale.eval.windows import open_eval_data
from armd_scale.pretrained import load_pretrained

from .runs import MARKOV, SEQ_LEN

# Tolerance of the Markov check, in nats/token. Measured: the model is 0.002-0.009 above the true
# chain's NLL on the same 8192 validation tokens after 200-400 steps; the validation sample itself
# sits 0.012 below the chain's expected sequence entropy and that is 0.014 above the entropy rate (the
# first token of each window has the stationary entropy, 1.96 nats). 0.05 leaves room for all three
# while an untrained model (ln 12 = 2.48) or a model of the wrong order (unigram entropy) fails it.
ENTROPY_TOL = 0.05
GAP_TOL = 0.03


def _ppl(tmp_path, *args: str) -> dict:
    out = tmp_path / f"ppl-{len(list(tmp_path.iterdir()))}.json"
    assert main(["eval", "ppl", "--no-progress", *args, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    validate(doc, "ppl")
    return doc


def _true_markov_nll(val_url: str) -> float:
    """NLL per token of the generating chain itself on the same windows (stationary start)."""
    source, _ = parse_synthetic(MARKOV)
    from armd_scale.data.tokenizers.ids import IdTokenizer

    data = open_eval_data([val_url], IdTokenizer.of(12), seq_len=SEQ_LEN)
    x = np.concatenate(list(data.batches(64))) - SYNTHETIC_TOKEN_OFFSET
    nll = -np.log(source.stationary()[x[:, 0]]).sum() - np.log(source.transitions[x[:, :-1], x[:, 1:]]).sum()
    return float(nll / x.size)


def test_markov_model_reaches_the_entropy_rate(markov_run, tmp_path):
    _, val_url, _ = markov_run.data_urls()
    doc = _ppl(tmp_path, "--checkpoint", str(markov_run.dir), "--data", val_url, "--order", "l2r")
    source, _ = parse_synthetic(MARKOV)
    h = source.entropy_rate()
    truth = _true_markov_nll(val_url)
    print(
        f"markov: model l2r NLL {doc['nll_per_token']:.4f}, true chain on the same windows {truth:.4f}, "
        f"entropy rate {h:.4f}, sequence entropy/token {source.sequence_entropy(SEQ_LEN) / SEQ_LEN:.4f}"
    )
    assert doc["kind"] == "l2r" and doc["likelihood"] == "exact" and doc["tokens"] == 256 * SEQ_LEN
    assert doc["step"] == 300 and doc["bits_per_byte"] is None  # ids only: no bytes
    assert abs(doc["nll_per_token"] - h) < ENTROPY_TOL
    assert -0.01 < doc["nll_per_token"] - truth < GAP_TOL
    assert math.isclose(doc["ppl"], math.exp(doc["nll_per_token"]))


def test_random_order_k1_equals_a_direct_computation(markov_run):
    pre = load_pretrained(markov_run.dir)
    _, val_url, _ = markov_run.data_urls()
    data = open_eval_data([val_url], codec_for(pre), seq_len=SEQ_LEN, max_tokens=8 * SEQ_LEN)
    result = evaluate_likelihood(
        pre.model, data.batches(3), kind="random", seq_len=SEQ_LEN, orders=1, seed=5, progress=False
    )
    ((order, _),) = draw_orders("random", 1, SEQ_LEN, seed=5)
    assert not torch.equal(order, torch.arange(SEQ_LEN))
    x = torch.as_tensor(np.concatenate(list(data.batches(8))))
    total = 0.0
    with torch.no_grad():
        for row in x:  # one window at a time, the textbook way: sum_k -log p(x_sigma(k) | x_sigma(<k))
            logits = pre.model(row[None], order[None], torch.arange(SEQ_LEN)[None])[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            total -= sum(float(logp[k, row[order[k]]]) for k in range(SEQ_LEN))
    assert result.likelihood == "exact" and result.tokens == 8 * SEQ_LEN
    assert result.nll_per_token == pytest.approx(total / (8 * SEQ_LEN), rel=1e-5)
    l2r = evaluate_likelihood(pre.model, data.batches(8), kind="l2r", seq_len=SEQ_LEN, progress=False)
    assert abs(result.nll_per_token - l2r.nll_per_token) > 1e-3  # another order is another number


def test_diffusion_with_single_token_blocks_is_the_random_order_nll(markov_run):
    """T = N steps: a trajectory whose N masking steps are all distinct reveals one token per step,
    so its ELBO term is exactly the random-order NLL of that permutation. With a tie, tokens of one
    block no longer see each other and the two numbers differ."""
    pre = load_pretrained(markov_run.dir)
    n = 4
    windows = torch.randint(SYNTHETIC_TOKEN_OFFSET, 12, (6, n), generator=torch.Generator().manual_seed(0)).numpy()
    single = multi = None
    for seed in range(200):
        ((order, block),) = draw_orders("diffusion", 1, n, seed=seed, steps=n)
        if int(block.max()) == n - 1:
            single = single if single is not None else (seed, order)
        elif multi is None:
            multi = (seed, order)
    assert single is not None and multi is not None
    for (seed, order), equal in ((single, True), (multi, False)):
        elbo = evaluate_likelihood(
            pre.model, [windows], kind="diffusion", seq_len=n, orders=1, steps=n, seed=seed, progress=False
        )
        perm, _, _, _ = score_orders(pre.model, [windows], [(order, torch.arange(n))], progress=False)
        assert elbo.likelihood == "elbo"
        assert bool(elbo.order_nll[0] == pytest.approx(float(perm[0]), rel=1e-6)) is equal


def test_bits_per_byte_by_hand(text_run):
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    assert bits_per_byte(1.0, None) is None and bits_per_byte(1.0, 0) is None
    codec = codec_for(load_pretrained(text_run.dir))
    ids = codec.encode("ab\ncd") + [codec.eos_id]
    assert count_bytes(codec, np.array(ids)) == 5  # a b \n c d; EOS decodes to nothing
    assert count_bytes(codec, np.array([[2, 0, 3]])) == 0  # bos, pad, eos


def test_uniform_model_bits_per_byte(text_run, tmp_path):
    """A model with constant logits has NLL ln V per token, so bits/byte = tokens * log2 V / bytes,
    where bytes are counted here by decoding each window, independently of the per-token table."""
    codec = codec_for(load_pretrained(text_run.dir))
    text = tmp_path / "t.txt"
    text.write_text("def f(x):\n    return x + 1\n\n" * 20)

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, tokens, order, block):
            return torch.zeros(*tokens.shape, 128) + 0 * self.w

    data = open_eval_data([str(text)], codec, seq_len=16)
    result = evaluate_likelihood(
        Uniform(), data.batches(4), kind="l2r", seq_len=16, byte_table=codec.byte_lengths(), progress=False
    )
    windows = np.concatenate(list(data.batches(64)))
    decoded_bytes = sum(len(codec.decode(w).encode("utf-8")) for w in windows)
    assert result.num_bytes == decoded_bytes > 0
    assert result.nll_per_token == pytest.approx(math.log(128))
    assert result.bits_per_byte == pytest.approx(windows.size * 7 / decoded_bytes)


def test_text_input_scores_like_shards_built_from_it(text_run, tmp_path):
    _, _, tok_dir = text_run.data_urls()
    text = tmp_path / "doc.txt"
    text.write_text("Evaluation reads raw text.\nIt packs documents like armd shards does.\n" * 12)
    build_shards([str(text)], str(tmp_path / "shards"), tok_dir, seq_len=SEQ_LEN, samples_per_shard=3)
    ckpt = str(text_run.dir)
    from_text = _ppl(tmp_path, "--checkpoint", ckpt, "--data", str(text), "--batch-size", "2")
    from_shards = _ppl(tmp_path, "--checkpoint", ckpt, "--data", str(tmp_path / "shards" / "train"))
    assert from_text["data"][0]["kind"] == "text" and from_shards["data"][0]["kind"] == "shards"
    for key in ("tokens", "bytes", "windows"):
        assert from_text[key] == from_shards[key]
    assert from_text["nll_per_token"] == pytest.approx(from_shards["nll_per_token"], rel=1e-6)
    assert from_text["bits_per_byte"] > 0
    capped = _ppl(tmp_path, "--checkpoint", ckpt, "--data", str(text), "--max-tokens", str(2 * SEQ_LEN + 5))
    assert capped["tokens"] == 2 * SEQ_LEN


@pytest.mark.parametrize(
    "kind, extra", [("l2r", []), ("random", ["--orders", "3"]), ("diffusion", ["--steps", "8", "--orders", "2"])]
)
def test_ppl_json_follows_the_schema(text_run, tmp_path, kind, extra):
    _, val_url, _ = text_run.data_urls()
    doc = _ppl(
        tmp_path,
        "--checkpoint",
        str(text_run.dir),
        "--data",
        val_url,
        "--order",
        kind,
        "--max-tokens",
        str(6 * SEQ_LEN),
        "--float64",
        *extra,
    )
    assert doc["kind"] == kind and doc["dtype"] == "float64" and doc["bits_per_byte"] > 0
    if kind != "l2r":
        per = doc["nll_per_order"]
        assert len(per) == (3 if kind == "random" else 2) and doc["nll_min"] <= doc["nll_per_token"] <= doc["nll_max"]
        assert doc["nll_std"] == pytest.approx(float(np.std(per, ddof=1)))
        assert doc["nll_min"] < doc["nll_max"]  # different orders, different likelihoods
    if kind == "diffusion":
        assert doc["likelihood"] == "elbo" and doc["steps"] == 8 and doc["trajectories"] == 2


def test_errors_name_what_is_wrong(markov_run, text_run, tmp_path):
    _, markov_val, _ = markov_run.data_urls()
    with pytest.raises(DataMismatchError, match="tokenizer"):
        eval_ppl(str(text_run.dir), [markov_val], progress=False)
    with pytest.raises(DataError, match="synthetic"):
        eval_ppl(str(markov_run.dir), ["builtin:pydoc"], progress=False)
    with pytest.raises(DataError, match="pass one of them"):
        eval_ppl(str(markov_run.dir), [str(markov_val).rsplit("/", 1)[0]], progress=False)
    with pytest.raises(ValueError, match="--steps"):
        eval_ppl(str(markov_run.dir), [markov_val], kind="diffusion", progress=False)
    assert main(["eval", "ppl", "--checkpoint", str(tmp_path), "--data", markov_val]) == 1
