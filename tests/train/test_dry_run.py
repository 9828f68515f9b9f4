"""`armd train --dry-run`: sizes, FLOPs and memory of every preset without allocating its weights."""

from __future__ import annotations

import pytest

from armd_scale.cli import main
from armd_scale.config import list_presets, load_config
from armd_scale.model import build_model
from armd_scale.model.flops import training_flops_per_token
from armd_scale.model.layers import mlp_hidden
from armd_scale.train.dry_run import count_parameters, dry_run, model_state_bytes


def hand_count(m) -> int:
    """Parameters of the shared transformer plus each arch's extras, from the shapes alone."""
    d, f = m.d_model, mlp_hidden(m.d_model, m.mlp_ratio, m.mlp)
    block = 4 * d * d + (3 if m.mlp == "swiglu" else 2) * d * f + 2 * d  # attention, MLP, two norms
    total = m.vocab_size * d * (1 if m.tie_embeddings else 2) + m.n_layers * block + d  # + final norm
    if m.arch == "armd":
        total += m.max_seq_len * m.d_pe + d + (m.d_pe * d if m.positional_start else 0)  # PE table, s, W_s
        # neighbour attention: a score per head and relative position (2 max_len - 1 of them), a gain per
        # head and channel, and a "nothing" logit per head when directional
        heads = m.neighbour_heads
        total += heads * (2 * m.max_seq_len - 1 + d) + (heads if m.neighbour_kind == "directional" else 0)
    else:
        total += d  # ar: start vector; mdlm: mask embedding
    return total


@pytest.mark.parametrize("preset", list_presets())
@pytest.mark.parametrize("arch", ["armd", "ar", "mdlm"])
def test_every_preset_is_planned_from_shapes_alone(preset, arch):
    cfg = load_config(preset, [f"model.arch={arch}", "parallel.zero_stage=3", "parallel.precision=bf16"])
    doc = dry_run(cfg, world_size=2)
    m = cfg.model
    assert doc["params"] == hand_count(m)
    assert doc["params"] - doc["params_non_embedding"] == m.vocab_size * m.d_model
    assert doc["train_flops_per_token"] == training_flops_per_token(m, cfg.data.seq_len)
    assert doc["tokens_per_step"] == cfg.train.global_batch_size * cfg.data.seq_len
    assert doc["deepspeed_config"]["zero_optimization"]["stage"] == 3
    states = doc["model_states_bytes"]
    assert abs(states["total"] - states["ema"] - 16 * doc["params"] / 2) <= 3  # ZeRO-3: all 16 bytes/param over 2 GPUs
    # the paper presets keep an fp32 EMA of the weights (train.ema_decay): 4 more bytes/param, partitioned
    assert abs(states["ema"] - (4 * doc["params"] / 2 if cfg.train.ema_decay else 0)) <= 1
    # DeepSpeed's ZeRO-3 estimate (which knows no EMA): 18 partitioned bytes/param (2 more) plus the gathered
    # largest layer
    extra = doc["deepspeed_estimate_bytes"] - (states["total"] - states["ema"])
    assert abs(extra - (2 * doc["params"] / 2 + 4 * doc["largest_layer_params"])) <= 4


def test_model_states_follow_the_zero_paper():
    """Rajbhandari et al. 2020, figure 1: 7.5B parameters, K = 12, 64 data-parallel GPUs."""
    psi, gb = 7_500_000_000, 1e9
    figures = [model_state_bytes(psi, "bf16", stage, 64).total / gb for stage in range(4)]
    assert figures == pytest.approx([120, 31.4, 16.6, 1.88], abs=0.05)
    assert model_state_bytes(psi, "fp32", 0, 64).total == 16 * psi  # fp32 Adam: weights, grads, two moments


def test_deepspeed_zero2_estimate_adds_an_fp32_gradient_copy():
    cfg = load_config("owt-small", ["parallel.zero_stage=2"])
    doc = dry_run(cfg, world_size=8)
    states = doc["model_states_bytes"]
    extra = doc["deepspeed_estimate_bytes"] - (states["total"] - states["ema"])  # DeepSpeed's knows no EMA
    assert abs(extra - 4 * doc["params"] // 8) <= 8


def test_tensor_parallel_splits_only_the_partitioned_matrices():
    cfg = load_config("owt-small", ["parallel.tp=2", "train.micro_batch_size=8"])
    counts = count_parameters(cfg)
    m = cfg.model
    split = m.n_layers * (4 * m.d_model**2 + 3 * m.d_model * mlp_hidden(m.d_model, m.mlp_ratio, m.mlp))
    assert counts.tensor_parallel == split
    doc = dry_run(cfg, world_size=8)
    assert doc["params_per_tp_rank"] == counts.total - split // 2 and doc["dp_world"] == 4


def test_bad_layouts_and_deepspeed_conflicts_are_refused(capsys):
    assert main(["train", "--dry-run", "--config", "owt-small", "--world-size", "3"]) == 1
    assert "must be a multiple of train.micro_batch_size x data-parallel ranks" in capsys.readouterr().err
    assert main(["train", "--dry-run", "parallel.deepspeed={train_batch_size: 4}"]) == 1
    assert "contradicts" in capsys.readouterr().err


def test_cli_prints_the_figures_for_owt_small_zero3(tmp_path, capsys):
    run_dir = tmp_path / "never"
    assert main(["train", "--dry-run", "--config", "owt-small", "parallel.zero_stage=3", f"run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    for fragment in (
        '"stage": 3',
        "parameters:              123,714,048",  # incl. 4 directional sink logits
        "without the token embedding 85,080,576",
        "training FLOPs per token: 1.103e+09",
        "tokens per optimizer step: 524,288",
        "model states (ZeRO-3):",
        "DeepSpeed's ZeRO-3 estimate (no offload):",
        "activations of one micro-batch:",
    ):
        assert fragment in out, fragment
    assert not run_dir.exists()  # nothing written, no training


def test_dry_run_of_a_big_preset_never_allocates_its_weights(monkeypatch):
    """owt-medium has 354M parameters (1.4 GB in fp32): the dry run builds it on the meta device only."""
    import armd_scale.train.dry_run as dry

    built = []

    def build_and_keep(model_cfg):
        model = build_model(model_cfg)
        built.append(model)
        return model

    monkeypatch.setattr(dry, "build_model", build_and_keep)
    doc = dry_run(load_config("owt-medium"), world_size=8)
    assert doc["params"] == 354_088_960 and len(built) == 1
    tensors = [*built[0].parameters(), *built[0].buffers()]
    assert tensors and all(t.is_meta for t in tensors)
