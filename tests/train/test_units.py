"""Pieces of the trainer that need no processes: batch layout, DeepSpeed dict, schedule, orders, guard."""

import pytest
import torch

from armd_scale.checkpoints.layout import shape_differences, step_of, tag_for
from armd_scale.config import ConfigError, load_config
from armd_scale.train.engine import GuardedAdamW, batch_layout, deepspeed_config, param_groups
from armd_scale.train.schedule import lr_factor, set_lr_for_step
from armd_scale.train.step_orders import draw_step_orders


def test_batch_layout_and_errors():
    cfg = load_config(overrides=["train.global_batch_size=32", "train.micro_batch_size=4"])
    layout = batch_layout(cfg, world_size=2)
    assert (layout.dp_world, layout.grad_accum, layout.local_batch) == (2, 4, 16)
    cfg = load_config(overrides=["train.global_batch_size=32", "train.micro_batch_size=4", "parallel.tp=2"])
    assert batch_layout(cfg, world_size=4).dp_world == 2
    with pytest.raises(ConfigError, match="parallel.tp=2 must divide the world size 3"):
        batch_layout(cfg, world_size=3)
    cfg = load_config(overrides=["train.global_batch_size=12", "train.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size x data-parallel ranks = 4 x 2"):
        batch_layout(cfg, world_size=2)


def test_deepspeed_dict_is_generated_from_the_config():
    cfg = load_config(overrides=["parallel.zero_stage=2", "parallel.precision=bf16", "train.grad_clip=0.5"])
    ds = deepspeed_config(cfg, batch_layout(cfg, 1))
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    assert ds["gradient_clipping"] == 0.5
    assert ds["train_batch_size"] == cfg.train.global_batch_size
    cfg = load_config(overrides=["parallel.tp=2", "parallel.precision=fp16"])
    ds = deepspeed_config(cfg, batch_layout(cfg, 2), load_universal=True)
    assert ds["tensor_parallel"]["autotp_size"] == 2
    assert "train_batch_size" not in ds and ds["fp16"]["enabled"] and ds["checkpoint"]["load_universal"]


def test_lr_schedule_shapes():
    cfg = load_config(overrides=["train.steps=100", "train.warmup_steps=10", "train.min_lr_ratio=0.1"]).train
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)  # cosine midpoint: floor + (1 - floor) / 2
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    cfg.lr_schedule = "linear"
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(32, cfg) == pytest.approx(0.1 + 0.9 * (1 - 22 / 90))
    cfg.lr_schedule = "constant"
    assert lr_factor(99, cfg) == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    set_lr_for_step(opt, cfg, 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * 0.6)


def test_step_orders_are_a_function_of_seed_and_step():
    cfg = load_config(overrides=["train.order.kind=random"]).train.order
    a = draw_step_orders(cfg, step=3, global_batch=8, seq_len=16, seed=0)
    b = draw_step_orders(cfg, step=3, global_batch=8, seq_len=16, seed=0)
    c = draw_step_orders(cfg, step=4, global_batch=8, seq_len=16, seed=0)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_sbp_training_draws_streams_from_the_set():
    cfg = load_config(overrides=["train.order.kind=sbp", "train.order.streams=[1,2,4]"]).train.order
    seen = {draw_step_orders(cfg, step=s, global_batch=2, seq_len=16, seed=0)[2]["order/streams"] for s in range(40)}
    assert seen == {1, 2, 4}
    cfg.streams = [3]
    with pytest.raises(ValueError, match="does not divide seq_len=16"):
        draw_step_orders(cfg, step=0, global_batch=2, seq_len=16, seed=0)


def test_progressive_schedule_state_is_reported():
    cfg = load_config().train.order  # tiny-cpu: progressive
    _, _, info = draw_step_orders(cfg, step=cfg.ramp_end, global_batch=2, seq_len=16, seed=0)
    assert info["order/shuffled"] == cfg.rho


def test_guarded_adamw_skips_while_the_flag_is_set():
    """Every inner call of one optimizer step skips (ZeRO calls it per parameter group or sub-group); the
    trainer clears the flag after the step, and the next step updates."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = GuardedAdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.skip_next = True
    opt.step()
    opt.step()  # a second group's call within the same step
    assert torch.equal(p.detach(), torch.ones(3)) and opt.skip_next is True
    opt.skip_next = False  # what train/steps.py does after engine.step()
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3))


def test_param_groups_decay_only_matrices():
    from armd_scale.model import build_model

    model = build_model(load_config(overrides=["model.neighbour_heads=2"]).model)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert any(names[id(p)] == "pos_table" for p in no_decay["params"])
    # decay would pull neighbour attention's scores towards uniform weights
    assert any(names[id(p)] == "neighbour.rel_bias" for p in no_decay["params"])
    assert any(names[id(p)] == "neighbour.gain" for p in decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


def test_checkpoint_names_and_shape_diff():
    assert tag_for(120) == "step_00000120" and step_of("step_00000120") == 120
    with pytest.raises(ValueError, match="not a checkpoint folder name"):
        step_of("latest")
    model = load_config().to_dict()["model"]
    diffs = shape_differences({**model, "d_model": 64}, {**model, "d_model": 128})
    assert diffs == ["model.d_model: checkpoint 64 vs config 128"]
    # query-stream inputs change parameters (or, for pe_lr_scale, what the stored table means)
    saved = {**model, "neighbour_heads": 0, "pe_lr_scale": 1.0}
    diffs = shape_differences(saved, {**model, "neighbour_heads": 4, "pe_lr_scale": 2.0})
    assert diffs == [
        "model.neighbour_heads: checkpoint 0 vs config 4",
        "model.pe_lr_scale: checkpoint 1.0 vs config 2.0",
    ]


@pytest.mark.parametrize(
    "override",
    [
        "model.neighbour_heads=2",
        "model.neighbour_kind=symmetric",
        "model.positional_start_table=separate",
        "model.positional_start_scope=first_block",
        "model.prefix_agg=none",
        "model.prefix_norm=true",
        "model.prefix_query_table=true",
        "model.previous_block_input=true",
        "model.pe_lr_scale=2.0",
    ],
)
def test_resume_refuses_a_changed_query_stream_input(override):
    """Each of these changes the parameters or the function trained weights compute."""
    saved = load_config().to_dict()["model"]
    changed = load_config(overrides=[override]).to_dict()["model"]
    key = override.split("=")[0].removeprefix("model.")
    assert [d.split(":")[0] for d in shape_differences(saved, changed)] == [f"model.{key}"]


def test_a_checkpoint_older_than_neighbour_attention_compares_as_trained():
    """A saved config without neighbour_heads was trained without neighbour heads: resuming it with
    neighbour_heads=0 is the same model, with neighbour heads (query_input=neighbour) it is not."""
    saved = load_config(overrides=["model.neighbour_heads=0", "model.positional_start_init=normal"]).to_dict()["model"]
    del saved["neighbour_heads"], saved["positional_start_init"]
    assert shape_differences(saved, load_config(overrides=["model.neighbour_heads=0"]).to_dict()["model"]) == []
    heads = load_config(overrides=["model.query_input=custom", "model.neighbour_heads=4"]).to_dict()["model"]
    assert shape_differences(saved, heads) == ["model.neighbour_heads: checkpoint 0 vs config 4"]
