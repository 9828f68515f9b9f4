"""The lm-evaluation-harness adapter (`armd` lm_eval model) on local tasks, offline.

Every log-likelihood lm_eval records is recomputed here by calling the model directly; the
multiple-choice accuracy is recomputed from those numbers; rolling perplexity from lm-eval's
window rule written out by hand; the mdlm ELBO against its exact value.
"""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch

from armd_scale.cli import main
from armd_scale.generate import sample_mdlm, sample_sbp
from armd_scale.pretrained import load_pretrained

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra armd_scale[harness]")

MC = [  # an obvious answer: a few common tokens against a long run of rare ones
    {"question": "The module", "choices": [" is", " zqxjvvkqwptzqxjvvkqwpt"], "label": 0},
    {"question": "Return the", "choices": [" qqqzzzxxxjjjvvvkkkwwwppp", " list"], "label": 1},
    {"question": "class", "choices": [" of", " zzzzqqqqjjjjxxxx"], "label": 0},
]
DOCS = ["The module provides functions for the list of objects.", "A class of the object " * 12]


def _write_tasks(tmp_path):
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (tmp_path / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    (tmp_path / "gen.jsonl").write_text(json.dumps({"text": "The module", "target": "x"}) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy_mc.yaml").write_text(
        "task: toy_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: {tmp_path / 'mc.jsonl'}}}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
    )
    (tasks / "toy_ppl.yaml").write_text(
        "task: toy_ppl\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {tmp_path / 'ppl.jsonl'}}}\n"
        "output_type: loglikelihood_rolling\ntest_split: train\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
    )
    return tasks


@torch.no_grad()
def _logp(model, ids):
    """log p(ids[k] | ids[<k]) for every k, from one l2r forward pass (float64)."""
    x = torch.tensor([ids])
    pos = torch.arange(len(ids)).expand(1, -1)
    return torch.log_softmax(model(x, pos, pos).double(), dim=-1)[0].gather(-1, x[0, :, None])[:, 0]


def _encode(tok, context, continuation):
    """lm-eval's causal encoding: trailing context spaces move to the continuation; the continuation's
    ids are those of context + continuation after the context's. Returns (ids, first continuation index)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return tok.encode(context + continuation), len(tok.encode(context))


def _continuation_ll(model, tok, context, continuation):
    ids, start = _encode(tok, context, continuation)
    return float(_logp(model, ids)[start:].sum())


def _rolling_ll(model, tok, text, max_len):
    """lm-eval's disjoint windows for a model whose input holds context + predicted tokens (<= max_len):
    chunks of max_len - 1 predicted tokens, the first after the separator, each later one with the
    tokens before it as context up to max_len in all."""
    ids = tok.encode(text)
    step = max_len - 1
    done = min(step, len(ids))
    total = float(_logp(model, [tok.eos_id] + ids[:done])[1:].sum())
    while done < len(ids):
        end = min(done + step, len(ids))
        window = ids[max(0, end - max_len) : end]
        total += float(_logp(model, window)[len(window) - (end - done) :].sum())
        done = end
    return total


def test_local_tasks_through_lm_eval(text_run, tmp_path, capsys):
    tasks = _write_tasks(tmp_path)
    out = tmp_path / "results.json"
    code = main(
        ["eval", "harness", "--checkpoint", str(text_run.dir), "--tasks", "toy_mc,toy_ppl", "--include-path",
         str(tasks), "--batch-size", "2", "--log-samples", "--json", str(out)]
    )  # fmt: skip
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "toy_mc" in printed and "acc" in printed
    doc = json.loads(out.read_text())
    pre = load_pretrained(text_run.dir)
    tok = pre.tokenizer()
    assert doc["config"]["armd_likelihood"] == "exact" and doc["config"]["armd_arch"] == "armd"

    # every recorded log-likelihood is the model's own, and acc follows from them
    correct = []
    for sample in doc["samples"]["toy_mc"]:
        lls = []
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            ll, greedy = resp[0]
            assert ll == pytest.approx(_continuation_ll(pre.model, tok, context, continuation), abs=1e-4)
            lls.append(ll)
        correct.append(max(range(len(lls)), key=lls.__getitem__) == sample["doc"]["label"])
    assert doc["results"]["toy_mc"]["acc,none"] == sum(correct) / len(correct) == 1.0

    # rolling windows: every token predicted once; word perplexity over the documents' words
    lls = [_rolling_ll(pre.model, tok, text, pre.config.model.max_seq_len) for text in DOCS]
    assert len(tok.encode(DOCS[1])) > 2 * pre.config.model.max_seq_len  # several windows
    for sample, ll in zip(doc["samples"]["toy_ppl"], lls, strict=True):
        assert sample["resps"][0][0] == pytest.approx(ll, abs=1e-4)
    words = sum(len(re.split(r"\s+", t)) for t in DOCS)  # lm-eval's count (a trailing space adds one)
    assert doc["results"]["toy_ppl"]["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-6)


def _instances(args_list, request_type):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=a, idx=i) for i, a in enumerate(args_list)]


@pytest.mark.parametrize("run_name", ["text_run", "text_ar_run"])
def test_loglikelihood_is_exact_for_l2r_models(run_name, request):
    from armd_scale.eval.harness import ARMDHarnessLM

    run = request.getfixturevalue(run_name)
    lm = ARMDHarnessLM(checkpoint=str(run.dir), device="cpu", batch_size=3)
    pre = load_pretrained(run.dir)
    tok = pre.tokenizer()
    long_context = "the list of the module " * 20  # longer than the model: cut from the left
    reqs = [("The module", " is a list"), ("Return the value", " of"), (long_context, " object"), ("", "The class")]
    got = lm.loglikelihood(_instances(reqs, "loglikelihood"))
    for (context, continuation), (ll, greedy) in zip(reqs, got, strict=True):
        if not context:
            ids = [tok.eos_id] + tok.encode(continuation)  # lm-eval's prefix token for an empty context
            lp, start = _logp(pre.model, ids), 1
        else:
            whole, start = _encode(tok, context, continuation)
            keep = whole[-pre.config.model.max_seq_len :]
            start -= len(whole) - len(keep)
            lp, ids = _logp(pre.model, keep), keep
        assert ll == pytest.approx(float(lp[start:].sum()), abs=1e-4)
        x = torch.tensor([ids])
        pos = torch.arange(len(ids)).expand(1, -1)
        with torch.no_grad():
            argmax = pre.model(x, pos, pos)[0].argmax(-1)
        assert greedy == bool((argmax[start:] == x[0, start:]).all())


@torch.no_grad()
def test_mdlm_loglikelihood_is_its_elbo(text_mdlm_run):
    """One continuation token: exact (one pass, the token masked). Three: the Monte-Carlo estimate
    converges to the bound computed exactly by enumerating every masked subset."""
    from armd_scale.eval.harness import ARMDHarnessLM

    lm = ARMDHarnessLM(checkpoint=str(text_mdlm_run.dir), device="cpu", batch_size=64, mc_samples=2048)
    model = lm.model
    tok = lm.pre.tokenizer()
    context = tok.encode("The module returns")
    one = tok.encode(" a")[:1]
    x = torch.tensor([context + one])
    noisy = x.clone()
    noisy[0, -1] = model.mask_id
    exact_one = float(torch.log_softmax(model(noisy).double(), -1)[0, -1, one[0]])
    (ll, greedy), = lm._loglikelihood_tokens([(None, context, one)])  # fmt: skip
    assert ll == pytest.approx(exact_one, abs=1e-5) and greedy is False

    three = tok.encode(" the list of")[:3]
    assert len(three) == 3
    seq = torch.tensor(context + three)
    n, positions = 3, range(len(context), len(context) + 3)
    exact = 0.0  # E_l E_S [(n / l) sum_{i in S} log p(x_i | x with S masked)], l ~ U{1..n}, S uniform of size l
    for size in range(1, n + 1):
        subsets = list(itertools.combinations(positions, size))
        for subset in subsets:
            noisy = seq.clone()
            noisy[list(subset)] = model.mask_id
            logp = torch.log_softmax(model(noisy[None]).double(), -1)[0]
            term = sum(float(logp[i, seq[i]]) for i in subset)
            exact += (1 / n) * (1 / len(subsets)) * (n / size) * term
    (estimate, _), = lm._loglikelihood_tokens([(None, context, three)])  # fmt: skip
    assert estimate <= 0 and estimate == pytest.approx(exact, rel=0.005)  # measured within 2e-4 (seeds 0-2)
    assert lm.get_model_info()["armd_likelihood"] == "elbo" and lm.get_model_info()["armd_mc_samples"] == 2048


def test_generate_until_with_streams_and_stop_sequences(text_run):
    from armd_scale.eval.harness import ARMDHarnessLM

    lm = ARMDHarnessLM(checkpoint=str(text_run.dir), device="cpu", streams=4, batch_size=2)
    pre = load_pretrained(text_run.dir)
    tok = pre.tokenizer()
    prompt = tok.encode("The module")
    greedy = sample_sbp(pre.model, len(prompt) + 8, 4, prompt=torch.tensor(prompt), temperature=0.0)
    text = tok.decode(greedy.tokens[0, len(prompt) :].tolist())
    assert len(text) >= 2
    stop = text[len(text) // 2 :]
    reqs = [("The module", {"until": [stop], "max_gen_toks": 8}), ("The module", {"until": [], "max_gen_toks": 8})]
    out = lm.generate_until(_instances(reqs, "generate_until"))
    assert out == [text[: text.index(stop)], text]  # cut at the first stop string; batched requests agree


def test_the_model_is_registered_as_armd():
    from lm_eval.api.registry import get_model

    import armd_scale.eval.harness as harness

    assert get_model("armd") is harness.ARMDHarnessLM


def test_sbp_needs_arch_armd(text_ar_run):
    from armd_scale.eval.harness import ARMDHarnessLM

    with pytest.raises(ValueError, match="SBP decoding needs arch armd"):
        ARMDHarnessLM(checkpoint=str(text_ar_run.dir), device="cpu", streams=2)


def test_mdlm_generates_with_its_ancestral_sampler(text_mdlm_run):
    from armd_scale.eval.harness import ARMDHarnessLM
    from armd_scale.rng import seeded

    lm = ARMDHarnessLM(checkpoint=str(text_mdlm_run.dir), device="cpu", steps=4, seed=7)
    tok = lm.pre.tokenizer()
    prompt = tok.encode("The module")
    init = torch.full((1, len(prompt) + 6), lm.model.mask_id)
    init[0, : len(prompt)] = torch.tensor(prompt)
    direct = sample_mdlm(lm.model, 1, len(prompt) + 6, 4, generator=seeded(7), temperature=0.0, init=init)
    assert bool((direct.tokens != lm.model.mask_id).all())  # every position was generated
    new = direct.tokens[0, len(prompt) :].tolist()
    if tok.eos_id in new:
        new = new[: new.index(tok.eos_id)]
    (text,) = lm.generate_until(_instances([("The module", {"until": [], "max_gen_toks": 6})], "generate_until"))
    assert text == tok.decode(new)
