"""One trainer per run directory: an exclusive lock file, `RUN_DIR/trainer.lock`, held by rank 0.

Why: two trainers on one run.dir (a resubmitted job while the first still runs, a typo in a launch
script) interleave metrics.jsonl, overwrite config.yaml and delete each other's checkpoints through
retention. The second one must refuse, naming the first.

How: the lock file is created atomically and never exists half-written: its JSON content (host, pid,
the process's start time, the host's boot id, the pid namespace, Slurm job id and run, time) goes to a
private temporary file first, which is then hard-linked to `trainer.lock`. `link` fails if the name
exists, also on NFS (v3 and later, where O_EXCL creation was historically unreliable; the link count
of the temporary file settles the case of a lost reply), Lustre, GPFS/Spectrum Scale, BeeGFS and local
filesystems. Only rank 0 takes the lock; it tells every other rank the outcome, so no rank trains
without it.

A lock is stale, and is taken over with a message, when
- its holder ran on this host, in our pid namespace, and that process is gone (pid missing, or reused
  by a process that started at another time, or the host rebooted since: another boot id). On this
  host that is the only rule, whatever the Slurm job ids: two trainers started in one allocation share
  the job id, and a requeued job runs in a new process, so a live holder is never an earlier run; or
- its holder ran on another host and belongs to the same Slurm job as we do (a requeued or elastically
  restarted job taking over from its own earlier run on another node); or
- its holder's Slurm job is no longer running, where `scontrol` can tell (a requeued job waiting to
  run again still holds its run directory).
Containers that share the hostname but not the pid namespace (Kubernetes hostNetwork, `docker run
--network host`) look like one host. The lock records the pid namespace (`/proc/self/ns/pid`), and the
pid of a holder in another namespace is never looked up in ours (a dead holder's pid may be alive
here, a live one's missing): such a holder is stale only if it belongs to an earlier run of our Slurm
job (another SLURM_RESTART_COUNT) or to a Slurm job that is no longer running. A holder that cannot be
checked (another host or container, outside Slurm) is respected: the trainer refuses and the message
says how to remove the lock once that process is known to be gone. No decision uses clock times, so
clock skew between hosts cannot make a live lock look stale. The lock is removed when training ends,
whatever the outcome; `kill -9` or a lost node leaves it, and the rules above take it over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import ConfigError
from ..processes import pid_alive
from .distributed import DistInfo, broadcast_object

LOCK_FILE = "trainer.lock"
# Slurm job states in which the job may still (or again) run and use its run directory.
SLURM_ACTIVE = {"RUNNING", "PENDING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "STOPPED"}


class RunDirLocked(ConfigError):
    """Another live trainer holds the run directory."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float | None  # the process's start time (seconds since boot, from /proc), to tell a reused pid
    boot_id: str | None
    slurm_job_id: str | None
    since: float  # when the lock was taken (for people; decisions never compare clocks)
    pid_ns: str | None = None  # /proc/self/ns/pid ("pid:[INODE]"): which namespace `pid` is a pid of
    slurm_restart: str | None = None  # SLURM_RESTART_COUNT ("0" on a job's first run): which run of the job

    def describe(self) -> str:
        when = datetime.datetime.fromtimestamp(self.since).isoformat(timespec="seconds")
        job = f", Slurm job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"pid {self.pid} on host {self.host}{job}, since {when}"


def this_process() -> Holder:
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=_start_time(os.getpid()),
        boot_id=_boot_id(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        since=time.time(),
        pid_ns=_pid_namespace(),
        slurm_restart=os.environ.get("SLURM_RESTART_COUNT", "0") if os.environ.get("SLURM_JOB_ID") else None,
    )


