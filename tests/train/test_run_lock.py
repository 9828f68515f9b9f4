"""One trainer per run directory: RUN_DIR/trainer.lock (armd_scale/train/run_lock.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from armd_scale.train.run_lock import LOCK_FILE, RunDirLocked, acquire, release, this_process
from tests.hold import Hold

from .conftest import TINY, _env, run_train

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _write_lock(run_dir: Path, **changes) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps(asdict(replace(this_process(), **changes))))
    return path


def test_a_second_trainer_is_refused_and_names_the_holder(tmp_path, data_cache):
    """Two trainers on one run.dir used to interleave metrics.jsonl, overwrite config.yaml and delete each
    other's checkpoints."""
    run_dir = tmp_path / "run"
    argv = ["train", *TINY, f"data.cache_dir={data_cache}", f"run.dir={run_dir}", "train.sample_at_end=0"]
    first = Hold("armd_scale.train.steps:TrainingRun.record:before:2", argv, env=_env(), cwd=str(REPO))
    try:
        first.wait_held()
        config_before = (run_dir / "config.yaml").read_bytes()
        metrics_before = (run_dir / "metrics.jsonl").read_bytes()
        second = run_train(run_dir, data_cache, "train.lr=0.5")
        assert second.returncode == 1, second.output[-3000:]
        holder = f"pid {first.proc.pid} on host {socket.gethostname()}"
        assert f"run.dir {run_dir} is in use by another trainer ({holder}, since " in second.output
        assert "Traceback" not in second.output
        assert (run_dir / "config.yaml").read_bytes() == config_before  # nothing of the first run touched
        assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    finally:
        first.release()
        code, output = first.finish()
    assert code == 0, output[-3000:]
    assert json.loads((run_dir / "exit_status.json").read_text())["code"] == 0  # the first run's own status
    assert not (run_dir / LOCK_FILE).exists()


def test_the_stale_lock_of_a_dead_process_is_taken_over(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    pid = _dead_pid()
    _write_lock(run_dir, pid=pid, started=None)
    run = run_train(run_dir, data_cache, "train.steps=1")
    assert run.returncode == 0, run.output[-3000:]
    assert f"taking over the lock of {run_dir} from pid {pid} on host {socket.gethostname()}" in run.output
    assert f"process {pid} no longer exists" in run.output
    assert not (run_dir / LOCK_FILE).exists()


def test_staleness_rules(tmp_path):
    """Which locks are taken over without asking, and which refuse with how to clear them."""
    import os

    me = this_process()
    said: list[str] = []
    # a live holder on this host: refused
    _write_lock(tmp_path, pid=os.getppid(), started=None, slurm_job_id=None)
    with pytest.raises(RunDirLocked, match=f"in use by another trainer \\(pid {os.getppid()} on host"):
        acquire(tmp_path, said.append)
    # the pid now belongs to another process (its start time differs): stale
    _write_lock(tmp_path, pid=os.getppid(), started=-1.0, slurm_job_id=None)
    held = acquire(tmp_path, said.append)
    assert "now belongs to another process" in said[-1]
    release(tmp_path, held)
    # the host rebooted since: stale
    _write_lock(tmp_path, pid=os.getppid(), boot_id="another-boot", slurm_job_id=None)
    release(tmp_path, acquire(tmp_path, said.append))
    assert "rebooted" in said[-1]
    # another host, no Slurm: cannot be judged, refused with the way out
    path = _write_lock(tmp_path, host="elsewhere.example", slurm_job_id=None)
    with pytest.raises(RunDirLocked, match=f"pid {me.pid} on host elsewhere.example.*delete {path}"):
        acquire(tmp_path, said.append)
    # an earlier run of our own Slurm job (a requeue): stale
    os.environ["SLURM_JOB_ID"] = "4242"
    try:
        _write_lock(tmp_path, host="elsewhere.example", slurm_job_id="4242")
        release(tmp_path, acquire(tmp_path, said.append))
        assert "earlier run of this Slurm job (4242)" in said[-1]
    finally:
        del os.environ["SLURM_JOB_ID"]
    assert not (tmp_path / LOCK_FILE).exists() and [p.name for p in tmp_path.iterdir()] == []  # no debris


def test_a_lock_is_created_whole_or_not_at_all(tmp_path, monkeypatch):
    """The lock content is written to a private name and hard-linked to trainer.lock: link() fails when the
    name exists, also on NFS, where O_EXCL creation was not reliable; a reader never sees a half-written lock."""
    import os

    links: list[tuple[str, str]] = []
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        links.append((Path(src).name, Path(dst).name))
        assert json.loads(Path(src).read_text())["pid"] == os.getpid()  # complete before it gets the name
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    held = acquire(tmp_path)
    assert links == [(f".{LOCK_FILE}.{held.host}.{held.pid}", LOCK_FILE)]
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]
    release(tmp_path, held)


