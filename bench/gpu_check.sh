#!/usr/bin/env bash
# The whole user workflow on one CUDA device, with one table at the end (bench/gpu_workflow.py).
#
#   bash bench/gpu_check.sh
#   GLOBAL_BATCH=16 MICRO_BATCH=8 bash bench/gpu_check.sh      # smaller batch for a smaller GPU
#   GPU_CHECK_PLUMBING=1 bash bench/gpu_check.sh               # plumbing check on the CPU (see below)
#
# Steps, each a row of the table (docs/GPU.md has the details):
#  1. kernels: flex and flash against sdpa in bf16, forward and backward, on every mask pattern the
#     models use, then whole models per backend (bench/gpu_check.py kernels).
#  2. training: STEPS steps of the owt-small shape (12 x 768, seq 1024, bf16, ZeRO-1) for armd, ar and
#     mdlm with each backend (sdpa, flex, flash) on the built-in corpus (no downloads), with the
#     end-of-run sample on and the final checkpoint; speed, MFU and the armd/ar step-time ratio.
#  3. resume: each arch stopped at STEPS/2 (exit 75) and resumed; the losses follow the uninterrupted run.
#  4. armd eval ppl (l2r, random, diffusion) and mdlm's diffusion ELBO on the GPU, equal to the CPU's.
#  5. armd generate: left to right with a prompt, SBP, infilling; ar; mdlm.
#  6. armd eval sbp.  7. armd convert --to export and --to universal.
#  8. ZeRO-2 on 2 processes with NCCL, when the machine has 2 GPUs or more.
# Sized to take at most about 8 minutes on an H100/H200 (an estimate: this script was written on a
# machine without a GPU; the table's header gives the measured total).
#
# Exit status: 0 when every check passed; 1 when any failed (the table says which, logs are under
# GPU_CHECK_DIR/logs); 2 when there is no CUDA device (nothing is run).
#
# GPU_CHECK_PLUMBING=1 runs the very same workflow steps on the CPU with tiny models (fp32, sdpa only,
# gloo for the 2-process step, no kernel checks). It is a check of this script's logic, NOT a GPU
# check: it proves the commands, files and comparisons work, so that a run on a GPU fails only for
# GPU reasons. tests/bench/test_gpu_check.py runs it.
#
# Environment: GPU_CHECK_DIR (scratch, default /tmp/armd_gpu_check), STEPS (12), GLOBAL_BATCH (32),
# MICRO_BATCH (16), PYTHON (default python).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${GPU_CHECK_DIR:-/tmp/armd_gpu_check}
PYTHON=${PYTHON:-python}

if [[ "${GPU_CHECK_PLUMBING:-0}" == 1 ]]; then
  echo "gpu_check: PLUMBING CHECK ON THE CPU (GPU_CHECK_PLUMBING=1): the GPU workflow's steps with tiny models;"
  echo "gpu_check: this checks the script, NOT the GPU"
  exec "$PYTHON" "$REPO/bench/gpu_workflow.py" --out "$OUT" --plumbing
fi

# No GPU: say so and stop before anything else runs.
status=0
"$PYTHON" "$REPO/bench/gpu_check.py" env || status=$?
if [[ $status -ne 0 ]]; then
  exit "$status"
fi
exec "$PYTHON" "$REPO/bench/gpu_workflow.py" --out "$OUT"