def _start_time(pid: int) -> float | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return float(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _other_namespace(holder: Holder, me: Holder) -> bool:
    """Whether `holder.pid` is a pid of another namespace than ours (unknown for locks without one)."""
    return holder.pid_ns is not None and me.pid_ns is not None and holder.pid_ns != me.pid_ns


def _pid_namespace() -> str | None:
    """`pid:[INODE]` of this process's pid namespace; None where /proc cannot tell."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _slurm_job_active(job_id: str) -> bool | None:
    """Whether Slurm job `job_id` may still run (None: Slurm cannot be asked)."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # "Invalid job id specified": the job is gone from the controller
        return False if "Invalid job id" in out.stderr else None
    state = next((w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("JobState=")), None)
    return None if state is None else state in SLURM_ACTIVE


def stale_reason(holder: Holder, me: Holder) -> str | None:
    """Why `holder`'s lock may be taken over by `me`, or None if it must be respected (or cannot be judged)."""
    if holder.host == me.host and holder.boot_id and me.boot_id and holder.boot_id != me.boot_id:
        return "this host rebooted since it was taken"
    if holder.host == me.host and not _other_namespace(holder, me):
        # The process itself decides, whatever the Slurm job ids: a live holder is never "an earlier run".
        if not pid_alive(holder.pid):
            return f"process {holder.pid} no longer exists"
        if holder.started is not None and _start_time(holder.pid) not in (None, holder.started):
            return f"pid {holder.pid} now belongs to another process"
        return None
    if me.slurm_job_id and holder.slurm_job_id == me.slurm_job_id:
        if holder.host != me.host:  # another node: a requeue, or an elastic restart that moved rank 0
            return f"it belongs to an earlier run of this Slurm job ({me.slurm_job_id})"
        if holder.slurm_restart is not None and holder.slurm_restart != me.slurm_restart:
            # another container on this host: only an earlier run (a requeue) of the job is certainly gone
            return f"it belongs to an earlier run of this Slurm job ({me.slurm_job_id}, run {holder.slurm_restart})"
    if holder.slurm_job_id and _slurm_job_active(holder.slurm_job_id) is False:
        return f"Slurm job {holder.slurm_job_id} is no longer running"
    return None


def _read(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise RunDirLocked(
            f"{path} exists but is not a lock this version wrote ({e}); if no trainer uses the run directory, "
            "delete the file"
        ) from None


def _create(path: Path, me: Holder) -> bool:
    """Create `path` holding `me`, atomically; False if it exists."""
    tmp = path.with_name(f".{path.name}.{me.host}.{me.pid}")
    with open(tmp, "w") as f:
        json.dump(asdict(me), f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        # NFS: a retransmitted link whose first reply was lost reports EEXIST although it succeeded
        return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def acquire(run_dir: Path, say=print) -> Holder:
    """Take `run_dir`'s lock for this process, taking over a stale one; RunDirLocked if it is held."""
    path = Path(run_dir) / LOCK_FILE
    me = this_process()
    for _ in range(5):  # each round either creates the lock or clears a stale one; races cost a round
        if _create(path, me):
            return me
        holder = _read(path)
        if holder is None:  # released between our attempt and the read
            continue
        reason = stale_reason(holder, me)
        if reason is None:
            hidden = holder.host == me.host and _other_namespace(holder, me)
            where = "it ran in another pid namespace (container) of this host" if hidden else "it ran on another host"
            raise RunDirLocked(
                f"run.dir {run_dir} is in use by another trainer ({holder.describe()}). Wait for it to finish or "
                f"stop it; if that process is gone (e.g. {where}), delete {path}"
            )
        aside = path.with_name(f".{path.name}.stale.{me.host}.{me.pid}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue  # someone else cleared it first
        if _read(aside) != holder:  # we moved a lock created after our read: put it back, it is live
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            continue
        aside.unlink(missing_ok=True)
        say(f"taking over the lock of {run_dir} from {holder.describe()}: {reason}")
    raise RunDirLocked(f"could not take the lock {path}: other processes keep taking it")


def release(run_dir: Path, me: Holder) -> None:
    """Remove the lock if it is still ours."""
    path = Path(run_dir) / LOCK_FILE
    with contextlib.suppress(RunDirLocked):
        if _read(path) == me:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, dist_info: DistInfo, say=print) -> Iterator[None]:
    """Collective: rank 0 holds `run_dir`'s lock for the block; every rank raises RunDirLocked if it
    could not be taken, so no rank trains without it."""
    held: Holder | None = None
    error: str | None = None
    if dist_info.is_main:
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            held = acquire(run_dir, say)
        except (RunDirLocked, OSError) as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise RunDirLocked(error)
    try:
        yield
    finally:
        if held is not None:
            release(run_dir, held)
