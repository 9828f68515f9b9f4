"""slurm/pretrain.sh under a real Slurm cluster: a 2-node run, a preemption that requeues and
resumes exactly, and a resume of the same run directory on one node.

Why: the launcher chain (sbatch -> srun, one task per node -> slurm/entrypoint.sh -> elastic
torchrun with a c10d rendezvous -> `armd train`) and its signal and requeue paths only count as
working if they ran under real slurmctld/slurmd daemons. The cluster is the private 2-node one of
``slurm_cluster.py`` (nodes n1, n2 on 127.0.0.1); each "node" runs one CPU training process.

Timeline of the preemption test (2-core machine): USR1 reaches the batch shell ~30 ms after
``scancel --signal=USR1 --batch``, the trainers ~5 ms later; they stop one or two steps later;
the requeued job starts ~11 s after the requeue (the local cluster's cred_expire + 1).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .slurm_cluster import TERMINAL_JOB_STATES, LocalSlurmCluster, poll_until

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "slurm" / "pretrain.sh"

STEPS = 100  # long enough (~1.5 s of steps here) that a signal sent at step 2 lands mid-run
EXTRA_STEPS = 10  # steps added when a finished run is continued
JOB_TIMEOUT = 300.0  # generous: a job takes ~15 s here, but CI machines can be much slower
LOSS_TOL = 1e-5  # absolute; resume is bit-identical in one process and ~1e-6 across processes

# The tiny model: ~30k parameters, ~15 ms per step on 2 CPU processes. ZeRO-1, so that a resume on
# another world size goes through DeepSpeed's universal checkpoint (ZeRO-0 files load directly).
TINY = (
    "parallel.zero_stage=1 model.n_layers=2 model.d_model=32 model.n_heads=2 model.max_seq_len=32 "
    "model.vocab_size=128 model.d_pe=8 "
    "data.seq_len=32 data.vocab_size=128 train.global_batch_size=8 train.micro_batch_size=2 "
    "train.warmup_steps=2 train.log_every=1 train.eval_every=0 train.checkpoint_every=30 "
    "log.wandb=off log.progress_bar=false train.order.kind=progressive train.order.ar_steps=2 "
    "train.order.rho=4 train.order.ramp_end=5"
)


@dataclass
class Job:
    """A submitted pretrain.sh job and where it writes."""

    id: int
    run_dir: Path
    out: Path  # the job's output file (%x-%j.out in the submit directory)

    def output(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except OSError:
            return f"(no output file {self.out})"


@dataclass
class FinishedRun:
    job: Job
    losses: dict[int, float]  # step -> loss, read when the job ended


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    avail = LocalSlurmCluster.is_available()
    if not avail:
        pytest.skip(f"Slurm binaries not installed (bash .ci/install_slurm.sh): {avail.reason}")
    with LocalSlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenize the built-in corpus once, so the jobs' processes never race to build it."""
    from armd_scale.config import load_config
    from armd_scale.data.prepare.builtin import ensure_builtin_dataset

    cache = tmp_path_factory.mktemp("data")
    cfg = load_config(None, [*TINY.split(), f"data.cache_dir={cache}"])
    ensure_builtin_dataset(cfg.data, build=True)
    return cache


def submit(cluster: LocalSlurmCluster, run_dir: Path, data_cache: Path, *sbatch_args: str, steps: int = STEPS) -> Job:
    """``sbatch slurm/pretrain.sh`` as a user would, with the knobs in the environment.

    CPU cluster: ``--gpus-per-node=0`` (the script's default asks for GPUs) gives one training
    process per node.
    """
    submit_dir = run_dir.parent
    submit_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "RUN_DIR": str(run_dir),
        "OVERRIDES": f"{TINY} data.cache_dir={data_cache} train.steps={steps}",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",  # two "nodes" share this machine's cores
    }
    job_id = cluster.sbatch(PRETRAIN, "--gpus-per-node=0", *sbatch_args, env=env, cwd=submit_dir)
    return Job(job_id, run_dir, submit_dir / f"armd-pretrain-{job_id}.out")


