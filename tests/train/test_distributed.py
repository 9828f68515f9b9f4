"""Two gloo processes: ZeRO stages and tensor parallelism reproduce the single-process run."""

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
