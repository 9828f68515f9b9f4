"""Any-order validation (`train.eval_orders`) and the samples logged at every validation.

One in-process tiny run with `train.eval_orders=[l2r,random,diffusion:4]`, validated at steps 3 and 6 and
sampled then: its metrics carry the three likelihoods under their names and labels, its random-order number is
recomputed here from the saved weights with plain model calls, the orders of one validation sample are the
same at both evaluations, samples.jsonl holds the expected records, and wandb (off) was never imported.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.layout import complete_tags
from armd_scale.config import load_config
from armd_scale.train import validation
from armd_scale.train.validation import ValLikelihood, check_eval_orders, val_likelihoods

from .conftest import TINY, run_train, train_in_process


def _cfg(run_dir: Path, cache: Path, *overrides: str):
    return load_config(overrides=[*TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def any_order_run(tmp_path_factory, data_cache):
    """The run, the validation batches each evaluation scored (tokens, first index) and the orders it drew."""
    run_dir = tmp_path_factory.mktemp("eval_orders")
    cfg = _cfg(
        run_dir,
        data_cache,
        "train.eval_every=3",
        "train.eval_batches=2",
        "train.eval_orders=[l2r,random,diffusion:4]",
        "train.eval_samples=2",
        "train.eval_sample_tokens=16",
        "train.sample_at_end=0",
        "train.order.kind=random",
    )
    batches: list[tuple[torch.Tensor, int]] = []
    drawn: dict[tuple[str, int], list[torch.Tensor]] = {}
    real_nll, real_order = validation._order_nll, ValLikelihood.order

    def recording_nll(engine, tokens, kind, first_index, seed, extra):
        if kind.kind == "random":
            batches.append((tokens.clone(), first_index))
        return real_nll(engine, tokens, kind, first_index, seed, extra)

    def recording_order(self, index, seq_len, seed):
        order, block = real_order(self, index, seq_len, seed)
        drawn.setdefault((self.name, index), []).append(order.clone())
        return order, block

    mp = pytest.MonkeyPatch()
    # log.wandb=off must never import wandb: any import of it fails the run (None in sys.modules), whatever
    # earlier tests of the session imported
    imported = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "wandb" or k.startswith("wandb.")}
    mp.setitem(sys.modules, "wandb", None)  # type: ignore[arg-type]
    mp.setattr(validation, "_order_nll", recording_nll)
    mp.setattr(ValLikelihood, "order", recording_order)
    saved_env = dict(os.environ)  # in-process train() sets launcher variables (conftest.clean_process_env)
    try:
        assert train_in_process(cfg) == 0
    finally:
        mp.undo()
        sys.modules.update(imported)
        os.environ.clear()
        os.environ.update(saved_env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return cfg, run_dir, records, batches, drawn


def test_every_likelihood_is_logged_under_its_name_and_label(any_order_run):
    _, _, records, _, _ = any_order_run
    val = {r["step"]: r for r in records if "val/nll" in r}
    assert sorted(val) == [3, 6]
    for r in val.values():
        assert {"val/nll", "val/ppl", "val/nll_random", "val/ppl_random", "val/elbo_diffusion4"} <= set(r)
        assert "val/ppl_bound_diffusion4" in r and "val/nll_diffusion4" not in r  # a bound is never called an NLL
        assert r["val/ppl_random"] == pytest.approx(math.exp(r["val/nll_random"]))
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("val/nll", "val/nll_random", "val/elbo_diffusion4"))


def test_the_console_line_says_exact_or_bound():
    kinds = [ValLikelihood("random"), ValLikelihood("diffusion", 4)]
    assert [k.likelihood for k in kinds] == ["exact", "elbo"]
    assert "(exact)" in kinds[0].message(4.8) and "(a bound)" in kinds[1].message(5.0)


def test_the_random_order_number_equals_an_independent_computation(any_order_run):
    """The final validation (step 6, the weights of the step-6 checkpoint) recomputed with plain model calls:
    the same batches, each sample's order drawn from its own validation position."""
    from armd_scale.checkpoints.pretrained import load_pretrained
    from armd_scale.model.generation_orders import likelihood_order
    from armd_scale.train.step_orders import step_generator

    cfg, run_dir, records, batches, _ = any_order_run
    tag = complete_tags(run_dir / "checkpoints")[-1]
    assert tag.endswith("6")
    model = load_pretrained(run_dir / "checkpoints" / tag, dtype=torch.float64).model  # eval mode
    last = batches[len(batches) // 2 :]  # two evaluations of eval_batches each; the second is step 6's
    total, count = 0.0, 0
    with torch.no_grad():
        for tokens, first in last:
            for r in range(tokens.shape[0]):
                gen = step_generator(cfg.train.seed ^ 0x72616E64, first + r + 1)
                order, block = likelihood_order("random", tokens.shape[1], generator=gen)
                logits = model(tokens[r : r + 1], order[None], block[None])
                logp = torch.log_softmax(logits, dim=-1)[0]
                total -= float(logp[torch.arange(len(order)), tokens[r, order]].sum())
                count += tokens.shape[1]
    final = next(r for r in records if r["step"] == 6 and "val/nll_random" in r)
    assert final["val/nll_random"] == pytest.approx(total / count, rel=1e-5)


def test_a_validation_sample_gets_the_same_order_at_every_evaluation(any_order_run):
    _, _, _, batches, drawn = any_order_run
    assert len(batches) == 4  # eval_batches=2 at steps 3 and 6
    assert batches[0][1] == batches[2][1] and torch.equal(batches[0][0], batches[2][0])  # same samples
    for (name, index), orders in drawn.items():
        assert len(orders) == 2, (name, index)
        assert torch.equal(orders[0], orders[1])
    random0, diffusion0 = drawn[("random", 0)][0], drawn[("diffusion4", 0)][0]
    assert not torch.equal(random0, drawn[("random", 1)][0])  # per sample, not one order shared by all
    assert not torch.equal(random0, torch.arange(len(random0)))
    assert not torch.equal(random0, diffusion0)


def test_samples_are_logged_at_each_validation(any_order_run):
    cfg, run_dir, _, _, _ = any_order_run
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["step"], r["method"], r["index"]) for r in records] == [
        (step, method, i) for step in (3, 6) for method in ("l2r", "sbp4") for i in range(2)
    ]
    for r in records:
        assert r["tokens"] == 16 and isinstance(r["text"], str) and r["text"]
        assert r["forward_calls"] == (16 if r["method"] == "l2r" else 4 + 16 // 4 - 1)
    # log.wandb=off: the table is never built and wandb never imported (the run fixture blocks the import)


def test_samples_are_reproducible_and_leave_the_global_rng_alone(tmp_path):
    """The samples of a step are a function of (seed, step); drawing them consumes no global random numbers,
    so the training streams are the same with or without them."""
    from armd_scale.model import build_model
    from armd_scale.train.eval_samples import EvalSamples

    cfg = load_config(overrides=[*TINY, "train.eval_samples=2", "train.eval_sample_tokens=8", f"run.dir={tmp_path}"])
    model = build_model(cfg.model).train()

    class Quiet:
        is_main = True

        def message(self, text):
            raise AssertionError(text)

    samples = EvalSamples(cfg, tmp_path, None, Quiet())  # type: ignore[arg-type]
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = samples.draw(model, 5)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training
    assert samples.draw(model, 5) == first
    assert samples.draw(model, 6) != first
    assert all("ids" in r and len(r["ids"]) == 8 for r in first)  # no tokenizer: ids, not text


def test_arch_ar_with_diffusion_is_refused_before_training(tmp_path, data_cache):
    run = run_train(
        tmp_path / "ar", data_cache, "model.arch=ar", "train.order.kind=l2r", "train.eval_orders=[l2r,diffusion:8]"
    )
    assert run.returncode != 0
    assert "train.eval_orders" in run.output and "single-token blocks" in run.output
    assert not (tmp_path / "ar" / "checkpoints").exists()  # refused at start, nothing trained


def test_what_each_arch_accepts():
    ok = load_config(overrides=[*TINY, "model.arch=ar", "train.eval_orders=[l2r,random]"])
    check_eval_orders(ok)
    mdlm = load_config(overrides=[*TINY, "model.arch=mdlm", "train.eval_orders=[random]"])
    note = check_eval_orders(mdlm)  # said, not refused: the paper presets list random for ARMD
    assert note is not None and note.startswith("train.eval_orders=['random'] not scored: arch mdlm validates")
    assert val_likelihoods(mdlm) == []
    assert check_eval_orders(load_config(overrides=[*TINY, "model.arch=mdlm"])) is None  # the default


def test_an_offline_wandb_run_holds_the_sample_table_and_the_any_order_metrics(tmp_path, data_cache):
    from wandb.proto import wandb_internal_pb2 as pb

    from .test_wandb import read_wandb_records

    run = run_train(
        tmp_path / "run",
        data_cache,
        "log.wandb=offline",
        "train.eval_every=3",
        "train.eval_batches=1",
        "train.eval_orders=[random]",
        "train.eval_sample_tokens=8",
        "train.sample_at_end=0",
    )
    assert run.returncode == 0, run.output
    (path,) = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    tables, randoms = {}, {}
    for raw in read_wandb_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            step = int(items["_step"])
            if "samples/_type" in items:
                assert json.loads(items["samples/_type"]) == "table-file" and items["samples/nrows"] == "4"
                tables[step] = path.parent / "files" / json.loads(items["samples/path"])
            if "val/nll_random" in items:
                randoms[step] = float(items["val/nll_random"])
    assert sorted(tables) == [3, 6]
    table = json.loads(tables[6].read_text())
    assert table["columns"] == ["step", "method", "text"]
    assert [row[:2] for row in table["data"]] == [[6, "l2r"], [6, "l2r"], [6, "sbp4"], [6, "sbp4"]]
    logged = {r["step"]: r["val/nll_random"] for r in run.records() if "val/nll_random" in r}
    assert randoms == logged


def test_mdlm_samples_come_from_its_ancestral_sampler(tmp_path):
    from armd_scale.model import build_model
    from armd_scale.train.eval_samples import EvalSamples

    cfg = load_config(overrides=[*TINY, "model.arch=mdlm", "train.eval_samples=1", "train.eval_sample_tokens=8"])
    samples = EvalSamples(cfg, tmp_path, None, type("Main", (), {"is_main": True})())  # type: ignore[arg-type]
    records = samples.draw(build_model(cfg.model), 3)
    assert [(r["method"], len(r["ids"])) for r in records] == [("ancestral8", 8)]
    assert 1 <= records[0]["forward_calls"] <= 8  # a step that unmasks nothing needs no call


def test_without_the_whole_model_on_rank_0_the_run_says_once_why_there_are_no_samples(tmp_path):
    from armd_scale.train.eval_samples import EvalSamples

    said: list[str] = []
    logger = type("Main", (), {"is_main": True, "message": lambda self, text: said.append(text)})()
    cfg = load_config(overrides=[*TINY, "parallel.zero_stage=3"])
    samples = EvalSamples(cfg, tmp_path, None, logger)  # type: ignore[arg-type]
    samples.log(None, 3)
    samples.log(None, 6)
    assert len(said) == 1 and "parallel.zero_stage=3" in said[0] and "armd generate" in said[0]
    assert not (tmp_path / "samples.jsonl").exists()