def explain(cluster: LocalSlurmCluster, job: Job) -> str:
    """What a failed assertion should show: Slurm's view, the job's output and the trainer's status."""
    status = job.run_dir / "exit_status.json"
    return (
        f"\n{cluster.diagnostics(job.id)}\n--- job output {job.out} ---\n{job.output()}\n"
        f"--- {status} ---\n{status.read_text() if status.exists() else '(missing)'}"
    )


def wait_finished(cluster: LocalSlurmCluster, job: Job) -> None:
    state = cluster.wait_job(job.id, JOB_TIMEOUT)
    assert state == "COMPLETED", f"job {job.id} ended {state}" + explain(cluster, job)


def read_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a step logged twice, e.g. after a crash, keeps the last)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    losses: dict[int, float] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if "loss" in record:
                losses[int(record["step"])] = float(record["loss"])
    return losses


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_finished_at(cluster: LocalSlurmCluster, job: Job, step: int, world_size: int) -> None:
    """The trainer recorded a finish at `step` and left a complete checkpoint of it."""
    context = explain(cluster, job)
    assert read_json(job.run_dir / "exit_status.json")["code"] == 0, context
    folder = job.run_dir / "checkpoints" / f"step_{step:08d}"
    assert (folder / "COMPLETE").is_file(), f"no complete checkpoint {folder}" + context
    meta = read_json(folder / "meta.json")
    assert meta["step"] == step and meta["topology"]["world_size"] == world_size, meta
    assert (job.run_dir / "checkpoints" / "latest").read_text().strip() == folder.name
    assert max(read_losses(job.run_dir)) == step, context


def assert_losses_match(got: dict[int, float], want: dict[int, float], steps: range) -> None:
    assert sorted(got) == list(steps), f"logged steps {sorted(got)}"
    diffs = {s: abs(got[s] - want[s]) for s in steps}
    worst = max(diffs, key=diffs.__getitem__)
    assert diffs[worst] <= LOSS_TOL, f"step {worst}: loss {got[worst]} vs {want[worst]} (tolerance {LOSS_TOL})"


