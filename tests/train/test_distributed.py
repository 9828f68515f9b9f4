"""Two gloo processes: ZeRO stages and tensor parallelism reproduce the single-process run."""

import json

import pytest

from .conftest import run_train

pytestmark = pytest.mark.distributed

TOLERANCE = 1e-5  # fp32; reductions across ranks change summation order only


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_cache):
    run = run_train(tmp_path_factory.mktemp("single") / "run", data_cache)
    assert run.returncode == 0, run.output
    return run.losses()


@pytest.mark.parametrize(
    "overrides",
    [("parallel.zero_stage=1",), ("parallel.zero_stage=2",), ("parallel.zero_stage=3",), ("parallel.tp=2",)],
    ids=["zero1", "zero2", "zero3", "tp2"],
)
def test_two_processes_match_one(overrides, single, tmp_path, data_cache):
    run = run_train(tmp_path / "run", data_cache, *overrides, nproc=2)
    assert run.returncode == 0, run.output[-3000:]
    losses = run.losses()
    assert sorted(losses) == sorted(single) and len(losses) >= 5
    for step, loss in single.items():
        assert abs(losses[step] - loss) <= TOLERANCE, f"step {step}: {losses[step]} vs {loss}"


def test_deepspeed_launcher_matches_one_process(single, tmp_path, data_cache):
    """The `deepspeed` launcher (which adds --local_rank=N to our arguments) runs the same training."""
    run = run_train(tmp_path / "run", data_cache, "parallel.zero_stage=2", nproc=2, launcher="deepspeed")
    assert run.returncode == 0, run.output[-3000:]
    losses = run.losses()
    for step, loss in single.items():
        assert abs(losses[step] - loss) <= TOLERANCE, f"step {step}: {losses[step]} vs {loss}"


@pytest.mark.parametrize(
    "stage,first,second",
    [(1, 2, 1), (1, 1, 2), (0, 2, 1), (3, 2, 1), (1, "tp2", 1), (2, 1, "tp2")],
    ids=["zero1-2to1", "zero1-1to2", "zero0-2to1", "zero3-2to1", "zero1-tp2to1", "zero2-1totp2"],
)
def test_resume_on_another_topology(stage, first, second, single, tmp_path, data_cache):
    """Saved on one topology, resumed on another: same weights and optimizer state (the next three
    losses match the uninterrupted run) and the data continues where it stopped."""

    def topology(spec):
        return (2, ["parallel.tp=2"]) if spec == "tp2" else (spec, [])

    run_dir = tmp_path / "run"
    zero = f"parallel.zero_stage={stage}"
    nproc, extra = topology(first)
    a = run_train(run_dir, data_cache, zero, "train.stop_at_step=3", *extra, nproc=nproc)
    assert a.status()["code"] == 75, a.output[-3000:]
    nproc, extra = topology(second)
    b = run_train(run_dir, data_cache, zero, *extra, nproc=nproc)
    assert b.returncode == 0, b.output[-3000:]
    assert "resumed from step_00000003" in b.output
    if stage > 0:
        assert "via universal checkpoint" in b.output
        assert (run_dir / "checkpoints" / "step_00000003" / "universal" / "step_00000003").is_dir()
    losses = b.losses()
    for step in (4, 5, 6):
        assert abs(losses[step] - single[step]) <= TOLERANCE, f"step {step}: {losses[step]} vs {single[step]}"


def test_impossible_reshard_is_refused_with_a_reason(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    a = run_train(run_dir, data_cache, "train.stop_at_step=3", nproc=1)
    assert a.returncode == 75 and a.status()["code"] == 75, a.output[-3000:]
    b = run_train(run_dir, data_cache, "parallel.zero_stage=2", nproc=1)
    assert b.returncode == 1
    assert "parallel.zero_stage=0 and the run asks for 2" in b.output


def test_the_checkpoint_lists_bad_chunks_that_only_another_rank_met(tmp_path, data_cache):
    """Ranks read different chunks, so with data.on_bad_shard=skip only the rank that reads a bad
    chunk knows it. The saved loader state (written by rank 0) must still list a bad chunk that only
    rank 1 read, or a resumed run would train on it."""
    import shutil
    from pathlib import Path

    from armd_scale.data.loading.loader import ShardLoader

    (built,) = data_cache.glob("builtin-pydoc-*")
    data = tmp_path / "data"
    shutil.copytree(built, data)
    plan = dict(global_batch_size=8, micro_batch_size=2, world_size=2, seed=1234, prefetch=0)
    ranks = [ShardLoader(str(data / "train"), rank=r, **plan) for r in range(2)]
    first_windows = [{k for lane in ld.lanes for k in ld.order.window_at(0, lane, 0).keys[:3]} for ld in ranks]
    key = min(first_windows[1] - first_windows[0])  # read by rank 1 in the first steps, never by rank 0
    _, shard_url, chunk = ranks[1].chunk_name(key)
    manifest = ranks[1].manifests[0]
    start = chunk * manifest.chunk_samples * 1024  # records of 1 KiB at seq_len 32
    path = Path(shard_url)
    raw = bytearray(path.read_bytes())
    raw[start + 600] ^= 0xFF
    path.write_bytes(bytes(raw))
    overrides = (
        f"data.train={data}/train",
        f"data.val={data}/val",
        f"data.tokenizer={data}/tokenizer",
        "data.on_bad_shard=skip",
        "train.stop_at_step=3",
    )
    run = run_train(tmp_path / "run", data_cache, *overrides, nproc=2)
    assert run.status()["code"] == 75, run.output[-3000:]
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_00000003" / "meta.json").read_text())
    assert meta["loader"]["sources"][0]["bad_chunks"] == {path.name: [chunk]}
