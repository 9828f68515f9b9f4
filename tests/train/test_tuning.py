"""The tools for tuning a run: model.compile, train.profile and parallel.deepspeed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from armd_scale.config import ConfigError, ProfileConfig, load_config
from armd_scale.train.engine import batch_layout, deepspeed_config, merge_user_deepspeed
from armd_scale.train.profiler import StepProfiler

from .conftest import run_train

SHORT = ["train.steps=4", "train.checkpoint_every=100", "train.sample_at_end=0"]


def _trace_steps(path: Path) -> set[str]:
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    return {e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#")}


@pytest.mark.slow
def test_compiled_model_trains_like_eager_and_the_profile_is_written(tmp_path, data_cache):
    """torch.compile (inductor, CPU) through DeepSpeed's engine.compile: same losses as eager to float
    tolerance, parameter names unchanged (the final checkpoint loads in the eager model's layout)."""
    eager = run_train(tmp_path / "eager", data_cache, *SHORT)
    assert eager.returncode == 0, eager.output
    compiled = run_train(
        tmp_path / "compiled",
        data_cache,
        *SHORT,
        "model.compile=true",
        "train.profile.start_step=3",
        "train.profile.steps=2",
        "train.profile.warmup=1",
        "train.profile.record_shapes=true",
        timeout=600,
    )
    assert compiled.returncode == 0, compiled.output
    expected, got = eager.losses(), compiled.losses()
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    # the run's first step is ProfilerStep#0: steps 3 and 4 are #2 and #3
    trace = compiled.dir / "profile" / "trace_steps_3-4.json.gz"
    assert _trace_steps(trace) == {"ProfilerStep#2", "ProfilerStep#3"}
    summary = (compiled.dir / "profile" / "summary_steps_3-4.txt").read_text()
    assert "aten::" in summary and "Self CPU" in summary
    assert "train.profile: steps 3-4 traced" in compiled.output


def _busy_steps(profiler: StepProfiler, count: int) -> None:
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    profiler.start()
    for _ in range(count):
        (x @ x).sum()
        profiler.step()
    profiler.stop()


def test_profiler_window_counts_optimizer_steps_from_where_the_run_starts(tmp_path):
    said: list[str] = []
    cfg = ProfileConfig(start_step=6, steps=2, warmup=2)
    profiler = StepProfiler(cfg, tmp_path, is_main=True, device=torch.device("cpu"), first_step=3, say=said.append)
    _busy_steps(profiler, 6)  # optimizer steps 4..9 of a run resumed at step 3
    assert _trace_steps(tmp_path / "profile" / "trace_steps_6-7.json.gz") == {"ProfilerStep#2", "ProfilerStep#3"}
    assert (tmp_path / "profile" / "summary_steps_6-7.txt").is_file()
    trace = tmp_path / "profile" / "trace_steps_6-7.json.gz"
    assert said == [f"train.profile: steps 6-7 traced -> {trace} and summary_steps_6-7.txt"]


def test_profiler_is_off_past_its_window_on_other_ranks_and_by_default(tmp_path):
    said: list[str] = []
    cpu = torch.device("cpu")
    late = StepProfiler(ProfileConfig(start_step=2), tmp_path, is_main=True, device=cpu, first_step=5, say=said.append)
    other_rank = StepProfiler(ProfileConfig(start_step=2), tmp_path, is_main=False, device=cpu, first_step=0)
    default = StepProfiler(ProfileConfig(), tmp_path, is_main=True, device=cpu, first_step=0)
    for profiler in (late, other_rank, default):
        assert not profiler.active
        _busy_steps(profiler, 4)
    assert not (tmp_path / "profile").exists()
    assert said == ["train.profile: the run starts after step 5, past start_step=2; no trace"]


def test_tuning_config_is_validated():
    with pytest.raises(ConfigError, match="train.profile needs start_step >= 0"):
        load_config(None, ["train.profile.steps=0"])
    with pytest.raises(ConfigError, match="'parallel.deepspeed'=3 must be a mapping with string keys"):
        load_config(None, ["parallel.deepspeed=3"])
    with pytest.raises(ConfigError, match="'model.compile'='yes please' must be true or false"):
        load_config(None, ["model.compile=yes please"])
    assert load_config(None, []).model.compile is False  # off by default


def test_deepspeed_options_merge_into_the_generated_config():
    cfg = load_config(
        None,
        [
            "parallel.zero_stage=2",
            "parallel.precision=bf16",
            "parallel.deepspeed={flops_profiler: {enabled: true, profile_step: 5}, "
            "zero_optimization: {stage: 2, reduce_bucket_size: 50000000}, bf16: {immediate_grad_update: true}}",
        ],
    )
    ds = deepspeed_config(cfg, batch_layout(cfg, 1))
    assert ds["flops_profiler"] == {"enabled": True, "profile_step": 5}
    assert ds["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 50000000}
    assert ds["bf16"] == {"enabled": True, "immediate_grad_update": True}
    assert ds["train_batch_size"] == cfg.train.global_batch_size  # the generated keys are untouched


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"train_batch_size": 64}, r"train_batch_size=64 contradicts 16, .* from train.global_batch_size"),
        ({"zero_optimization": {"stage": 3}}, r"zero_optimization.stage=3 contradicts 0, .* from parallel.zero_stage"),
        ({"gradient_clipping": 0.5}, r"gradient_clipping=0.5 contradicts 1.0, .* from train.grad_clip"),
        ({"bf16": {"enabled": True}}, r"bf16=.* armd_scale's to set, from parallel.precision"),
        ({"tensor_parallel": {"autotp_size": 2}}, r"tensor_parallel=.* from parallel.tp"),
        ({"steps_per_print": 5}, r"steps_per_print=5 contradicts .* armd_scale itself"),
        ({"optimizer": {"type": "Adam"}}, r"parallel.deepspeed.optimizer is not allowed: .* train.lr"),
        ({"scheduler": {"type": "WarmupLR"}}, r"parallel.deepspeed.scheduler is not allowed: .* train.lr_schedule"),
    ],
)
def test_deepspeed_options_that_contradict_the_config_are_refused(extra, message):
    cfg = load_config(None, [])
    with pytest.raises(ConfigError, match=message):
        merge_user_deepspeed(deepspeed_config(cfg, batch_layout(cfg, 1)), extra)


def test_deepspeed_options_reach_deepspeed_in_a_run(tmp_path, data_cache):
    """DeepSpeed's flops profiler, switched on only through parallel.deepspeed, writes its report."""
    report = tmp_path / "flops.txt"
    opts = f"parallel.deepspeed={{flops_profiler: {{enabled: true, profile_step: 2, output_file: '{report}'}}}}"
    run = run_train(tmp_path / "run", data_cache, *SHORT, opts)
    assert run.returncode == 0, run.output
    assert "DeepSpeed Flops Profiler" in report.read_text()
    bad = run_train(tmp_path / "bad", data_cache, *SHORT, "parallel.deepspeed={train_batch_size: 4}")
    assert bad.returncode == 1 and "parallel.deepspeed.train_batch_size=4 contradicts" in bad.output
