"""arch=mdlm through the real trainer: the loss falls, validation reports a bound, noise is deterministic."""

import pytest
import torch

from armd_scale.config import load_config
from armd_scale.generate import sample_mdlm
from armd_scale.train.objective import MaskedDiffusionObjective, make_objective

from .conftest import run_train

MDLM = ["model.arch=mdlm", "train.steps=12", "train.eval_every=4", "train.eval_batches=2", "train.checkpoint_every=100"]


@pytest.fixture(scope="module")
def mdlm_run(tmp_path_factory, data_cache):
    run = run_train(tmp_path_factory.mktemp("mdlm") / "run", data_cache, *MDLM)
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_mdlm_trains_and_validates_with_the_elbo(mdlm_run):
    losses = mdlm_run.losses()
    assert sorted(losses) == list(range(1, 13))
    # one-draw ELBO estimates with 1/t weights are noisy on 8 sequences: compare halves of the run
    assert sum(losses[s] for s in range(7, 13)) / 6 < sum(losses[s] for s in range(1, 7)) / 6 - 0.2, losses
    val = {r["step"]: r["val/elbo"] for r in mdlm_run.records() if "val/elbo" in r}
    assert sorted(val) == [4, 8, 12]
    # validation noise is the same at every evaluation, so the bound falls as the model learns
    assert val[12] < val[8] < val[4], val
    assert not any("val/nll" in r for r in mdlm_run.records())  # never reported as an exact NLL
    assert "objective=mdlm" in mdlm_run.output and "a bound, not an exact NLL" in mdlm_run.output


def test_a_trained_mdlm_loads_and_samples(mdlm_run):
    """The checkpoint holds the mask embedding; the loaded model samples with at most T calls."""
    from armd_scale.pretrained import load_pretrained

    model = load_pretrained(mdlm_run.dir).model
    out = sample_mdlm(model, 2, 32, 8, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (2, 32) and out.forward_calls <= 8
    assert int(out.tokens.max()) < model.mask_id == 128


def test_armd_generate_samples_mdlm_with_its_own_sampler(mdlm_run, tmp_path):
    """`armd generate` on an mdlm checkpoint: T denoising steps bound the forward calls; a prompt stays."""
    import json

    from armd_scale.cli import main
    from armd_scale.eval import validate

    out = tmp_path / "gen.json"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(mdlm_run.dir),
                "--length",
                "32",
                "--steps",
                "6",
                "--num-samples",
                "2",
                "--prompt",
                "The",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    validate(doc, "generate")
    assert doc["arch"] == "mdlm" and doc["diffusion_steps"] == 6 and 1 <= doc["forward_calls"] <= 6
    prompt = doc["prompt_tokens"]
    assert prompt >= 1 and all(s["tokens"][:prompt] == doc["samples"][0]["tokens"][:prompt] for s in doc["samples"])
    assert all(max(s["tokens"]) < 128 for s in doc["samples"])  # no mask token left


@pytest.mark.distributed
def test_mdlm_two_processes_zero2_match_one(mdlm_run, tmp_path, data_cache):
    run = run_train(
        tmp_path / "run",
        data_cache,
        *MDLM,
        "parallel.zero_stage=2",
        "train.stop_at_step=5",
        "train.eval_every=0",
        nproc=2,
    )
    assert run.status()["code"] == 75, run.output[-3000:]
    losses, single = run.losses(), mdlm_run.losses()
    assert sorted(losses) == [1, 2, 3, 4, 5]
    for step, loss in losses.items():
        assert abs(loss - single[step]) <= 1e-5, f"step {step}: {loss} vs {single[step]}"


def _objective(world: int, rank: int):
    cfg = load_config(None, ["model.arch=mdlm", "data.seq_len=16", "model.max_seq_len=16", "train.global_batch_size=8"])
    objective = make_objective(cfg, 8)
    assert isinstance(objective, MaskedDiffusionObjective)
    local = 8 // world
    return objective, slice(rank * local, (rank + 1) * local)


def test_noise_is_a_function_of_seed_step_and_sample_index():
    """What a resumed or resharded run draws: the same rates and masks for the same global rows."""
    whole, rows = _objective(1, 0)
    whole.begin_step(7, rows, torch.device("cpu"))
    halves = []
    for rank in (0, 1):
        part, rows = _objective(2, rank)
        part.begin_step(7, rows, torch.device("cpu"))
        halves.append((part.rates, part.uniforms))
    assert torch.equal(torch.cat([h[0] for h in halves]), whole.rates)
    assert torch.equal(torch.cat([h[1] for h in halves]), whole.uniforms)
    again, rows = _objective(1, 0)
    again.begin_step(7, rows, torch.device("cpu"))
    assert torch.equal(again.rates, whole.rates) and torch.equal(again.uniforms, whole.uniforms)
    again.begin_step(8, rows, torch.device("cpu"))
    assert not torch.equal(again.uniforms, whole.uniforms)
    # antithetic: the step's rates cover [eps, 1] evenly
    gaps = whole.rates.sort().values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, gaps[0].item()))
