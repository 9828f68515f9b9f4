#!/bin/bash
# Pretrain an ARMD model on N nodes: srun starts slurm/entrypoint.sh once per node, which runs an
# elastic torchrun agent (c10d rendezvous on the first node) that runs `armd train`.
#
#   CONFIG=owt-small RUN_DIR=/shared/runs/owt-small sbatch --nodes=4 slurm/pretrain.sh
#
# The #SBATCH lines are defaults; sbatch options on the command line override them. On a CPU-only
# cluster (such as the local test cluster) pass `--gpus-per-node=0`: a job that asks for GPUs a
# cluster does not have is rejected ("Invalid generic resource (gres) specification").
#
#SBATCH --job-name=armd-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# One task per node: torchrun starts the per-GPU processes itself. On GPU clusters also consider
# --cpus-per-task (cores for data loading), --mem=0 (all memory), --exclusive and --time; USR1
# arrives 300 s before the time limit, enough to finish a step and save.
#
# Knobs (environment variables; sbatch passes the submitting shell's environment to the job):
#   CONFIG         preset name or YAML path (default: the trainer's default preset)
#   RUN_DIR        run directory on a filesystem shared by all nodes; a requeued job resumes from
#                  its last complete checkpoint (default: runs/<job name>-<job id> in the submit dir)
#   OVERRIDES      extra config overrides, separated by spaces or newlines: "train.steps=1000 train.lr=1e-3"
#   GPUS_PER_NODE  processes per node (default: the job's --gpus-per-node; 1 on a CPU job)
#   MIN_NODES      fewest nodes the elastic rendezvous continues with (default: all of them)
#   MAX_RESTARTS   times torchrun restarts the workers after a failure or a node change (default 3)
#   PYTHON         interpreter with armd_scale installed (default: python3 on PATH)
set -euo pipefail

# Slurm runs a copy of this script from its spool directory, so find the checkout through the path
# the job was submitted with (or ARMD_HOME).
if [[ -z "${ARMD_HOME:-}" ]]; then
  script="$(scontrol show job "$SLURM_JOB_ID" -o | grep -o 'Command=[^ ]*' | cut -d= -f2)"
  ARMD_HOME="$(cd "$(dirname "${script:-$SLURM_SUBMIT_DIR/slurm/pretrain.sh}")/.." && pwd)"
fi
export ARMD_HOME
export RUN_DIR="${RUN_DIR:-$SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}"
export PYTHONPATH="$ARMD_HOME${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's armd_scale
export CONFIG="${CONFIG:-}" OVERRIDES="${OVERRIDES:-}" MIN_NODES="${MIN_NODES:-$SLURM_NNODES}"
export MAX_RESTARTS="${MAX_RESTARTS:-3}" PYTHON="${PYTHON:-python3}"
mkdir -p "$RUN_DIR"
run_start="$(date +%s)"

echo "pretrain.sh: job $SLURM_JOB_ID run ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST at $(date -Is)" \
  "run_dir=$RUN_DIR config=${CONFIG:-default} overrides=[$OVERRIDES]"

# Preemption: Slurm sends USR1 to this shell (--signal=B:USR1@secs, or
# `scancel --signal=USR1 --batch <id>` by hand). Forward it to the job step: srun relays it to
# every process of the step on every node; the trainers save at the next step boundary and stop.
# Bash runs traps only between commands, hence `srun ... &` and `wait`.
srun_pid=""
forward_usr1() {
  echo "pretrain.sh: USR1 at $(date "+%F %T.%3N"), asking the trainers to save and stop"
  [[ -n "$srun_pid" ]] && kill -USR1 "$srun_pid" 2>/dev/null || true
}
trap forward_usr1 USR1
# --kill-on-bad-exit=0 --wait=0: a failed node does not take the others down (elastic restarts).
srun --ntasks-per-node=1 --kill-on-bad-exit=0 --wait=0 "$ARMD_HOME/slurm/entrypoint.sh" &
srun_pid=$!
# A trap cuts `wait` short; wait again until srun has ended, then take its exit status (the highest
# of the entrypoints': 75 if the trainers stopped early), which bash keeps for a finished job.
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid" || true; done
wait "$srun_pid" && rc=0 || rc=$?

# srun returns the highest exit code of the nodes. After an elastic restart without a node (see
# MIN_NODES) that node's entrypoint failed while the trainers carried on, so then the trainer's own
# record of this run decides: RUN_DIR/exit_status.json, if written since this script started.
if [[ "$rc" -ne 0 && "$rc" -ne 75 ]]; then
  status="$("$PYTHON" -c 'import json, sys; s = json.load(open(sys.argv[1]))
print(s["code"] if s["time"] >= float(sys.argv[2]) else "stale")' "$RUN_DIR/exit_status.json" "$run_start" 2>/dev/null || echo none)"
  if [[ "$status" == 0 || "$status" == 75 ]]; then
    echo "pretrain.sh: srun exited $rc (a node failed), but the trainer recorded exit $status"
    rc="$status"
  fi
fi

if [[ "$rc" -eq 75 ]]; then
  # Stopped early after saving a checkpoint: queue the job again; it resumes from that checkpoint
  # (SLURM_RESTART_COUNT counts the runs). The requeue ends this run at once.
  echo "pretrain.sh: trainer stopped early (exit 75), requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "pretrain.sh: done with exit code $rc at $(date -Is)"
exit "$rc"
