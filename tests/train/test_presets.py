"""The paper presets: each states its deviations, keeps the paper's settings, and trains (shrunk) on CPU."""

import subprocess
import sys

import pytest
import torch

from armd_scale.config import PRESET_DIR, ConfigError, list_presets, load_config

from .conftest import Run, _env

PAPER_PRESETS = ["owt-small", "owt-medium", "lm1b-small", "sbp-finetune"]

# Tiny shapes and the built-in corpus; everything else (order schedule, precision, ZeRO stage,
# optimizer, backend) stays as the preset has it.
SHRINK = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "model.vocab_size=128",
    "model.d_pe=8",
    "data.seq_len=32",
    "data.vocab_size=128",
    "data.train=builtin:pydoc",
    "data.val=null",
    "data.tokenizer=null",
    "data.num_workers=0",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.steps=2",
    "train.eval_every=0",
    "train.log_every=1",
    "log.wandb=off",
    "log.progress_bar=false",
]


def run_preset(name: str, run_dir, cache, *overrides: str) -> Run:
    cmd = [
        sys.executable,
        "-m",
        "armd_scale.cli",
        "train",
        "--config",
        name,
        *SHRINK,
        f"data.cache_dir={cache}",
        f"run.dir={run_dir}",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    return Run(run_dir, proc.returncode, proc.stdout + proc.stderr)


def test_every_paper_preset_exists_and_lists_its_deviations():
    assert set(PAPER_PRESETS) <= set(list_presets())
    for name in PAPER_PRESETS:
        text = (PRESET_DIR / f"{name}.yaml").read_text()
        assert text.startswith(f"# {name}:"), name
        assert "Deviations from the paper:" in text.split("\nrun:")[0], name


def test_presets_keep_the_paper_settings():
    small, medium, lm1b, sbp = (load_config(n) for n in PAPER_PRESETS)
    for cfg, shape in ((small, (12, 768, 12)), (medium, (24, 1024, 16)), (lm1b, (12, 768, 12)), (sbp, (12, 768, 12))):
        assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads) == shape
        assert cfg.train.global_batch_size == 512 and cfg.parallel.precision == "bf16"
        assert cfg.model.attention_backend in ("flex", "auto")
    for cfg in (small, medium):
        o = cfg.train.order
        assert (o.kind, o.ar_steps, o.rho, o.ramp_end) == ("progressive", 9000, 32, 48000)
        assert cfg.data.seq_len == 1024 and 50257 <= cfg.model.vocab_size
    o = lm1b.train.order
    assert (o.kind, o.ar_steps, o.rho, o.ramp_end) == ("progressive", 100000, 8, 300000)
    assert lm1b.data.seq_len == 128 and 29000 <= lm1b.data.vocab_size <= 31000
    assert sbp.train.order.kind == "sbp" and sbp.train.order.streams == [1, 2, 4]
    assert sbp.train.init_from and sbp.run.dir != small.run.dir
    assert sbp.model == small.model  # fine-tuning needs the pretrained run's exact shape


@pytest.fixture(scope="module")
def owt_small_run(tmp_path_factory, data_cache):
    # no warm-up: two steps at the warm-up's first rates (3e-4 / 2500) move the weights by ~1e-7, which
    # bf16 forwards cannot see, and the fine-tune test below must tell these weights from a fresh init
    run = run_preset("owt-small", tmp_path_factory.mktemp("owt-small") / "run", data_cache, "train.warmup_steps=0")
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_owt_small_runs_shrunk(owt_small_run):
    assert sorted(owt_small_run.losses()) == [1, 2]
    assert owt_small_run.records()[0]["order/shuffled"] == 0  # progressive: left to right before ar_steps


@pytest.mark.parametrize("name", ["owt-medium", "lm1b-small"])
def test_preset_runs_shrunk(name, tmp_path, data_cache):
    run = run_preset(name, tmp_path / "run", data_cache)
    assert run.returncode == 0, run.output[-3000:]
    assert sorted(run.losses()) == [1, 2]


def test_sbp_finetune_starts_from_the_pretrained_run(owt_small_run, tmp_path, data_cache):
    run = run_preset("sbp-finetune", tmp_path / "run", data_cache, f"train.init_from={owt_small_run.dir}")
    assert run.returncode == 0, run.output[-3000:]
    assert "initialised weights from" in run.output and "step 2" in run.output
    records = [r for r in run.records() if "loss" in r]
    assert len(records) == 2 and all(r["order/streams"] in (1, 2, 4) for r in records)
    # The pretrained weights, not a fresh init: a fresh run of the same config starts elsewhere.
    fresh = run_preset("sbp-finetune", tmp_path / "fresh", data_cache, "train.init_from=null")
    assert fresh.returncode == 0, fresh.output[-3000:]
    assert run.losses()[1] != fresh.losses()[1]


def test_init_from_loads_the_weights_and_refuses_mismatches(owt_small_run, data_cache):
    from armd_scale.model import build_model
    from armd_scale.pretrained import load_pretrained
    from armd_scale.train.init_from import load_init_weights

    source = load_pretrained(owt_small_run.dir)
    overrides = [*SHRINK, f"train.init_from={owt_small_run.dir}"]
    cfg = load_config("sbp-finetune", overrides)
    model = build_model(cfg.model)
    message = load_init_weights(model, cfg, source.tokenizer_sha256)
    assert "step 2" in message
    for name, value in source.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    wider = load_config("sbp-finetune", [*overrides, "model.d_model=64"])
    with pytest.raises(ConfigError, match="model.d_model: checkpoint 32 vs config 64"):
        load_init_weights(build_model(wider.model), wider, source.tokenizer_sha256)
    with pytest.raises(ConfigError, match="tokenizer"):
        load_init_weights(build_model(cfg.model), cfg, "0" * 64)
    missing = load_config("sbp-finetune", [*SHRINK, f"train.init_from={owt_small_run.dir}/nowhere"])
    with pytest.raises(ConfigError, match="train.init_from=.*nowhere"):
        load_init_weights(build_model(missing.model), missing, source.tokenizer_sha256)
