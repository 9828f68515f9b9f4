#!/bin/bash
# One task per node, started by `srun` from slurm/pretrain.sh: find the head node, start an elastic
# torchrun agent with a c10d rendezvous there, and turn the trainer's outcome into our exit code.
#
#   exit 75  the trainer saved a checkpoint and stopped early (preempted, out of time): requeue
#   exit 0   training finished
#   other    something failed
#
# Knobs (environment, normally set by pretrain.sh): RUN_DIR (required), CONFIG, OVERRIDES,
# GPUS_PER_NODE, MIN_NODES, MAX_RESTARTS, PYTHON, RDZV_PORT, HEAD_ADDR.
set -euo pipefail

: "${RUN_DIR:?RUN_DIR must be set (the run directory shared by all nodes)}"
: "${SLURM_JOB_ID:?entrypoint.sh runs inside a Slurm job step (srun)}"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-}"
OVERRIDES="${OVERRIDES:-}"
NNODES="${SLURM_NNODES:-1}"
MIN_NODES="${MIN_NODES:-$NNODES}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
NODE_RANK="${SLURM_NODEID:-0}"

# Processes per node: one per GPU. SLURM_GPUS_PER_NODE may carry a type ("a100:8"); 0 or unset
# (a CPU job) means one process per node unless GPUS_PER_NODE says otherwise.
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
  GPUS_PER_NODE="${SLURM_GPUS_PER_NODE:-0}"
  GPUS_PER_NODE="${GPUS_PER_NODE##*:}"
  [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || GPUS_PER_NODE=1
fi

# Rendezvous on the first node of the allocation. Its NodeAddr is what the other nodes can reach
# (a hostname or an IP; on the local test cluster every node is 127.0.0.1). The port is derived from
# the job id, so every node computes the same one and concurrent jobs rarely collide.
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
HEAD_ADDR="${HEAD_ADDR:-$(scontrol show node "$HEAD_NODE" -o | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)}"
RDZV_PORT="${RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
# The head node's agent hosts the rendezvous store (explicit, so two agents on one host never race).
IS_HOST=0
[[ "${SLURMD_NODENAME:-}" == "$HEAD_NODE" ]] && IS_HOST=1

# GPU clusters: uncomment and adapt to your fabric.
# export NCCL_SOCKET_IFNAME=ib0          # interface for NCCL's bootstrap/TCP traffic (not lo, not docker0)
# export NCCL_IB_HCA=mlx5                # InfiniBand adapters to use
# export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a failed/hung collective raises instead of blocking
#                                          # forever (NCCL_ASYNC_ERROR_HANDLING before torch 2.2)
# export NCCL_DEBUG=WARN
export PYTHONUNBUFFERED=1

# Preemption signals (USR1 from pretrain.sh's trap) go to every process of this step. The torchrun
# agent must survive them: it installs no USR1 handler, so USR1's default action would kill it. So
# torchrun starts with USR1 ignored (inherited by the trainers, whose own handler replaces it as
# the first thing `armd train` does). A USR1 in the trainers' first moments, before that handler
# exists, would be ignored and lost: this shell records every USR1 in ARMD_STOP_FILE, which the
# trainers read as a stop request (train/preemption.py), so it is acted on all the same.
export ARMD_STOP_FILE="${TMPDIR:-/tmp}/armd-stop-$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}-$$"
rm -f "$ARMD_STOP_FILE"
record_usr1() {
  echo "entrypoint: node ${SLURMD_NODENAME:-?}: USR1 at $(date "+%F %T.%3N"), recorded in $ARMD_STOP_FILE"
  : >"$ARMD_STOP_FILE"
}
trap record_usr1 USR1

# OVERRIDES="key=value key=value", split on spaces, tabs and newlines: every line counts (read -d ''
# reads to the end instead of stopping at the first newline; it returns 1 at the end, hence || true).
EXTRA=()
read -r -d '' -a EXTRA <<<"$OVERRIDES" || true
CONFIG_ARGS=()
[[ -n "$CONFIG" ]] && CONFIG_ARGS=(--config "$CONFIG")

START="$(date +%s)"
echo "entrypoint: node ${SLURMD_NODENAME:-?} ($NODE_RANK/$NNODES) restart ${SLURM_RESTART_COUNT:-0} at $(date +%T):" \
  "torchrun nnodes=$MIN_NODES:$NNODES nproc=$GPUS_PER_NODE rdzv=$HEAD_ADDR:$RDZV_PORT host=$IS_HOST"
rc=0
# In the background, so that this shell runs its USR1 trap while torchrun runs (bash runs traps only
# between commands); the subshell ignores USR1 before it becomes torchrun.
(
  trap '' USR1
  exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$MIN_NODES:$NNODES" \
    --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$HEAD_ADDR:$RDZV_PORT" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-conf="is_host=$IS_HOST" \
    --max-restarts="$MAX_RESTARTS" \
    -m armd_scale.cli train "${CONFIG_ARGS[@]}" "run.dir=$RUN_DIR" "${EXTRA[@]}"
) &
torchrun_pid=$!
# A trap cuts `wait` short; wait again until torchrun has ended, then take its exit status.
while kill -0 "$torchrun_pid" 2>/dev/null; do wait "$torchrun_pid" || true; done
wait "$torchrun_pid" || rc=$?
rm -f "$ARMD_STOP_FILE"
echo "entrypoint: node ${SLURMD_NODENAME:-?}: torchrun exited $rc at $(date +%T)"

# torchrun reports its own exit code, not the trainer's (under an elastic agent with restarts the
# trainer even exits 0 when it stops early), so the trainer's RUN_DIR/exit_status.json decides.
# Rank 0 writes it last, possibly on another node and a moment after our workers exited, so wait
# (bounded) for a final code written after this script started: an older file is a leftover of an
# earlier run (e.g. the rendezvous failed this time), and -1 means "running" or "crashed".
status="$("$PYTHON" - "$RUN_DIR/exit_status.json" "$START" "${STATUS_WAIT_S:-10}" <<'EOF'
import json, sys, time
path, start, wait = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
deadline, status = time.monotonic() + wait, "none"
while True:
    try:
        s = json.load(open(path))
        status = str(s["code"]) if s.get("time", 0) >= start else "stale"
    except (OSError, ValueError, KeyError):
        pass
    if status not in ("none", "stale", "-1") or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(status)
EOF
)"
echo "entrypoint: node ${SLURMD_NODENAME:-?}: trainer status $status"
if [[ "$status" == 75 ]]; then
  exit 75
elif [[ "$rc" -ne 0 ]]; then
  exit "$rc"
elif [[ "$status" != 0 ]]; then
  echo "entrypoint: torchrun succeeded but the trainer recorded no finish (status $status)" >&2
  exit 1
fi
