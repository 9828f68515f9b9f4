#!/usr/bin/env bash
# The user workflow on one CUDA device, in two tiers, one row per step appended to a results file as
# each step finishes, and one table at the end (bench/gpu_workflow.py).
#
#   bash bench/gpu_check.sh [--quick]                          # the core (the default tier)
#   bash bench/gpu_check.sh --full                             # everything
#   GLOBAL_BATCH=16 MICRO_BATCH=8 bash bench/gpu_check.sh      # smaller batch for a smaller GPU
#   GPU_CHECK_PLUMBING=1 bash bench/gpu_check.sh [--full]      # plumbing check on the CPU (see below)
#
# --quick: its budget is 6 minutes on one H100/H200 (nothing has been measured on a GPU yet: this
# script was written on machines without one; the results file's last line and the table's title give
# the measured total):
#  1. kernels: flex (and flash when installed) against float32 sdpa in bf16, forward and backward, on
#     the default ARMD's masks (l2r, random and SBP blocks under its causal, strict and two-stream masks)
#     and a whole model with its query input (bench/gpu_check.py kernels --quick).
#  2. training: STEPS (30) bf16 steps of the owt-small shape (12 x 768, seq 1024, ZeRO-1) for armd and
#     ar with sdpa and flex (flash too when installed) on the built-in corpus (no downloads), with the
#     end-of-run sample and the final checkpoint; step time, tokens/s, MFU, peak memory; then
#     "speed armd vs ar", the default model next to ar per backend.
#  3. resume armd: stopped at STEPS/2 (exit 75, checkpoint) and resumed; losses follow the first run.
#  4. armd eval ppl l2r on the GPU, equal to the CPU's.  5. armd generate with a prompt, and SBP.
# --full: today's whole workflow: kernels on every pattern; armd, ar, mdlm x sdpa, flex, flash for STEPS
#  (12) steps; resume of each arch; eval ppl (armd l2r, random, diffusion; mdlm diffusion); generate
#  (armd prompt, SBP, infilling; ar; mdlm); eval sbp; convert --to export and universal; ZeRO-2 on 2
#  processes with NCCL when the machine has 2 GPUs or more.
# Training processes run one after another (resume runs too: two bf16 runs of this size side by side
# would not fit one GPU).
#
# Results: every finished step appends a row to $OUT/gpu_check.md when OUT is set (a folder whose files
# come back from a lent machine), else to $GPU_CHECK_DIR/gpu_check.md: title and table header first,
# then one line per step, the measured total last, so a run cut short still returns what it measured.
# The log tails of the failed steps go to one file next to it, gpu_check_failures.log, and the kernel
# check's table to gpu_check_kernels.log (3 files at most). All logs: GPU_CHECK_DIR/logs.
#
# A machine without a package registry: `bash bench/gpu_wheels.sh` fills .whl/ (repo root) where a
# registry is reachable; carried with the working tree, the wheels of it whose packages this Python
# lacks are installed here into GPU_CHECK_DIR/site (pip --no-index --no-deps), which goes first on
# PYTHONPATH with the repo root; torch stays the machine's own. GPU_WHEELS names another wheel folder.
#
# Exit status: 0 when every check passed; 1 when any failed (the table says which); 2 when there is no
# CUDA device (nothing is run) or on a usage error.
#
# GPU_CHECK_PLUMBING=1 runs the very same steps of the tier on the CPU with tiny models (fp32, sdpa
# only, gloo for the 2-process step, no kernel checks), streaming rows the same way. It is a check of
# this script's logic, NOT a GPU check: it proves the commands, files and comparisons work, so that a
# run on a GPU fails only for GPU reasons. tests/bench/test_gpu_check.py runs it.
#
# Environment: GPU_CHECK_DIR (scratch, default /tmp/armd_gpu_check), OUT (see Results), STEPS (30
# quick, 12 full), GLOBAL_BATCH (32), MICRO_BATCH (16), PYTHON (default python3, else python),
# GPU_WHEELS (default .whl in the repo root).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=${GPU_CHECK_DIR:-/tmp/armd_gpu_check}  # not OUT: that one names the folder results go to
TIER=quick
for arg in "$@"; do
  case "$arg" in
    --quick) TIER=quick ;;
    --full) TIER=full ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu_check: unknown argument '$arg' (--quick or --full)" >&2
      exit 2
      ;;
  esac
done
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=$(command -v python3 || command -v python || true)
fi
if [[ -z "$PYTHON" ]]; then
  echo "gpu_check: no python3 or python on PATH (set PYTHON)" >&2
  exit 2
fi
REPORT_DIR=${OUT:-$SCRATCH}
SECONDS=0

# The package from the working tree, whatever is installed.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PLUMBING=()
if [[ "${GPU_CHECK_PLUMBING:-0}" == 1 ]]; then
  echo "gpu_check: PLUMBING CHECK ON THE CPU (GPU_CHECK_PLUMBING=1): the GPU workflow's $TIER tier with tiny models;"
  echo "gpu_check: this checks the script, NOT the GPU"
  PLUMBING=(--plumbing)
else
  # No GPU: say so and stop before anything else runs.
  status=0
  "$PYTHON" "$REPO/bench/gpu_check.py" env || status=$?
  if [[ $status -ne 0 ]]; then
    exit "$status"
  fi
fi

# Carried wheels: install those whose packages this Python lacks (no registry needed).
WHEELS=${GPU_WHEELS:-$REPO/.whl}
if [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" "$REPO/bench/check_runner.py" wheels --from "$WHEELS" --target "$SCRATCH/site" || exit 1
  if [[ -d "$SCRATCH/site" ]]; then
    export PYTHONPATH="$SCRATCH/site:$PYTHONPATH"
  fi
fi
echo "gpu_check: $TIER tier; python $PYTHON; results appended to $REPORT_DIR/gpu_check.md as the steps finish"

status=0
"$PYTHON" "$REPO/bench/gpu_workflow.py" --out "$SCRATCH" --tier "$TIER" --report-dir "$REPORT_DIR" \
  "${PLUMBING[@]}" || status=$?
echo "gpu_check: $TIER tier finished in ${SECONDS} s (exit $status), start-up and wheel installation included"
exit "$status"
