#!/usr/bin/env bash
# GPU check of the attention backends and of training speed, on one CUDA device.
#
#   bash bench/gpu_check.sh
#   GLOBAL_BATCH=32 MICRO_BATCH=8 bash bench/gpu_check.sh      # smaller batch for a smaller GPU
#
# 1. Kernels: flex and flash (where applicable and installed) against sdpa in bf16, forward and
#    backward, on the masks the models use (single-token blocks, SBP, diffusion blocks; causal,
#    strict and two-stream rows; the bidirectional mdlm pattern), then a whole ARMD model per
#    backend (bench/gpu_check.py kernels).
# 2. Training: STEPS optimizer steps of the `owt-small` preset (GPT-2-small shape, seq 1024, bf16)
#    for arch armd and arch ar with each backend (sdpa, flex, flash), on a synthetic Markov source
#    built locally (no downloads). The batch is shrunk from the preset's 512 sequences so that a
#    run takes seconds; the ZeRO stage, precision and optimizer are the preset's.
# 3. Report: median step time, tokens/s and MFU per backend and arch, and the armd/ar step-time
#    ratio per backend (bench/gpu_check.py report), also written to OUT/report.md.
#
# Exit status: 0 when everything ran and matched; 1 on a kernel mismatch or a failed training run;
# 2 when there is no CUDA device (nothing is run). flash is skipped, with a message, when the
# flash_attn package is missing.
#
# Environment: GPU_CHECK_DIR (scratch, default /tmp/armd_gpu_check), STEPS (20), GLOBAL_BATCH (64),
# MICRO_BATCH (16).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${GPU_CHECK_DIR:-/tmp/armd_gpu_check}
STEPS=${STEPS:-20}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
MICRO_BATCH=${MICRO_BATCH:-16}
HELPER=$REPO/bench/gpu_check.py

# No GPU: say so and stop before anything else runs.
status=0
python "$HELPER" env || status=$?
if [[ $status -ne 0 ]]; then
  exit "$status"
fi

rm -rf "$OUT"
mkdir -p "$OUT/runs" "$OUT/logs"
failed=0

echo "== 1. attention kernels (bf16 vs float32 sdpa)"
if ! python "$HELPER" kernels 2>&1 | tee "$OUT/logs/kernels.log"; then
  failed=1
fi

echo "== 2. training: $STEPS steps of owt-small per backend and arch (batch $GLOBAL_BATCH x 1024)"
backends=(sdpa flex)
if python -c "import flash_attn" 2>/dev/null; then
  backends+=(flash)
else
  echo "gpu_check: flash_attn is not installed: the flash training runs are skipped"
fi
for backend in "${backends[@]}"; do
  for arch in armd ar; do
    run=$OUT/runs/$arch-$backend
    echo "-- $arch with $backend"
    # owt-small's progressive order is left to right for its first 9,000 steps, so every step here
    # has single-token blocks and flash applies to armd too.
    if ! armd train --config owt-small run.dir="$run" model.arch="$arch" model.attention_backend="$backend" \
        "data.train=synthetic:markov?vocab=512&order=1&seed=0&samples=2048&val_samples=0" data.val=null \
        data.tokenizer=null data.cache_dir="$OUT/cache" data.num_workers=0 \
        train.steps="$STEPS" train.global_batch_size="$GLOBAL_BATCH" train.micro_batch_size="$MICRO_BATCH" \
        train.warmup_steps=5 train.eval_every=0 train.checkpoint_every=100000 train.log_every=1 \
        train.sample_at_end=0 log.wandb=off log.progress_bar=false > "$OUT/logs/$arch-$backend.log" 2>&1; then
      echo "gpu_check: training $arch with $backend FAILED; last lines of $OUT/logs/$arch-$backend.log:"
      tail -n 20 "$OUT/logs/$arch-$backend.log"
      failed=1
    fi
    rm -rf "$run/checkpoints"  # the final checkpoint (weights + optimizer, ~1.5 GB) is not needed
  done
done

echo "== 3. speed per backend"
python "$HELPER" report --runs "$OUT/runs" --skip 5 || failed=1

if [[ $failed -ne 0 ]]; then
  echo "gpu_check: FAILED (see above and $OUT/logs)"
  exit 1
fi
echo "gpu_check: all checks passed"
