"""A real, private 2-node Slurm cluster on localhost for integration tests.

Why: the Slurm launchers (``slurm/*.sh``) are only trustworthy if they have run under a real
``slurmctld``/``slurmd``, with real ``sbatch``/``srun``, requeue and signals. Mocks would not catch
a wrong ``#SBATCH`` line, a missing ``--requeue`` or a trap that never fires.

:class:`LocalSlurmCluster` starts, inside a directory it is given, everything such a cluster needs
and nothing outside it: its own ``munged`` (own key, socket, pid and seed files), a generated
``slurm.conf``, one ``slurmctld`` and two ``slurmd`` (``slurmd -N n1``, ``slurmd -N n2``) that
listen on 127.0.0.1 on distinct free ports. The system's munge and Slurm services are neither used
nor touched. Callers pass :attr:`LocalSlurmCluster.env` (it carries ``SLURM_CONF``) to every Slurm
command they run. On exit, every daemon it started and every process left by its jobs is stopped.

Needs root (``SlurmUser=root``; ``slurmd`` must be able to start jobs) and the Debian packages
``slurmctld slurmd slurm-client munge`` (``.ci/install_slurm.sh``). Tested with Slurm 22.05 and
munge 0.5.15 (Debian bookworm).

Behaviour of this cluster that callers rely on (measured on a 2-core machine)
------------------------------------------------------------------------------
* Start-up to both nodes ``idle``: about 2-3 s. A 2-node ``srun`` job finishes about 1 s after
  ``sbatch``.
* Requeue. ``scontrol requeue <jobid>`` works both from outside and from inside the batch script
  (``scontrol requeue "$SLURM_JOB_ID"``, e.g. after the trainer exits with code 75). The running
  job is killed at once (its output ends with ``*** JOB <id> ON n1 CANCELLED AT ... DUE TO JOB
  REQUEUE ***``), it goes back to ``PENDING`` with ``Reason=BeginTime`` and runs again with
  ``SLURM_RESTART_COUNT`` incremented (unset on the first run, ``1`` on the second). ``--requeue``
  on the job (or ``JobRequeue=1``, set here) makes it requeue-able.
  Slurm holds a requeued job until ``cred_expire + 1`` seconds have passed (``AuthInfo=
  cred_expire``, default 120 s, minimum 5 s; a smaller value is rejected and silently replaced by
  120). This cluster sets ``cred_expire=10``, so a requeued job starts again about 11 s after the
  requeue; on a production cluster expect about 2 minutes. The hold cannot be skipped safely:
  ``scontrol update JobId=<id> StartTime=now`` does start the job at once, but a ``slurmd`` that
  killed the previous run refuses it until the credential has expired (``Job <id> already
  killed, do not launch batch job``) and the job ends ``FAILED``. A shorter hold is a matter of
  ``cred_expire`` (constructor argument, >= 5). Requeued jobs start as soon as the hold ends only
  because of ``SchedulerParameters=sched_interval=1``; with Slurm's default (60 s) they can sit
  for up to a further 30-60 s.
  Submit with ``--open-mode=append``: otherwise every run truncates the job's output file.
* Signals. ``scancel --signal=USR1 --batch <jobid>`` (:meth:`LocalSlurmCluster.signal_job`)
  reaches a ``trap`` in the batch shell within about 0.1 s. ``sbatch --time=1
  --signal=B:USR1@<secs>`` also works, but slurmctld checks time limits only every 30 s (fixed in
  the source, no setting), so the signal arrives up to 30 s after ``<secs>`` before the limit.
  Bash runs a trap only between foreground commands, so a script that must react promptly runs
  its work as ``cmd & wait $!``.
* ``ProctrackType=proctrack/linuxproc`` finds a job's processes through their parent chain, so a
  background process whose parent already exited (``sleep 100 &`` at the end of a script) is not
  killed when the job ends. :meth:`LocalSlurmCluster.stop` removes such leftovers by their
  environment (``SLURM_CONF`` of this cluster plus ``SLURM_JOB_ID``).
* There is no accounting database, so ``sacct`` does not work. Job records stay in slurmctld for
  ``MinJobAge`` (1 day here) and every job end (including each requeue, recorded with
  ``JobState=PENDING``) is appended to ``<dir>/jobcomp.txt`` (``JobCompType=jobcomp/filetxt``);
  :meth:`LocalSlurmCluster.wait_job` reads ``scontrol show job`` and falls back to that file.
* The ``slurmd`` logs contain ``mpi/pmix ... can not load PMIx library`` errors at start-up; they
  are harmless (``MpiDefault=none``).

By hand (see docs/SLURM.md)::

    python -m tests.integration.slurm_cluster --dir /tmp/slurm
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from armd_scale.ports import free_ports

__all__ = [
    "TERMINAL_JOB_STATES",
    "Availability",
    "LocalSlurmCluster",
    "SlurmClusterError",
    "poll_until",
]

#: Binaries the cluster needs, and the Debian package that ships each one.
REQUIRED_BINARIES: dict[str, str] = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "sinfo": "slurm-client",
    "squeue": "slurm-client",
}

#: Job states after which a job will not run again by itself (a requeued job is PENDING instead).
TERMINAL_JOB_STATES: frozenset[str] = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)

NODE_NAMES: tuple[str, ...] = ("n1", "n2")
PARTITION = "debug"

# Environment variables that would make Slurm commands act on another cluster or job (for example
# when the tests themselves run inside a job on a real cluster); they are removed from `env`.
_FOREIGN_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")
# Set in the environment of every daemon and of every job submitted with `env`, so that `stop()`
# finds the processes of this cluster (and only those) even after their parents have exited.
_MARKER_VAR = "ARMD_LOCAL_SLURM_DIR"
# Written into a directory used by a cluster, so that a later start may safely clear it.
_DIR_STAMP = ".local_slurm_cluster"
# sun_path of a Unix socket holds 108 bytes; munged's socket and slurmstepd's sockets in the spool
# directory (``<spool>/<node>_<jobid>.<stepid>``) must fit.
_MAX_SOCKET_DIR_LEN = 80
_POLL_S = 0.1

_T = TypeVar("_T")


class SlurmClusterError(RuntimeError):
    """The local cluster could not be started, or a Slurm command on it failed."""


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a local cluster can run here; falsy with a human-readable ``reason`` when not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def poll_until(
    condition: Callable[[], _T | None],
    timeout: float,
    what: str,
    interval: float = _POLL_S,
    on_timeout: Callable[[], str] | None = None,
) -> _T:
    """Call ``condition`` until it returns something truthy and return that.

    Why: the cluster's state changes asynchronously, and fixed sleeps are either slow or flaky.
    Raises ``TimeoutError`` naming ``what`` (plus ``on_timeout()``'s diagnostics) after ``timeout``
    seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{detail}" if detail else ""))
        time.sleep(interval)


def _which(name: str) -> str | None:
    """Find a binary on PATH or in the sbin directories, which a non-login PATH may lack."""
    extra = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages (empty marker when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (no file) ---"
    body = "\n".join(text.splitlines()[-lines:])
    return f"--- {path} (last {lines} lines) ---\n{body}"


def parse_key_values(line: str) -> dict[str, str]:
    """Parse one ``scontrol show ... -o`` or jobcomp line (``Key=value Key=value ...``).

    Values may contain ``=`` (``TRES=cpu=2,mem=2G``) and spaces; a new field starts only where
    whitespace is followed by ``Key=``.
    """
    fields: dict[str, str] = {}
    for part in re.split(r"\s+(?=[A-Za-z][\w:/]*=)", line.strip()):
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value.strip()
    return fields


def _read_proc_environ(pid: int) -> dict[bytes, bytes] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[bytes, bytes] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    return env


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; fields after it are fixed.
    rest = stat[stat.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def _own_ancestors() -> set[int]:
    """This process and its ancestors, which a sweep must never kill (the user's shell may have
    ``SLURM_CONF`` of this cluster exported)."""
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        stat = _proc_stat(pid)
        if stat is None:
            break
        pid = stat[1]
        pids.add(pid)
    return pids


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


class LocalSlurmCluster:
    """A private Slurm cluster (nodes ``n1``, ``n2``; partition ``debug``) on 127.0.0.1.

    Use as a context manager::

        with LocalSlurmCluster(tmp_path) as cluster:
            job = cluster.sbatch(script_path, "--nodes=2", "--output", str(out))
            assert cluster.wait_job(job, timeout=60) == "COMPLETED"
            subprocess.run(["squeue"], env=cluster.env)

    ``workdir`` must be empty, missing, or a directory a previous cluster used (its files are
    then replaced). Everything the cluster writes stays in it: ``slurm.conf``, ``munge/``,
    ``state/``, ``spool/<node>/``, ``log/`` (daemon logs), ``jobcomp.txt`` and ``jobs/`` (the
    default working directory of submitted jobs, so ``slurm-<id>.out`` files do not land in the
    caller's directory).

    ``cpus_per_node`` and ``real_memory_mb`` are what Slurm is told each node has;
    ``SlurmdParameters=config_overrides`` makes Slurm believe it even on a smaller machine, so both
    nodes can run tasks at the same time on 2 cores. Partition ``debug`` has ``OverSubscribe=YES``:
    jobs that pass ``--oversubscribe`` may share CPUs. ``cred_expire`` (>= 5) is the step
    credential lifetime and, with one extra second, how long Slurm holds a requeued job.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        cpus_per_node: int = 2,
        real_memory_mb: int = 2048,
        cred_expire: int = 10,
        startup_timeout: float = 60.0,
        cluster_name: str = "armdtest",
        log_level: str = "info",
    ) -> None:
        if cred_expire < 5:
            raise ValueError("cred_expire must be >= 5 (Slurm replaces smaller values with 120)")
        self.workdir = Path(workdir).absolute()
        self.cpus_per_node = cpus_per_node
        self.real_memory_mb = real_memory_mb
        self.cred_expire = cred_expire
        self.startup_timeout = startup_timeout
        self.cluster_name = cluster_name
        self.log_level = log_level
        self.nodes: tuple[str, ...] = NODE_NAMES
        self.partition = PARTITION

        self.conf_path = self.workdir / "slurm.conf"
        self.munge_dir = self.workdir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.state_dir = self.workdir / "state"
        self.spool_dir = self.workdir / "spool"
        self.log_dir = self.workdir / "log"
        self.jobs_dir = self.workdir / "jobs"
        self.jobcomp_path = self.workdir / "jobcomp.txt"

        self.ctld_port = 0
        self.node_ports: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started = False
        self._binaries: dict[str, str] = {}

        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf_path)
        env[_MARKER_VAR] = str(self.workdir)
        extra_path = [p for p in ("/usr/sbin", "/usr/local/sbin") if p not in env.get("PATH", "").split(os.pathsep)]
        env["PATH"] = os.pathsep.join([env.get("PATH", "/usr/bin:/bin"), *extra_path])
        #: Environment for every subprocess that talks to this cluster (``SLURM_CONF`` etc.).
        self.env: dict[str, str] = env

    # ------------------------------------------------------------------ availability

    @staticmethod
    def is_available() -> Availability:
        """Whether this machine can run the cluster: the binaries exist and we are root."""
        missing = [f"{b} (package {pkg})" for b, pkg in REQUIRED_BINARIES.items() if _which(b) is None]
        if missing:
            return Availability(False, "missing " + ", ".join(missing))
        if os.geteuid() != 0:
            return Availability(False, "must run as root (slurmd launches jobs; SlurmUser=root)")
        return Availability(True)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalSlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start munged, slurmctld and both slurmd; return once both nodes are ``idle``.

        Anything started before a failure is stopped again before the error propagates, so a
        half-started cluster never outlives this call.
        """
        if self._started:
            raise SlurmClusterError("cluster already started")
        avail = self.is_available()
        if not avail:
            raise SlurmClusterError(f"cannot start a local Slurm cluster: {avail.reason}")
        self._binaries = {b: str(_which(b)) for b in REQUIRED_BINARIES}
        self._started = True
        try:
            self._sweep_processes(announce=True)  # leftovers of an earlier, killed run here
            self._prepare_dir()
            self._start_munged()
            self._write_conf()
            self._start_daemon(
                "slurmctld",
                [self._binaries["slurmctld"], "-D", "-f", str(self.conf_path)],
                self.log_dir / "slurmctld.log",
            )
            poll_until(
                lambda: self._ctld_answers(),
                self.startup_timeout,
                "slurmctld to answer",
                on_timeout=self.diagnostics,
            )
            for node in self.nodes:
                self._start_daemon(
                    f"slurmd-{node}",
                    [self._binaries["slurmd"], "-D", "-N", node, "-f", str(self.conf_path)],
                    self.log_dir / f"slurmd-{node}.log",
                )
            self.wait_nodes_idle(self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel all jobs, stop every daemon this object started and kill leftover job processes.

        Safe to call more than once and after a failed start.
        """
        if not self._started:
            return
        try:
            if self._running("slurmctld"):
                self._cancel_all_jobs(timeout=min(timeout, self._kill_wait + 10))
            for name in [f"slurmd-{n}" for n in self.nodes] + ["slurmctld"]:
                self._terminate(name, timeout)
            self._sweep_processes()
            self._terminate("munged", timeout)
        finally:
            self._procs.clear()
            self._started = False

    # ------------------------------------------------------------------ job helpers

    def sbatch(
        self,
        script: str | os.PathLike[str],
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> int:
        """Submit a batch job and return its id.

        ``script`` is a path to a batch file, or the script text itself when it is a ``str``
        starting with ``#!`` (passed on stdin). ``args`` go to sbatch before the script (e.g.
        ``"--nodes=2"``, ``"--output", path``). ``env`` is laid over :attr:`env` (so callers add
        CONFIG, RUN_DIR, ... without losing SLURM_CONF); with sbatch's default ``--export=ALL``
        the job sees it. ``cwd`` is the job's working directory (default ``<workdir>/jobs``).
        """
        cmd = [self._binaries.get("sbatch", "sbatch"), "--parsable", *args]
        stdin: str | None = None
        if isinstance(script, str) and script.startswith("#!"):
            stdin = script
        else:
            cmd.append(str(Path(script).absolute()))
        run_env = {**self.env, **(env or {})}
        out = self._run(cmd, env=run_env, input_text=stdin, cwd=Path(cwd) if cwd else self.jobs_dir)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmClusterError(f"sbatch printed no job id: {out!r}")
        return int(job_id)

    def scontrol(self, *args: str) -> str:
        """Run ``scontrol <args>`` on this cluster; return stdout, raise with stderr on failure."""
        return self._run([self._binaries.get("scontrol", "scontrol"), *args])

    def squeue(self, *args: str) -> str:
        """Run ``squeue <args>`` on this cluster and return stdout."""
        return self._run([self._binaries.get("squeue", "squeue"), *args])

    def sinfo(self, *args: str) -> str:
        """Run ``sinfo <args>`` on this cluster and return stdout."""
        return self._run([self._binaries.get("sinfo", "sinfo"), *args])

    def requeue(self, job_id: int) -> None:
        """``scontrol requeue <id>``: kill the job if running and queue it again (it must be
        requeue-able: ``--requeue`` or ``JobRequeue=1``). It runs again after the hold described
        in the module docstring (``cred_expire + 1`` seconds)."""
        self.scontrol("requeue", str(job_id))

    def signal_job(self, job_id: int, sig: str | int | signal.Signals, *, batch_only: bool = True) -> None:
        """Send a signal to a running job with ``scancel --signal``.

        With ``batch_only`` (default) only the batch shell gets it (``--batch``), which is what
        ``--signal=B:<sig>@<secs>`` does at the time limit; otherwise every step and the batch
        shell get it (``--full``).
        """
        if isinstance(sig, signal.Signals):
            name = sig.name.removeprefix("SIG")
        elif isinstance(sig, int):
            name = signal.Signals(sig).name.removeprefix("SIG")
        else:
            name = sig.upper().removeprefix("SIG")
        self._run(
            [
                self._binaries.get("scancel", "scancel"),
                f"--signal={name}",
                "--batch" if batch_only else "--full",
                str(job_id),
            ]
        )

    def job_info(self, job_id: int) -> dict[str, str] | None:
        """The job's fields from ``scontrol show job -o`` (``JobState``, ``Restarts``,
        ``ExitCode``, ``Reason``, ``NodeList``, ...), or from its last record in ``jobcomp.txt``
        once slurmctld no longer knows it; None if neither knows the job."""
        proc = subprocess.run(
            [self._binaries.get("scontrol", "scontrol"), "show", "job", "-o", str(job_id)],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return parse_key_values(proc.stdout.splitlines()[0])
        if "Invalid job id" not in proc.stderr:
            raise SlurmClusterError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
        records = self.jobcomp_records(job_id)
        return records[-1] if records else None

    def job_state(self, job_id: int) -> str | None:
        """Base job state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...) or None if unknown."""
        info = self.job_info(job_id)
        return info.get("JobState") if info else None

    def jobcomp_records(self, job_id: int | None = None) -> list[dict[str, str]]:
        """Job-end records from ``jobcomp.txt``, oldest first (one per end, including each
        requeue, which is recorded with ``JobState=PENDING``)."""
        try:
            lines = self.jobcomp_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        records = [parse_key_values(line) for line in lines if line.strip()]
        if job_id is not None:
            records = [r for r in records if r.get("JobId") == str(job_id)]
        return records

    def wait_job(self, job_id: int, timeout: float) -> str:
        """Wait until the job has ended for good and return its final state (e.g. ``COMPLETED``,
        ``FAILED``, ``CANCELLED``, ``TIMEOUT``).

        A requeued job is PENDING again, not ended, so this waits through requeues. Raises
        ``TimeoutError`` with the job's record and the daemon log tails.
        """

        def final() -> str | None:
            info = self.job_info(job_id)
            if info is None:
                raise SlurmClusterError(f"job {job_id} is unknown to slurmctld and jobcomp.txt")
            state = info.get("JobState", "")
            # Slurm shows COMPLETING while the epilog runs and processes are being killed.
            return state if state in TERMINAL_JOB_STATES else None

        return poll_until(
            final,
            timeout,
            f"job {job_id} to end",
            on_timeout=lambda: self.diagnostics(job_id),
        )

    def wait_job_state(self, job_id: int, states: Iterable[str], timeout: float) -> str:
        """Wait until the job is in one of ``states`` (e.g. ``{"RUNNING"}``) and return it."""
        wanted = set(states)

        def reached() -> str | None:
            state = self.job_state(job_id)
            return state if state in wanted else None

        return poll_until(
            reached,
            timeout,
            f"job {job_id} to reach {sorted(wanted)}",
            on_timeout=lambda: self.diagnostics(job_id),
        )

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` as sinfo reports it (``idle``, ``alloc``, ``mix``, ``down*``, ...)."""
        states: dict[str, str] = {}
        for line in self.sinfo("-h", "-N", "-o", "%N %T").splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def wait_nodes_idle(self, timeout: float) -> None:
        """Wait until every node is ``idle`` (registered and free); fail early if a daemon died."""

        def idle() -> bool:
            self._check_daemons()
            states = self.node_states()
            return all(states.get(n) == "idle" for n in self.nodes)

        poll_until(idle, timeout, f"nodes {', '.join(self.nodes)} to be idle", on_timeout=self.diagnostics)

    def diagnostics(self, job_id: int | None = None) -> str:
        """Job record, node states and daemon log tails: what a failed test should print."""
        parts: list[str] = []
        if job_id is not None:
            proc = subprocess.run(
                [self._binaries.get("scontrol", "scontrol"), "show", "job", str(job_id)],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            parts.append(f"--- scontrol show job {job_id} ---\n{proc.stdout}{proc.stderr}")
        if self._running("slurmctld"):
            proc = subprocess.run(
                [self._binaries.get("sinfo", "sinfo"), "-N", "-o", "%N %T %E"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            parts.append(f"--- sinfo ---\n{proc.stdout}{proc.stderr}")
        for name in ["slurmctld", *(f"slurmd-{n}" for n in self.nodes)]:
            parts.append(_tail(self.log_dir / f"{name}.log", 20))
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    @property
    def _kill_wait(self) -> int:
        return 10

    def _prepare_dir(self) -> None:
        wd = self.workdir
        if wd.exists() and any(wd.iterdir()) and not (wd / _DIR_STAMP).exists():
            raise SlurmClusterError(
                f"{wd} is not empty and was not used by a local Slurm cluster; pick an empty or new directory"
            )
        for sub in (self.munge_dir, self.state_dir, self.spool_dir, self.log_dir):
            if sub.exists():
                shutil.rmtree(sub)
        for f in (self.conf_path, self.jobcomp_path):
            f.unlink(missing_ok=True)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / _DIR_STAMP).write_text("Created by tests/integration/slurm_cluster.py; safe to delete.\n")
        for sub in (self.state_dir, self.log_dir, self.jobs_dir, *(self.spool_dir / n for n in self.nodes)):
            sub.mkdir(parents=True, exist_ok=True)
        longest = max(len(str(self.munge_dir)), len(str(self.spool_dir / self.nodes[-1])))
        if longest > _MAX_SOCKET_DIR_LEN:
            raise SlurmClusterError(
                f"{wd} is too long a path ({longest} > {_MAX_SOCKET_DIR_LEN} characters for the socket "
                "directories; Unix socket paths are limited to 108 bytes); use a shorter one such as /tmp/slurm"
            )

    def _start_munged(self) -> None:
        """Start a private munged with a fresh key.

        munged insists that the key is private to its owner and that the socket directory is
        searchable by everyone (0755). ``--force`` lets it run although a parent directory may be
        0700 (pytest's temporary directories are); only this user talks to the socket.
        """
        self.munge_dir.mkdir(mode=0o755)
        self.munge_dir.chmod(0o755)  # mkdir's mode is reduced by the umask
        key = self.munge_dir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(1024))
        finally:
            os.close(fd)
        log = self.log_dir / "munged.log"
        self._start_daemon(
            "munged",
            [
                self._binaries["munged"],
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
                "--origin=127.0.0.1",  # no dependence on the machine's hostname resolving
                "--num-threads=2",
            ],
            log,
            stderr_is_log=True,
        )

        def socket_ready() -> bool:
            self._check_daemons()
            return self.munge_socket.is_socket()

        poll_until(
            socket_ready,
            self.startup_timeout,
            "munged to create its socket",
            on_timeout=lambda: _tail(log),
        )

    def _write_conf(self) -> None:
        ports = free_ports(1 + len(self.nodes))  # fixed ports would collide with a system Slurm
        self.ctld_port = ports[0]
        self.node_ports = dict(zip(self.nodes, ports[1:], strict=True))
        wd = self.workdir
        node_lines = [
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={self.node_ports[n]} "
            f"CPUs={self.cpus_per_node} RealMemory={self.real_memory_mb} State=UNKNOWN"
            for n in self.nodes
        ]
        conf = f"""\
# Generated by tests/integration/slurm_cluster.py for a private test cluster; do not edit.
ClusterName={self.cluster_name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.node_ports[self.nodes[0]]}
SlurmUser=root
SlurmdUser=root
# Own munged; cred_expire also sets how long a requeued job is held (cred_expire + 1 s).
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={self.state_dir}
SlurmdSpoolDir={self.spool_dir}/%n
SlurmctldPidFile={wd}/slurmctld.pid
SlurmdPidFile={wd}/slurmd-%n.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd-%n.log
SlurmctldDebug={self.log_level}
SlurmdDebug={self.log_level}
# No cgroups: works in containers and without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp_path}
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Trust the node sizes below even on a smaller machine (two "nodes" share its cores).
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Keep finished jobs visible to `scontrol show job` (there is no accounting database).
MinJobAge=86400
# Try pending jobs every second (default 60 s): requeued jobs restart as soon as allowed.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MessageTimeout=10
KillWait={self._kill_wait}
SlurmdTimeout=30
SlurmctldTimeout=30
InactiveLimit=0
Waittime=0
{chr(10).join(node_lines)}
PartitionName={self.partition} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
        self.conf_path.write_text(conf)

    def _start_daemon(self, name: str, cmd: Sequence[str], log: Path, stderr_is_log: bool = False) -> None:
        """Start a daemon in the foreground of a child process we own (so we know its pid and
        can wait for it), in its own session so a terminal's Ctrl-C reaches only us and we shut
        the cluster down in order."""
        err_path = log if stderr_is_log else self.log_dir / f"{name}.stderr"
        with open(err_path, "ab") as err:
            proc = subprocess.Popen(
                list(cmd),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._procs[name] = proc

    def _running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _check_daemons(self) -> None:
        """Raise with the daemon's log tail if any daemon we started has exited."""
        for name, proc in self._procs.items():
            code = proc.poll()
            if code is not None:
                logs = [_tail(self.log_dir / f"{name}.log")]
                stderr = self.log_dir / f"{name}.stderr"
                if stderr.exists():
                    logs.append(_tail(stderr))
                raise SlurmClusterError(f"{name} exited with code {code}\n" + "\n".join(logs))

    def _ctld_answers(self) -> bool:
        self._check_daemons()
        proc = subprocess.run(
            [self._binaries["scontrol"], "ping"], env=self.env, capture_output=True, text=True, check=False
        )
        return proc.returncode == 0 and " is UP" in proc.stdout

    def _run(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
        cwd: Path | None = None,
    ) -> str:
        proc = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else self.env,
            input=input_text,
            capture_output=True,
            text=True,
            cwd=cwd,
            check=False,
        )
        if proc.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(cmd)} failed with code {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def _cancel_all_jobs(self, timeout: float) -> None:
        """Cancel every job and wait (bounded) until none is running or completing, so job
        processes get SIGTERM from Slurm before the daemons go away."""
        try:
            ids = self.squeue("-h", "-o", "%A").split()
            if ids:
                self._run([self._binaries["scancel"], *ids])
                poll_until(
                    lambda: not self.squeue("-h", "-t", "RUNNING,COMPLETING,CONFIGURING,SUSPENDED", "-o", "%A").split(),
                    timeout,
                    "cancelled jobs to end",
                )
        except (SlurmClusterError, TimeoutError, OSError) as err:
            # Shutting down must go on; leftovers are killed by the process sweep.
            print(f"LocalSlurmCluster.stop: {err}", file=sys.stderr)

    def _terminate(self, name: str, timeout: float) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def _cluster_pids(self) -> list[int]:
        """Processes that belong to this cluster: they carry its marker (daemons, slurmstepd and
        jobs submitted with :attr:`env`) or run a job of it (``SLURM_CONF`` of this cluster and a
        ``SLURM_JOB_ID``; slurmstepd sets both even for ``--export=NONE`` jobs)."""
        marker = str(self.workdir).encode()
        conf = str(self.conf_path).encode()
        spared = _own_ancestors()
        pids: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in spared:
                continue
            env = _read_proc_environ(pid)
            if not env:
                continue
            ours = env.get(_MARKER_VAR.encode()) == marker or (
                env.get(b"SLURM_CONF") == conf and b"SLURM_JOB_ID" in env
            )
            if ours and _alive(pid):
                pids.append(pid)
        return pids

    def _sweep_processes(self, timeout: float = 10.0, announce: bool = False) -> None:
        """Kill processes of this cluster that the daemons left behind (see :meth:`_cluster_pids`)."""
        ours = {p.pid for p in self._procs.values() if p.poll() is None}
        pids = [p for p in self._cluster_pids() if p not in ours]
        if not pids:
            return
        if announce:
            print(
                f"LocalSlurmCluster: killing leftover processes {pids} of a cluster in {self.workdir}", file=sys.stderr
            )
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                poll_until(lambda: not any(_alive(p) for p in pids), timeout / 2, "leftover job processes to exit")
                return
            except TimeoutError:
                continue
        raise SlurmClusterError(f"processes {[p for p in pids if _alive(p)]} survived SIGKILL")


def main(argv: Sequence[str] | None = None) -> int:
    """Start a cluster, print how to use it, and keep it up until Ctrl-C (or SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.slurm_cluster",
        description="Start a private 2-node Slurm cluster (n1, n2) on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument(
        "--dir", required=True, type=Path, help="directory for its config, state and logs (short path, e.g. /tmp/slurm)"
    )
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--cred-expire", type=int, default=10, help="seconds; also the hold on requeued jobs (min 5)")
    args = parser.parse_args(argv)

    avail = LocalSlurmCluster.is_available()
    if not avail:
        print(f"Cannot start: {avail.reason}. Install with: sudo bash .ci/install_slurm.sh", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster = LocalSlurmCluster(args.dir, cpus_per_node=args.cpus_per_node, cred_expire=args.cred_expire)
    with cluster:
        print(
            f"Local Slurm cluster '{cluster.cluster_name}' is up: nodes {', '.join(cluster.nodes)} in partition "
            f"'{cluster.partition}', slurmctld on 127.0.0.1:{cluster.ctld_port}.\n"
            f"In another shell:\n\n    export SLURM_CONF={cluster.conf_path}\n\n"
            f"Logs: {cluster.log_dir}   Job records: {cluster.jobcomp_path}\n"
            "Press Ctrl-C to stop it (running jobs are cancelled).",
            flush=True,
        )
        while not stop.wait(1.0):
            try:
                cluster._check_daemons()
            except SlurmClusterError as err:
                print(f"A daemon died, stopping the cluster:\n{err}", file=sys.stderr)
                return 1
        print("Stopping the cluster ...", flush=True)
    print("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