def test_a_live_trainer_of_our_own_slurm_job_is_refused(tmp_path, monkeypatch):
    """Two trainers started in one Slurm allocation share SLURM_JOB_ID: the second took the live first's lock
    over as "an earlier run of this Slurm job", both trained and deleted each other's checkpoints. On this
    host only the holder process decides: refused while it lives, taken over once it is gone."""
    holder_code = (
        "import sys; from armd_scale.train.run_lock import acquire; acquire(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read()"
    )
    env = {**_env(), "SLURM_JOB_ID": "778", "SLURM_RESTART_COUNT": "0"}
    first = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(tmp_path)],
        env=env,
        cwd=str(REPO),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None and first.stdout.readline() == "held\n"
        monkeypatch.setenv("SLURM_JOB_ID", "778")
        said: list[str] = []
        with pytest.raises(RunDirLocked, match=f"in use by another trainer \\(pid {first.pid} on host .*Slurm job 778"):
            acquire(tmp_path, said.append)
        assert said == []
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == first.pid  # still the first's
    finally:
        first.kill()
        first.wait()
    held = acquire(tmp_path, said.append)  # the holder is gone (a requeue): taken over
    assert f"process {first.pid} no longer exists" in said[-1]
    release(tmp_path, held)


def test_a_holder_in_another_pid_namespace_is_not_judged_by_our_pids(tmp_path, monkeypatch):
    """Containers sharing the hostname but not the pid namespace (hostNetwork, --network host): the holder's
    pid means nothing here, so neither a pid that is alive in our namespace (with another start time) nor
    a missing one decides; an earlier run of our Slurm job (a requeue) is still taken over."""
    import os

    other = "pid:[1]"  # no real namespace has inode 1
    assert this_process().pid_ns not in (None, other)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    said: list[str] = []
    for pid, started in ((os.getppid(), -1.0), (_dead_pid(), None)):  # would be "reused" / "gone" here
        _write_lock(tmp_path, pid=pid, started=started, pid_ns=other, slurm_job_id=None)
        with pytest.raises(RunDirLocked, match="it ran in another pid namespace \\(container\\) of this host"):
            acquire(tmp_path, said.append)
    monkeypatch.setenv("SLURM_JOB_ID", "779")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # the same run of our job in another container: may be alive, refused
    _write_lock(tmp_path, pid=_dead_pid(), pid_ns=other, slurm_job_id="779", slurm_restart="1")
    with pytest.raises(RunDirLocked, match="Slurm job 779"):
        acquire(tmp_path, said.append)
    # the run before a requeue: gone
    _write_lock(tmp_path, pid=os.getppid(), pid_ns=other, slurm_job_id="779", slurm_restart="0")
    release(tmp_path, acquire(tmp_path, said.append))
    assert "earlier run of this Slurm job (779, run 0)" in said[-1]
    # our own namespace again: a live pid is respected whatever the job
    _write_lock(tmp_path, pid=os.getppid(), started=None, slurm_job_id="779", slurm_restart="0")
    with pytest.raises(RunDirLocked, match=f"pid {os.getppid()} on host"):
        acquire(tmp_path, said.append)
    assert len(said) == 1  # no other takeover was announced
