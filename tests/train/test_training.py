"""End-to-end single-process training: losses, checkpoints, resume, preemption, guards."""

import json
import os
import shutil
import signal

import pytest

from armd_scale.config import load_config
from armd_scale.train.schedule import lr_factor

from .conftest import TINY, run_train, start_train, wait_for


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


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_a_damaged_newest_checkpoint_is_named_and_the_run_resumes_from_the_intact_one(
    damage, reference, tmp_path, data_cache
):
    """Zeroed bytes used to resume silently (no checksums); a truncated file ended in a zip error naming no
    file, with no fallback to the older intact checkpoint."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    (run_dir / "metrics.jsonl").unlink()
    bad = run_dir / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    size = bad.stat().st_size
    if damage == "zeroed":
        with open(bad, "r+b") as f:
            f.seek(size // 2)
            f.write(bytes(512))
    else:
        os.truncate(bad, size - 1000)
    resumed = run_train(run_dir, data_cache)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"checkpoint {bad.parent} is damaged: {bad} " in resumed.output
    assert "Set aside as step_00000006.corrupt; resuming from the newest intact checkpoint, step_00000003" in (
        resumed.output
    )
    assert "resumed from step_00000003" in resumed.output
    assert resumed.losses() == {s: v for s, v in reference.losses().items() if s > 3}  # nothing lost but time
    assert (run_dir / "checkpoints" / "step_00000006.corrupt" / bad.name).is_file()  # kept for inspection
    assert resumed.checkpoints() == ["step_00000003", "step_00000006"]


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


def test_resume_refuses_a_change_of_the_function_the_model_computes(reference, tmp_path, data_cache):
    """rope_theta and prefix_agg change no shape but what the saved weights compute; they used to resume."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    run = run_train(run_dir, data_cache, "model.rope_theta=500", "model.prefix_agg=mean", "train.steps=8")
    assert run.returncode == 1, run.output[-3000:]
    assert "model.prefix_agg: checkpoint 'sum' vs config 'mean'" in run.output
    assert "model.rope_theta: checkpoint 10000.0 vs config 500.0" in run.output
    assert "Traceback" not in run.output


