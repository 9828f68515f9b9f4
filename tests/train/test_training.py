"""End-to-end single-process training: losses, checkpoints, resume, preemption, guards."""

import json
import shutil
import signal

import pytest

from .conftest import run_train, start_train, wait_for


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_cache):
    """One uninterrupted 6-step run that other tests compare against."""
    run = run_train(tmp_path_factory.mktemp("ref") / "run", data_cache)
    assert run.returncode == 0, run.output
    return run


def test_run_logs_metrics_checkpoints_and_status(reference):
    losses = reference.losses()
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1]
    record = reference.records()[-1]
    for key in (
        "loss",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "tokens_per_s_per_device",
        "step_time_s",
        "data_wait_s",
        "order/shuffled",
        "memory/rss_gb",
    ):
        assert key in record, key
    assert record["grad_norm"] > 0
    assert reference.checkpoints() == ["step_00000003", "step_00000006"]
    assert (reference.dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    status = json.loads((reference.dir / "exit_status.json").read_text())
    assert status["code"] == 0 and status["step"] == 6
    meta = json.loads((reference.dir / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["loader"]["cursor"] >= 0 and len(meta["tokenizer_sha256"]) == 64
    assert meta["topology"] == {"world_size": 1, "tp": 1, "dp": 1, "zero_stage": 0, "precision": "fp32"}


def test_stop_and_resume_is_bit_identical(reference, tmp_path, data_cache):
    run_dir = tmp_path / "run"
    first = run_train(run_dir, data_cache, "train.stop_at_step=3")
    assert first.returncode == 75, first.output
    assert json.loads((run_dir / "exit_status.json").read_text())["code"] == 75
    second = run_train(run_dir, data_cache)
    assert second.returncode == 0, second.output
    assert "resumed from step_00000003" in second.output
    assert second.losses() == reference.losses()  # exact float equality, order schedule and data included
    meta = json.loads((run_dir / "checkpoints" / "step_00000006" / "meta.json").read_text())
    ref_meta = json.loads((reference.dir / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["loader"] == ref_meta["loader"]


def test_sigusr1_saves_a_complete_checkpoint_and_exits_75(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, data_cache, "train.steps=200", "train.checkpoint_every=1000")
    try:
        metrics = run_dir / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 120, "two logged steps")
        proc.send_signal(signal.SIGUSR1)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, output
    tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert len(tags) == 1 and (run_dir / "checkpoints" / tags[0] / "COMPLETE").exists()
    step = int(tags[0].split("_")[1])
    assert 2 <= step < 200
    assert "SIGUSR1" in output


def test_incomplete_checkpoint_is_skipped(reference, tmp_path, data_cache):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "checkpoints" / "step_00000006" / "COMPLETE").unlink()  # as if the save was cut short
    resumed = run_train(run_dir, data_cache)
    assert resumed.returncode == 0, resumed.output
    assert "resumed from step_00000003" in resumed.output
    assert resumed.losses() == {s: v for s, v in reference.losses().items() if s > 3}


def test_retention_keeps_last_k_and_every_mth(tmp_path, data_cache):
    run = run_train(
        tmp_path / "run",
        data_cache,
        "train.steps=8",
        "train.checkpoint_every=1",
        "train.keep_last=2",
        "train.keep_every=4",
    )
    assert run.returncode == 0, run.output
    assert run.checkpoints() == ["step_00000004", "step_00000007", "step_00000008"]


def test_resume_refuses_a_model_shape_change(reference, tmp_path, data_cache):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    run = run_train(run_dir, data_cache, "model.d_model=64", "model.n_heads=4", "train.steps=8")
    assert run.returncode == 1
    assert "model.d_model: checkpoint 32 vs config 64" in run.output
    assert "model.n_heads: checkpoint 2 vs config 4" in run.output


def test_resume_with_more_steps_extends_the_run(reference, tmp_path, data_cache):
    """Resuming with more steps continues on the new schedule (no crash, loss keeps falling)."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    run = run_train(run_dir, data_cache, "train.steps=9")
    assert run.returncode == 0, run.output
    assert sorted(run.losses()) == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # metrics.jsonl is appended across invocations


@pytest.mark.slow
def test_a_mixture_of_shard_sets_trains_and_resumes_exactly(tmp_path, data_cache):
    """data.train as a list: the pydoc train and validation splits mixed 80/20 (the small one read up
    to 4 times per mixture epoch); a stop and resume gives the uninterrupted run's losses."""
    (built,) = data_cache.glob("builtin-pydoc-*")
    overrides = (
        f"data.train=[{{path: {built}/train, weight: 0.8}}, {{path: {built}/val, weight: 0.2, epochs: 4}}]",
        f"data.val={built}/val",
        f"data.tokenizer={built}/tokenizer",
        "train.eval_every=3",
    )
    reference = run_train(tmp_path / "ref", data_cache, *overrides)
    assert reference.returncode == 0, reference.output[-3000:]
    first = run_train(tmp_path / "run", data_cache, *overrides, "train.stop_at_step=3")
    assert first.returncode == 75, first.output[-3000:]
    second = run_train(tmp_path / "run", data_cache, *overrides)
    assert second.returncode == 0, second.output[-3000:]
    assert second.losses() == reference.losses() and sorted(second.losses()) == [1, 2, 3, 4, 5, 6]
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_00000006" / "meta.json").read_text())
    sources = meta["loader"]["sources"]
    assert [(s["url"], s["weight"], s["epochs"]) for s in sources] == [
        (f"{built}/train", 0.8, 1.0),
        (f"{built}/val", 0.2, 4.0),
    ]
