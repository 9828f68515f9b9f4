"""The local Slurm cluster behaves like a real one: multi-node jobs, requeue, signals, cleanup.

Why: the launcher tests (slurm/pretrain.sh under this cluster) are only meaningful if the cluster
itself does what a production cluster does. These tests pin the behaviours the launchers rely on
(see the module docstring of ``slurm_cluster`` for the commands and timings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import slurm_cluster
from .slurm_cluster import LocalSlurmCluster, SlurmClusterError, poll_until

pytestmark = pytest.mark.slurm

JOB_TIMEOUT = 60.0


def _skip_if_unavailable() -> None:
    avail = LocalSlurmCluster.is_available()
    if not avail:
        pytest.skip(
            f"Slurm binaries not installed (apt-get install slurmctld slurmd slurm-client munge): {avail.reason}"
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    _skip_if_unavailable()
    with LocalSlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def _write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def test_cluster_has_two_idle_nodes(cluster: LocalSlurmCluster) -> None:
    assert cluster.node_states() == {"n1": "idle", "n2": "idle"}
    # The cluster answers only through its own SLURM_CONF, never the system configuration.
    assert cluster.env["SLURM_CONF"] == str(cluster.conf_path)
    assert "localhost(127.0.0.1)" in cluster.conf_path.read_text()


def test_two_node_job_runs_a_task_on_each_node(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = _write_script(
        tmp_path / "two_nodes.sh",
        "#SBATCH --nodes=2 --ntasks-per-node=1\n"
        'echo "batch on $SLURMD_NODENAME nodes=$SLURM_JOB_NUM_NODES"\n'
        "srun bash -c 'echo \"task node=$SLURMD_NODENAME rank=$SLURM_PROCID\"'\n",
    )
    job = cluster.sbatch(script, "--output", str(out))
    assert cluster.wait_job(job, JOB_TIMEOUT) == "COMPLETED", out.read_text()

    lines = out.read_text().splitlines()
    tasks = sorted(line for line in lines if line.startswith("task "))
    assert tasks == ["task node=n1 rank=0", "task node=n2 rank=1"], lines
    assert "batch on n1 nodes=2" in lines
    info = cluster.job_info(job)
    assert info is not None and info["NodeList"] == "n[1-2]" and info["ExitCode"] == "0:0"


def test_script_text_on_stdin_and_failed_exit_code(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = cluster.sbatch("#!/bin/bash\necho hello\nexit 3\n", "--output", str(out))
    assert cluster.wait_job(job, JOB_TIMEOUT) == "FAILED"
    assert out.read_text().strip() == "hello"
    info = cluster.job_info(job)
    assert info is not None and info["ExitCode"] == "3:0"


def test_job_requeues_itself_on_exit_code_75_and_runs_again(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """The launcher's contract: the trainer exits 75 when preempted, the batch script then runs
    ``scontrol requeue $SLURM_JOB_ID``, and Slurm runs the job again (after the requeue hold)."""
    out = tmp_path / "out.txt"
    marker = tmp_path / "first_run_done"
    script = _write_script(
        tmp_path / "requeue.sh",
        "#SBATCH --nodes=1 --requeue --open-mode=append\n"
        'echo "run restart_count=${SLURM_RESTART_COUNT:-0}"\n'
        # Stand-in for the trainer: preempted (75) on the first run, finishes on the second.
        f"srun bash -c 'if [ -e {marker} ]; then echo finished; else touch {marker}; exit 75; fi'\n"
        "rc=$?\n"
        'if [ "$rc" -eq 75 ]; then\n'
        '  echo "requeueing"\n'
        '  scontrol requeue "$SLURM_JOB_ID"\n'
        "  exit 0\n"
        "fi\n"
        'exit "$rc"\n',
    )
    start = time.monotonic()
    job = cluster.sbatch(script, "--output", str(out))
    assert cluster.wait_job(job, JOB_TIMEOUT) == "COMPLETED", cluster.diagnostics(job)
    elapsed = time.monotonic() - start

    text = out.read_text()
    runs = [line for line in text.splitlines() if line.startswith("run ")]
    assert runs == ["run restart_count=0", "run restart_count=1"], text
    assert "requeueing" in text and text.rstrip().endswith("finished"), text
    info = cluster.job_info(job)
    assert info is not None and info["Restarts"] == "1"
    # The requeue left a PENDING record in jobcomp.txt, then the final COMPLETED one.
    assert [r["JobState"] for r in cluster.jobcomp_records(job)] == ["PENDING", "COMPLETED"]
    # Slurm holds a requeued job for cred_expire + 1 seconds before it may run again.
    assert elapsed >= cluster.cred_expire, elapsed


def test_requeue_from_outside_runs_the_job_again(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """``scontrol requeue`` on a running job kills it, holds it (Reason=BeginTime) and runs it again."""
    out = tmp_path / "out.txt"
    ready = tmp_path / "ready"
    script = _write_script(
        tmp_path / "outside.sh",
        "#SBATCH --nodes=1 --open-mode=append\n"
        'echo "run restart_count=${SLURM_RESTART_COUNT:-0}"\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then\n'
        f"  touch {ready}\n"
        "  sleep 300 & wait $!\n"
        "fi\n",
    )
    job = cluster.sbatch(script, "--output", str(out))
    poll_until(ready.exists, JOB_TIMEOUT, "first run to start", on_timeout=lambda: cluster.diagnostics(job))
    cluster.requeue(job)

    def requeued() -> dict[str, str] | None:
        info = cluster.job_info(job)
        return info if info and info["JobState"] == "PENDING" and info["Restarts"] == "1" else None

    info = poll_until(requeued, JOB_TIMEOUT, "job to be pending after requeue")
    assert info["Reason"] == "BeginTime", info
    assert cluster.wait_job(job, JOB_TIMEOUT) == "COMPLETED", out.read_text() + cluster.diagnostics(job)
    text = out.read_text()
    assert "run restart_count=0" in text and "run restart_count=1" in text, text
    assert "DUE TO JOB REQUEUE" in text, text


def test_scancel_signal_reaches_batch_trap(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    ready = tmp_path / "ready"
    script = _write_script(
        tmp_path / "trap.sh",
        "#SBATCH --nodes=1\n"
        "trap 'echo \"got USR1\"; kill $child; exit 0' USR1\n"
        "sleep 300 & child=$!\n"
        f"touch {ready}\n"
        "wait $child\n"
        "echo no-signal\n"
        "exit 1\n",
    )
    job = cluster.sbatch(script, "--output", str(out))
    # The trap is in place once the script has written `ready`; signalling earlier would kill bash.
    poll_until(ready.exists, JOB_TIMEOUT, "job to install its trap", on_timeout=lambda: cluster.diagnostics(job))
    cluster.signal_job(job, "USR1")
    assert cluster.wait_job(job, JOB_TIMEOUT) == "COMPLETED", out.read_text()
    assert out.read_text().splitlines() == ["got USR1"]


def test_time_limit_signal_reaches_batch_trap(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """``--signal=B:USR1@<secs>``, as slurm/pretrain.sh uses it. slurmctld checks time limits
    every 30 s, so with ``--time=1`` and ``@58`` the signal comes 2 to ~32 s after the start."""
    out = tmp_path / "out.txt"
    script = _write_script(
        tmp_path / "timed.sh",
        "#SBATCH --nodes=1 --time=1 --signal=B:USR1@58\n"
        "trap 'echo \"got USR1 after $((SECONDS))s\"; kill $child; exit 0' USR1\n"
        "sleep 300 & child=$!\n"
        "wait $child\n"
        "exit 1\n",
    )
    job = cluster.sbatch(script, "--output", str(out))
    assert cluster.wait_job(job, 75.0) == "COMPLETED", out.read_text()
    assert out.read_text().startswith("got USR1 after "), out.read_text()


def _live_cluster_pids(c: LocalSlurmCluster) -> list[int]:
    return c._cluster_pids()


def test_stop_kills_daemons_and_leftover_job_processes(tmp_path: Path) -> None:
    """A second cluster: a finished job leaves an orphan, a running job is still going; after
    the context exits no daemon and no job process of that cluster remains."""
    _skip_if_unavailable()
    workdir = tmp_path / "c2"
    orphan_ready = tmp_path / "orphan_ready"
    running_ready = tmp_path / "running_ready"
    with LocalSlurmCluster(workdir) as c:
        daemon_pids = [p.pid for p in c._procs.values()]
        assert len(daemon_pids) == 4  # munged, slurmctld, 2 x slurmd
        # proctrack/linuxproc loses a background process whose parent has exited.
        orphan = c.sbatch(f"#!/bin/bash\nsleep 300 &\ntouch {orphan_ready}\n")
        assert c.wait_job(orphan, JOB_TIMEOUT) == "COMPLETED"
        c.sbatch(f"#!/bin/bash\ntouch {running_ready}\nsleep 300\n")
        poll_until(running_ready.exists, JOB_TIMEOUT, "second job to run")
        assert orphan_ready.exists()
        assert any(
            Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00300\x00")
            for pid in _live_cluster_pids(c)
            if Path(f"/proc/{pid}/cmdline").exists()
        ), "expected the job's sleep processes to be running"
    for pid in daemon_pids:
        assert not slurm_cluster._alive(pid), f"daemon {pid} still running"
    assert _live_cluster_pids(c) == []
    # Stopping twice is harmless.
    c.stop()


def test_failed_start_cleans_up_and_shows_the_log(tmp_path: Path) -> None:
    """If slurmctld cannot start, the error carries its log and munged is stopped again."""
    _skip_if_unavailable()

    class BrokenConf(LocalSlurmCluster):
        def _write_conf(self) -> None:
            super()._write_conf()
            with open(self.conf_path, "a") as f:
                f.write("SelectType=select/does_not_exist\n")

    c = BrokenConf(tmp_path / "broken", startup_timeout=30)
    with pytest.raises(SlurmClusterError, match="slurmctld exited") as err:
        c.start()
    assert "does_not_exist" in str(err.value)
    assert c._procs == {}
    assert _live_cluster_pids(c) == []


def test_refuses_a_directory_with_foreign_files(tmp_path: Path) -> None:
    _skip_if_unavailable()
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SlurmClusterError, match="not empty"):
        LocalSlurmCluster(tmp_path).start()
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_is_available_names_missing_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_cluster, "_which", lambda name: None if name == "slurmd" else "/bin/true")
    avail = LocalSlurmCluster.is_available()
    assert not avail
    assert "slurmd (package slurmd)" in avail.reason


def test_env_drops_variables_of_an_enclosing_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    monkeypatch.setenv("SBATCH_PARTITION", "gpu")
    env = LocalSlurmCluster(tmp_path).env
    assert "SLURM_JOB_ID" not in env and "SBATCH_PARTITION" not in env
    assert env["SLURM_CONF"] == str(tmp_path / "slurm.conf")
    assert os.environ["SLURM_JOB_ID"] == "999"  # the caller's environment is left alone


def test_cli_entry_point_starts_and_stops(tmp_path: Path) -> None:
    """``python -m tests.integration.slurm_cluster --dir D`` prints the export line and stops on
    SIGINT (Ctrl-C) without leaving processes."""
    _skip_if_unavailable()
    repo = Path(__file__).resolve().parents[2]
    workdir = tmp_path / "cli"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.slurm_cluster", "--dir", str(workdir)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # returns "" at EOF, so this cannot hang past exit
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(lines)
        assert f"export SLURM_CONF={workdir / 'slurm.conf'}" in text, text
        env = {**os.environ, "SLURM_CONF": str(workdir / "slurm.conf")}
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%D %T"], env=env, capture_output=True, text=True, check=True)
        assert sinfo.stdout.split() == ["2", "idle"]
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        rest, _ = proc.communicate(timeout=JOB_TIMEOUT)
        assert proc.returncode == 0, text + rest
        assert "Stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert LocalSlurmCluster(workdir)._cluster_pids() == []