def test_resume_with_more_steps_extends_the_run(reference, tmp_path, data_cache):
    """Resuming with more steps continues on the new schedule and the loss keeps falling."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    run = run_train(run_dir, data_cache, "train.steps=9")
    assert run.returncode == 0, run.output
    losses = run.losses()
    assert sorted(losses) == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # metrics.jsonl is appended across invocations
    assert {s: losses[s] for s in range(1, 7)} == reference.losses()  # the first invocation's record is kept
    # the new schedule, not the old one's floor: lr at step s is lr * factor(s) of the 9-step config
    longer = load_config(overrides=[*TINY, "train.steps=9"]).train
    lrs = {r["step"]: r["lr"] for r in run.records() if "lr" in r}
    for step in (7, 8, 9):
        assert lrs[step] == pytest.approx(longer.lr * lr_factor(step, longer), rel=1e-9), step
    assert lrs[7] > longer.lr * longer.min_lr_ratio * 1.5  # the old 6-step schedule would sit at its floor
    # and the loss keeps falling: single steps are noisy (one batch each; even an uninterrupted 9-step run
    # has loss 7 > loss 6), so compare the three added steps with the first invocation's last three
    assert sum(losses[s] for s in (7, 8, 9)) < sum(losses[s] for s in (4, 5, 6)), losses
    assert losses[9] < losses[6], losses


def test_activation_checkpointing_gives_the_same_losses(reference, tmp_path, data_cache):
    """Recomputing activations in the backward pass changes memory, not arithmetic: bit-identical losses.
    (tests/model/test_checkpointing.py shows the recomputation really happens.)"""
    run = run_train(tmp_path / "run", data_cache, "parallel.activation_checkpointing=true")
    assert run.returncode == 0, run.output
    assert run.losses() == reference.losses()


def test_bf16_training_stays_close_to_fp32(reference, tmp_path, data_cache):
    """parallel.precision=bf16 on the CPU: bf16 weights and activations with fp32 master weights give
    losses within 2% of the fp32 run over the whole (short) run, and they still fall."""
    run = run_train(tmp_path / "run", data_cache, "parallel.precision=bf16")
    assert run.returncode == 0, run.output
    bf16, fp32 = run.losses(), reference.losses()
    assert sorted(bf16) == sorted(fp32)
    assert bf16 != fp32  # bf16 really ran (its rounding shows)
    for step, loss in fp32.items():
        assert abs(bf16[step] - loss) <= 0.02 * loss, (step, bf16[step], loss)
    assert bf16[6] < bf16[1]
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["topology"]["precision"] == "bf16"


def test_max_minutes_saves_and_exits_75(tmp_path, data_cache):
    """train.max_minutes stops at a step boundary the way a preemption does: checkpoint, status, 75."""
    run = run_train(tmp_path / "run", data_cache, "train.steps=500", "train.max_minutes=0.002")
    assert run.returncode == 75, run.output[-3000:]
    status = run.status()
    assert status["code"] == 75 and status["reason"] == "train.max_minutes reached"
    assert 1 <= status["step"] < 500 and run.checkpoints()[-1] == f"step_{status['step']:08d}"
    assert "stopping at step" in run.output


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


def test_config_yaml_is_the_config_the_run_used(tmp_path, data_cache):
    """config.yaml is the config resolved from the command line, exactly: what the run derives from the
    shards (the tokenizer's 128 ids below a padded model.vocab_size=192) is in run_facts.json and never
    written back into it. The model is built from config + facts, so the checkpoint says 128."""
    import yaml

    from armd_scale.config import dump_config
    from armd_scale.pretrained import load_pretrained
    from armd_scale.train.run_facts import RunFacts

    overrides = ("model.vocab_size=192", "train.steps=1", "train.checkpoint_every=1")
    run = run_train(tmp_path / "run", data_cache, *overrides)
    assert run.returncode == 0, run.output
    resolved = load_config(overrides=[*TINY, f"data.cache_dir={data_cache}", f"run.dir={run.dir}", *overrides])
    assert (run.dir / "config.yaml").read_text() == dump_config(resolved)
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved == resolved.to_dict() and saved["model"]["tokenizer_vocab_size"] is None
    facts = RunFacts.read(run.dir)
    assert facts is not None and facts.tokenizer_vocab_size == 128  # data.vocab_size of TINY: the tokenizer's ids
    assert facts.tokenizer.kind == "sentencepiece" and facts.tokenizer.location and facts.world_size == 1
    assert facts.train[0]["url"].endswith("/train") and facts.val and facts.versions["armd_scale"]
    pretrained = load_pretrained(run.dir)
    assert pretrained.config.model.tokenizer_vocab_size == 128  # the checkpoint's config: config + facts
    assert pretrained.tokenizer().sha256 == facts.tokenizer.checksum


def test_a_run_written_before_run_facts_resumes(tmp_path, data_cache):
    """An old run folder: config.yaml carries model.tokenizer_vocab_size (the old code wrote it back),
    checkpoints carry only the loose tokenizer keys, and there is no run_facts.json. It resumes."""
    import hashlib

    import yaml

    run_dir = tmp_path / "run"
    first = run_train(run_dir, data_cache, "model.vocab_size=192", "train.steps=3")
    assert first.returncode == 0, first.output
    (run_dir / "run_facts.json").unlink()
    for meta_path in (run_dir / "checkpoints").glob("step_*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta.pop("tokenizer")  # as written before the typed reference
        meta_path.write_text(json.dumps(meta))
        complete = meta_path.parent / "COMPLETE"  # records the checksum of meta.json as it was written
        record = json.loads(complete.read_text())
        record["meta_sha256"] = hashlib.sha256(meta_path.read_bytes()).hexdigest()
        complete.write_text(json.dumps(record))
    old = yaml.safe_load((run_dir / "config.yaml").read_text())
    old["model"]["tokenizer_vocab_size"] = 128
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    second = run_train(run_dir, data_cache, "model.vocab_size=192", "model.tokenizer_vocab_size=128", "train.steps=6")
    assert second.returncode == 0, second.output[-3000:]
    assert "resum" in second.output.lower() and sorted(second.losses()) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "run_facts.json").read_text())["tokenizer_vocab_size"] == 128
