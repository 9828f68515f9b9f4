#!/bin/bash
# Offline evaluation of a run's latest complete checkpoint on one node: perplexity on a data set
# under a fixed generation order, written as JSON.
#
#   RUN_DIR=/shared/runs/owt-small DATA=/shared/data/owt/val sbatch slurm/eval.sh
#
# On a CPU-only cluster pass `--gpus-per-node=0` (this script asks for one GPU by default).
#
#SBATCH --job-name=armd-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --output=%x-%j.out
#
# Knobs (environment variables):
#   RUN_DIR   run directory, or one checkpoint folder in it (required)
#   DATA      shard directory or URL to evaluate on (required)
#   ORDER     generation order for the likelihood (default l2r)
#   OUT       JSON result file (default RUN_DIR/eval-<order>-<job id>.json)
#   DEVICE    where to compute (default: cuda when the job holds a GPU, which Slurm announces in
#             SLURM_GPUS_ON_NODE, so a job whose GPU torch cannot see fails instead of silently using
#             the CPU; otherwise auto = cuda if torch sees one, else cpu)
#   EVAL_ARGS extra arguments for `armd eval ppl`, separated by spaces or newlines
#   PYTHON    interpreter with armd_scale installed (default: python3 on PATH)
set -euo pipefail

: "${RUN_DIR:?RUN_DIR must name a run directory or checkpoint}"
: "${DATA:?DATA must name the evaluation data (shard directory or URL)}"
ORDER="${ORDER:-l2r}"
OUT="${OUT:-$RUN_DIR/eval-$ORDER-${SLURM_JOB_ID:-local}.json}"
PYTHON="${PYTHON:-python3}"
if [[ -z "${DEVICE:-}" ]]; then
  if [[ "${SLURM_GPUS_ON_NODE:-0}" =~ ^[1-9] ]]; then DEVICE=cuda; else DEVICE=auto; fi
fi
# Split on spaces, tabs and newlines: every line of a multi-line EVAL_ARGS counts (read -d '' reads to
# the end instead of stopping at the first newline, and returns 1 there, hence || true).
EXTRA=()
read -r -d '' -a EXTRA <<<"${EVAL_ARGS:-}" || true

# Slurm runs a copy of this script, so find the checkout through the submitted path (or ARMD_HOME).
if [[ -z "${ARMD_HOME:-}" && -n "${SLURM_JOB_ID:-}" ]]; then
  script="$(scontrol show job "$SLURM_JOB_ID" -o | grep -o 'Command=[^ ]*' | cut -d= -f2)"
  ARMD_HOME="$(cd "$(dirname "${script:-$SLURM_SUBMIT_DIR/slurm/eval.sh}")/.." && pwd)"
fi
[[ -n "${ARMD_HOME:-}" ]] && export PYTHONPATH="$ARMD_HOME${PYTHONPATH:+:$PYTHONPATH}"

echo "eval.sh: $RUN_DIR on $DATA, order $ORDER, device $DEVICE -> $OUT"
"$PYTHON" -m armd_scale.cli eval ppl --checkpoint "$RUN_DIR" --data "$DATA" --order "$ORDER" --device "$DEVICE" \
  --json "$OUT" "${EXTRA[@]}"
