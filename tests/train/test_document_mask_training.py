"""data.document_mask in training: the documents come from the shard set's EOS id (old shard sets need
nothing new, a set without one is refused), the objective hands the model document ids found on the
device, and a tiny run trains with them (docs/ARCHITECTURE.md, Document masking)."""

from __future__ import annotations

import math

import pytest
import torch

from armd_scale.config import ConfigError, load_config
from armd_scale.model import build_model
from armd_scale.model.masks import document_ids
from armd_scale.train.objective import make_objective
from armd_scale.train.run_data import document_separator

from .conftest import TINY, run_train


def test_the_separator_comes_from_the_manifest_and_a_set_without_one_is_refused():
    assert document_separator({"eos_id": 2, "seed": 1}, "memory://set") == 2
    for build in ({"eos_id": None}, {}):
        with pytest.raises(ConfigError, match=r"data.document_mask=true .* memory://set records eos_id=None"):
            document_separator(build, "memory://set")


def test_document_mask_needs_the_armd_arch():
    """The model class says whether its forward takes document ids; training refuses the option before it
    starts for one that does not (train/objective.py, check_documents, called by train())."""
    from armd_scale.train.objective import check_documents

    for arch in ("ar", "mdlm"):
        with pytest.raises(ConfigError, match="data.document_mask=true needs model.arch=armd"):
            check_documents(load_config("tiny-cpu", [f"model.arch={arch}", "data.document_mask=true"]))
    check_documents(load_config("tiny-cpu", ["data.document_mask=true"]))  # armd takes them


def test_the_objective_passes_document_ids_from_eos():
    cfg = load_config(None, [*TINY, "data.document_mask=true"])
    model = build_model(cfg.model)
    seen: list[dict] = []

    def engine(tokens, order, block, **kwargs):
        seen.append(kwargs)
        return model(tokens, order, block, **kwargs)

    tokens = torch.randint(0, 50, (2, cfg.data.seq_len), generator=torch.Generator().manual_seed(0))
    tokens[:, 7] = 99
    objective = make_objective(cfg, cfg.train.global_batch_size, eos_id=99)
    objective.begin_step(0, slice(0, 2), torch.device("cpu"))
    loss = objective.micro_loss(engine, tokens, slice(0, 2))
    assert torch.equal(seen[0]["doc"], document_ids(tokens, 99)) and int(seen[0]["doc"].max()) == 1
    off = make_objective(load_config(None, TINY), cfg.train.global_batch_size, eos_id=99)
    off.begin_step(0, slice(0, 2), torch.device("cpu"))
    assert off.micro_loss(engine, tokens, slice(0, 2)).item() != loss.item() and seen[1] == {}
    with pytest.raises(ValueError, match="eos_id"):
        make_objective(cfg, cfg.train.global_batch_size)


def test_validation_scores_each_document_apart():
    """With data.document_mask, validation's l2r NLL of a packed window is the sum of each document's NLL
    scored alone (the model's own window, masking off), as training saw them; without it, it is not."""
    from armd_scale.model.loss import token_nll

    cfg = load_config(None, [*TINY, "data.document_mask=true"])
    torch.manual_seed(0)
    model = build_model(cfg.model).double().eval()
    n = cfg.data.seq_len
    tokens = torch.randint(0, 50, (1, n), generator=torch.Generator().manual_seed(1))
    tokens[0, 11] = 99  # documents [0, 11] and [12, n)

    def alone(part: torch.Tensor) -> float:
        order = torch.arange(part.shape[1]).expand_as(part)
        return float(token_nll(model(part, order, order), part, order).sum())

    expected = alone(tokens[:, :12]) + alone(tokens[:, 12:])
    with torch.no_grad():
        masked, count = make_objective(cfg, cfg.train.global_batch_size, eos_id=99).eval_batch(model, tokens, 0)
        plain, _ = make_objective(load_config(None, TINY), cfg.train.global_batch_size, eos_id=99).eval_batch(
            model, tokens, 0
        )
    assert count == n and masked == pytest.approx(expected, rel=1e-6)  # token_nll reads in float32
    assert abs(plain - expected) > 1e-4 * expected  # 100x the float32 rounding above


def test_a_tiny_run_trains_with_document_masking(tmp_path, data_cache):
    """End to end on the built-in corpus (sentencepiece, EOS after every document): the run says it masks
    documents, finishes, and its loss falls. (Its windows are whole source files cut at 32 tokens: under
    1% hold a boundary, so the losses themselves need not differ from an unmasked run's in 4 steps; the
    objective's test above checks that the ids reach the model.)"""
    run = run_train(
        tmp_path / "run", data_cache, "data.document_mask=true", "train.steps=4", "train.checkpoint_every=4"
    )
    assert run.returncode == 0, run.output
    assert "document_mask=on" in run.output
    losses = run.losses()
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert losses[4] < losses[1]
