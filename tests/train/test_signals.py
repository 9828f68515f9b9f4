"""Stop requests at any moment: during the minutes of set-up before the step loop, and Ctrl-C.

Each test holds a real `armd train` process at a chosen point (tests/hold.py), sends the signal there,
then lets it go on; pipes, not sleeps, order the two processes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.hold import Hold

from .conftest import TINY, _env, run_train

REPO = Path(__file__).resolve().parents[2]


def _argv(run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    return ["train", *TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", "train.sample_at_end=0", *overrides]


def _held(spec: str, run_dir: Path, cache: Path, *overrides: str) -> Hold:
    hold = Hold(spec, _argv(run_dir, cache, *overrides), env=_env(), cwd=str(REPO))
    hold.wait_held()
    return hold


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "exit_status.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_set_up_exits_75_without_a_checkpoint(sig, tmp_path, data_cache):
    """Before the handlers were installed (they came after data, engine and resume set-up, which can take
    minutes) SIGTERM and SIGUSR1 killed the trainer without the requeue code, and Ctrl-C raised a
    traceback and left exit_status.json at "running"."""
    run_dir = tmp_path / "run"
    hold = _held("armd_scale.train.loop:open_train_data:before:1", run_dir, data_cache)
    hold.signal(sig)
    hold.release()
    code, output = hold.finish()
    assert code == 75, output[-3000:]
    assert f"{sig.name} during set-up (data): stopping before training, no checkpoint written; exit 75" in output
    status = _status(run_dir)
    assert status["code"] == 75 and status["reason"] == f"{sig.name} during set-up" and status["step"] == 0
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir())
    assert not (run_dir / "trainer.lock").exists()  # released: the requeued job can take the run directory


def test_a_signal_once_the_engine_exists_saves_before_the_first_step(tmp_path, data_cache):
    """A stop requested while the engine was being built is acted on at the first step boundary: a
    checkpoint (here of step 0), exit 75, and the resumed run trains every step."""
    run_dir = tmp_path / "run"
    hold = _held("armd_scale.train.loop:build_engine:after:1", run_dir, data_cache)
    hold.signal(signal.SIGUSR1)
    hold.release()
    code, output = hold.finish()
    assert code == 75, output[-3000:]
    assert "stopping at step 0 (SIGUSR1) before training; exit 75" in output
    assert (run_dir / "checkpoints" / "step_00000000" / "COMPLETE").is_file()
    assert _status(run_dir)["code"] == 75
    resumed = run_train(run_dir, data_cache)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "resumed from step_00000000" in resumed.output and sorted(resumed.losses()) == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_saves_and_stops_cleanly(tmp_path, data_cache):
    """Ctrl-C used to raise KeyboardInterrupt mid-step: no checkpoint, a traceback, and exit_status.json
    left at "running"."""
    run_dir = tmp_path / "run"
    hold = _held(
        "armd_scale.train.steps:TrainingRun.record:before:2", run_dir, data_cache, "train.checkpoint_every=100"
    )
    hold.signal(signal.SIGINT)
    hold.release()
    code, output = hold.finish()
    assert code == 75, output[-3000:]
    assert "stopping at step 2 (SIGINT); checkpoint saved, exit 75" in output and "Traceback" not in output
    assert (run_dir / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
    status = _status(run_dir)
    assert status["code"] == 75 and status["step"] == 2 and status["reason"] == "SIGINT"


def test_a_second_ctrl_c_aborts_at_once_and_says_so(tmp_path, data_cache):
    """The first Ctrl-C asks for a save; a second one while it saves aborts: exit 130, recorded as failed."""
    run_dir = tmp_path / "run"
    points = [
        "armd_scale.train.steps:TrainingRun.record:before:2",
        "armd_scale.train.checkpoint:Checkpointer.save:before:1",
    ]
    hold = Hold(points, _argv(run_dir, data_cache, "train.checkpoint_every=100"), env=_env(), cwd=str(REPO))
    hold.wait_held()
    hold.signal(signal.SIGINT)
    hold.release()
    hold.wait_held()  # the first request was seen: the save of step 2 is about to start
    hold.signal(signal.SIGINT)  # raises KeyboardInterrupt where the process stands
    hold.release()
    code, output = hold.finish()
    assert code == 130, output[-3000:]
    assert "interrupted (a second Ctrl-C); no checkpoint was written" in output
    status = _status(run_dir)
    assert status["code"] == 130 and status["reason"] == "failed: interrupted (a second Ctrl-C)"
    assert not (run_dir / "checkpoints" / "step_00000002").exists()
    assert not (run_dir / "trainer.lock").exists()


def _agree_on_a_stop(rank: int, port: int, out: str) -> None:
    import os

    import torch
    import torch.distributed as dist

    from armd_scale.train.preemption import StopRequest

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        stop = StopRequest()
        if rank == 1:  # the signal reached only this rank's node so far
            os.kill(os.getpid(), signal.SIGUSR1)
        stopping = stop.should_stop(torch.device("cpu"))
        Path(out, f"rank{rank}.json").write_text(json.dumps({"stop": stopping, "reason": stop.reason}))
    finally:
        dist.destroy_process_group()


def test_every_rank_logs_the_signal_whichever_rank_received_it(tmp_path: Path) -> None:
    """Slurm delivers USR1 to the nodes of a job at slightly different times; rank 0, which logs, used to
    say "another rank was signalled" when its peer saw the signal first, so the log depended on a race."""
    import torch.multiprocessing as mp

    from armd_scale.ports import free_port

    mp.start_processes(_agree_on_a_stop, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen == [{"stop": True, "reason": "SIGUSR1"}] * 2