@pytest.fixture(scope="module")
def two_node_run(cluster: LocalSlurmCluster, data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """The uninterrupted 2-node run that the other tests compare against."""
    job = submit(cluster, tmp_path_factory.mktemp("full") / "run", data_cache)
    wait_finished(cluster, job)
    return FinishedRun(job, read_losses(job.run_dir))


def test_two_node_run_reaches_its_final_step(cluster: LocalSlurmCluster, two_node_run: FinishedRun) -> None:
    job = two_node_run.job
    assert_finished_at(cluster, job, STEPS, world_size=2)
    assert sorted(two_node_run.losses) == list(range(1, STEPS + 1)), explain(cluster, job)
    text = job.output()
    # One torchrun agent per node joined the rendezvous on the head node, 2 nodes x 1 process.
    assert "entrypoint: node n1 (0/2)" in text and "entrypoint: node n2 (1/2)" in text, explain(cluster, job)
    assert "world=2" in text, explain(cluster, job)
    info = cluster.job_info(job.id)
    assert info is not None and info["Restarts"] == "0" and info["NodeList"] == "n[1-2]", info
    # It learned something: the loss went down from its start.
    assert two_node_run.losses[STEPS] < two_node_run.losses[1] - 0.1, two_node_run.losses


def test_preempted_job_saves_requeues_and_matches_uninterrupted_run(
    cluster: LocalSlurmCluster, data_cache: Path, two_node_run: FinishedRun, tmp_path: Path
) -> None:
    job = submit(cluster, tmp_path / "run", data_cache)

    def training_past_step_2() -> bool:
        state = cluster.job_state(job.id)
        if state in TERMINAL_JOB_STATES:
            raise AssertionError(f"job ended {state} before it was signalled" + explain(cluster, job))
        losses = read_losses(job.run_dir)
        return bool(losses) and max(losses) >= 2

    poll_until(training_past_step_2, JOB_TIMEOUT, "step 2 in metrics.jsonl", on_timeout=lambda: explain(cluster, job))
    # What Slurm does before the time limit with --signal=B:USR1@<secs>: signal the batch shell.
    cluster.signal_job(job.id, "USR1", batch_only=True)
    wait_finished(cluster, job)

    text = job.output()
    context = explain(cluster, job)
    assert "pretrain.sh: USR1 at" in text and "requeueing job" in text, context
    stops = [line for line in text.splitlines() if line.startswith("stopping at step ")]
    assert len(stops) == 1 and "(SIGUSR1)" in stops[0], context
    stop_step = int(stops[0].split()[3])
    assert 2 <= stop_step < STEPS, f"the run was not stopped mid-run (step {stop_step}); raise STEPS" + context
    # The second run is the requeued job (SLURM_RESTART_COUNT=1) and resumed from the stop's checkpoint.
    assert f"pretrain.sh: job {job.id} run 1 " in text, context
    assert f"resumed from step_{stop_step:08d} (step {stop_step})" in text, context
    info = cluster.job_info(job.id)
    assert info is not None and info["Restarts"] == "1", info
    assert [r["JobState"] for r in cluster.jobcomp_records(job.id)] == ["PENDING", "COMPLETED"], context
    assert_finished_at(cluster, job, STEPS, world_size=2)

    # Same config and seed: every step, before and after the resume, equals the uninterrupted run.
    assert_losses_match(read_losses(job.run_dir), two_node_run.losses, range(1, STEPS + 1))


def test_finished_run_resumes_on_one_node(
    cluster: LocalSlurmCluster, data_cache: Path, two_node_run: FinishedRun, tmp_path: Path
) -> None:
    """Continue the 2-node run dir on 1 node (world size 2 -> 1: universal checkpoint) and, as the
    reference, a copy of it on 2 nodes; both continuations must agree."""
    one_node_dir = two_node_run.job.run_dir
    reference_dir = tmp_path / "reference" / "run"
    shutil.copytree(one_node_dir, reference_dir)
    steps = STEPS + EXTRA_STEPS
    # Both fit at once (each node has 2 CPUs, each job takes 1 per node).
    one_node = submit(cluster, one_node_dir, data_cache, "--nodes=1", steps=steps)
    reference = submit(cluster, reference_dir, data_cache, steps=steps)
    wait_finished(cluster, one_node)
    wait_finished(cluster, reference)

    context = explain(cluster, one_node)
    assert "entrypoint: node n1 (0/1)" in one_node.output() or "entrypoint: node n2 (0/1)" in one_node.output(), context
    assert f"resumed from step_{STEPS:08d} (step {STEPS}) via universal checkpoint" in one_node.output(), context
    assert_finished_at(cluster, one_node, steps, world_size=1)
    assert_finished_at(cluster, reference, steps, world_size=2)
    new_steps = range(STEPS + 1, steps + 1)
    got = {s: v for s, v in read_losses(one_node_dir).items() if s in new_steps}
    want = read_losses(reference_dir)
    assert_losses_match(got, want, new_steps)


EVAL = REPO / "slurm" / "eval.sh"

# A hold point for the trainer processes only (torchrun sets LOCAL_RANK for them, not for its agent): on
# the first start, before `armd train` can install its signal handler, say so and wait for a go file.
SETUP_GATE = """
import os, time
gate = os.environ.get("ARMD_TEST_SETUP_GATE")
if gate and "LOCAL_RANK" in os.environ and not os.path.exists(gate + ".reached"):
    open(gate + ".reached", "w").close()
    while not os.path.exists(gate + ".go"):
        time.sleep(0.05)
"""


def test_overrides_and_eval_args_on_many_lines_all_count(cluster: LocalSlurmCluster, data_cache: Path, tmp_path: Path):
    """OVERRIDES and EVAL_ARGS were read with `read -r -a`, which stops at the first newline: a value
    written one override per line passed only its first line, and none when it began with a newline."""
    from armd_scale.config import load_config
    from armd_scale.data.prepare.builtin import ensure_builtin_dataset

    run_dir = tmp_path / "run"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    overrides = "\n" + "\n".join([*TINY.split(), f"data.cache_dir={data_cache}"]) + "\n  train.steps=7\n"
    env = {"RUN_DIR": str(run_dir), "OVERRIDES": overrides, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    job_id = cluster.sbatch(PRETRAIN, "--gpus-per-node=0", "--nodes=1", env=env, cwd=run_dir.parent)
    job = Job(job_id, run_dir, run_dir.parent / f"armd-pretrain-{job_id}.out")
    wait_finished(cluster, job)
    assert_finished_at(cluster, job, 7, world_size=1)  # the last line (train.steps=7) was applied

    _, val_url, _ = ensure_builtin_dataset(load_config(None, [*TINY.split(), f"data.cache_dir={data_cache}"]).data)
    out = tmp_path / "eval.json"
    eval_env = {
        "RUN_DIR": str(run_dir),
        "DATA": str(val_url),
        "OUT": str(out),
        "EVAL_ARGS": "\n--batch-size 2\n--max-tokens 64\n",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    eval_id = cluster.sbatch(EVAL, "--gpus-per-node=0", "--output", str(tmp_path / "eval.out"), env=eval_env)
    state = cluster.wait_job(eval_id, JOB_TIMEOUT)
    eval_out = (tmp_path / "eval.out").read_text(errors="replace") if (tmp_path / "eval.out").exists() else ""
    assert state == "COMPLETED", f"eval job ended {state}\n{cluster.diagnostics(eval_id)}\n{eval_out}"
    result = read_json(out)
    assert result["windows"] == 2 and result["tokens"] == 64, result  # --max-tokens 64 on the last line


def test_usr1_before_the_trainer_handler_exists_requeues(cluster: LocalSlurmCluster, data_cache: Path, tmp_path: Path):
    """The trainers start with USR1 ignored (entrypoint.sh must keep torchrun alive), so a USR1 that came
    before `armd train` installed its handler was lost and the job ran on into its time limit. Now the
    entrypoint records it and the trainer, seeing the record at the end of its set-up, exits 75: requeued."""
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    (gate_dir / "sitecustomize.py").write_text(SETUP_GATE)
    gate = tmp_path / "setup"
    run_dir = tmp_path / "run"
    env = {
        "RUN_DIR": str(run_dir),
        "OVERRIDES": f"{TINY} data.cache_dir={data_cache} train.steps=5",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(gate_dir),
        "ARMD_TEST_SETUP_GATE": str(gate),
    }
    job_id = cluster.sbatch(PRETRAIN, "--gpus-per-node=0", "--nodes=1", env=env, cwd=tmp_path)
    job = Job(job_id, run_dir, tmp_path / f"armd-pretrain-{job_id}.out")
    poll_until(
        lambda: Path(f"{gate}.reached").exists(), JOB_TIMEOUT, "the trainer at its first line", on_timeout=job.output
    )
    cluster.signal_job(job.id, "USR1", batch_only=True)  # as Slurm does before the time limit
    poll_until(
        lambda: "USR1 at" in job.output() and "recorded in" in job.output(), 60, "USR1 recorded", on_timeout=job.output
    )
    Path(f"{gate}.go").touch()
    wait_finished(cluster, job)

    text = job.output()
    context = explain(cluster, job)
    assert "during set-up (run directory): stopping before training, no checkpoint written; exit 75" in text, context
    assert "requeueing job" in text and f"pretrain.sh: job {job.id} run 1 " in text, context
    info = cluster.job_info(job.id)
    assert info is not None and info["Restarts"] == "1", info
    assert_finished_at(cluster, job, 5, world_size=1)
    assert min(read_losses(run_dir)) == 1  # the first run trained nothing: the requeued one did every step
