#!/usr/bin/env bash
# The reproduction study of docs/REPRODUCTION.md, end to end on a CPU: AR vs ARMD vs MDLM trained on
# the same prose with the same model shape, compared at equal optimizer steps and equal training
# FLOPs, then SBP fine-tuning and parallel generation judged by the study's AR model.
#
#   bash bench/repro.sh                     # about 70 minutes on 2 idle CPU cores
#   REPRO_DIR=/scratch/repro bash bench/repro.sh
#
# Environment (defaults in brackets):
#   CORPORA      the shared corpora folder [<repo>/../shared/corpora]; absent -> the study is skipped
#   REPRO_DIR    scratch space for text, tokenizer, shards, runs, evaluations, logs [/tmp/armd_repro]
#   DOCS_OUT     where the plots and tables go [<repo>/docs/repro]
#   ARMD_STEPS   ARMD optimizer steps [500]; AR and MDLM get the FLOP-equivalent count (flops.py)
#   SBP_STEPS    SBP fine-tuning steps [200]
#   EVAL_TOKENS  tokens per out-of-domain evaluation set (LM1B, WikiText-2) [16384]; the in-domain
#                validation split is always evaluated whole, because its windows are read in file
#                order and a prefix would hold only the first corpus
#   SAMPLES      unconditional samples per generation setting [32]
#   REPRO_RESUME 1: keep REPRO_DIR and skip the stages it records as done, so a study that failed
#                (a missing corpus file, a full disk) resumes at the failed stage [0: start fresh]
#
# Everything runs with one intra-op thread per process and at most two processes at a time (the
# "lanes" below): on a 2-core machine that is faster than one 2-thread process, and it degrades
# gracefully when something else uses the CPU (a 2-thread pool can stall badly on a busy core).
# REPRO_DIR starts fresh unless REPRO_RESUME=1; it is refused if it holds files this script did not make.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CORPORA=${CORPORA:-$REPO/../shared/corpora}
REPRO_DIR=${REPRO_DIR:-/tmp/armd_repro}
DOCS_OUT=${DOCS_OUT:-$REPO/docs/repro}
ARMD_STEPS=${ARMD_STEPS:-500}
SBP_STEPS=${SBP_STEPS:-200}
EVAL_TOKENS=${EVAL_TOKENS:-16384}
SAMPLES=${SAMPLES:-32}
SEED=0
LENGTH=128     # sample length N = the training sequence length
DIFF_STEPS=128 # T of the diffusion(T) bound (= N, like the paper's sequential sampler)

for name in gutenberg_nltk janeausten brown state_union inaugural tinyshakespeare lm1b wikitext-2; do
  if [[ ! -d $CORPORA/$name ]]; then
    echo "repro: SKIPPED: corpus folder $CORPORA/$name not found (set CORPORA to the shared corpora folder)"
    exit 0
  fi
done

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CONFIG=$REPO/bench/repro.yaml
RUNS=$REPRO_DIR/runs
EVAL=$REPRO_DIR/eval
LOGS=$REPRO_DIR/logs
TIMINGS=$REPRO_DIR/timings.tsv
VAL=$REPRO_DIR/shards/val
LM1B=$CORPORA/lm1b/1b_benchmark.dev.tokens
WT2=$CORPORA/wikitext-2/valid.txt

# -- scratch space ---------------------------------------------------------------------------------
if [[ -e $REPRO_DIR && ! -f $REPRO_DIR/.armd_repro ]] && [[ -n $(ls -A "$REPRO_DIR" 2>/dev/null) ]]; then
  echo "repro: $REPRO_DIR is not empty and was not made by this script; choose another REPRO_DIR" >&2
  exit 2
fi
REPRO_RESUME=${REPRO_RESUME:-0}
if [[ $REPRO_RESUME == 1 && -f $TIMINGS ]]; then
  echo "repro: resuming in $REPRO_DIR (stages done before are skipped)"
else
  REPRO_RESUME=0
  rm -rf "$REPRO_DIR"
  mkdir -p "$REPRO_DIR" "$RUNS" "$EVAL" "$LOGS"
  touch "$REPRO_DIR/.armd_repro"
  printf 'stage\tlane\tseconds\n' > "$TIMINGS"
fi
START=$SECONDS
# Each invocation's wall time, also when it fails; the total of a resumed study is their sum.
trap 'printf "invocation\t-\t%s\n" "$((SECONDS - START))" >> "$TIMINGS"' EXIT
# shellcheck source=bench/stages.sh
source "$REPO/bench/stages.sh"
export STAGE_LOGS=$LOGS STAGE_TIMINGS=$TIMINGS STAGE_RESUME=$REPRO_RESUME
machine() {  # what ran the study, and how busy the machine was
  echo "cpu: $(nproc --all) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "torch: $(python -c 'import torch; print(torch.__version__)')"
  echo "load average ($1): $(cut -d' ' -f1-3 /proc/loadavg)"
}
[[ $REPRO_RESUME == 1 ]] || machine start > "$REPRO_DIR/machine.txt"

train() {  # train RUN_NAME key=value...
  local name=$1
  shift
  armd train --config "$CONFIG" run.dir="$RUNS/$name" data.train="$REPRO_DIR/shards/train" data.val="$VAL" \
    data.tokenizer="$REPRO_DIR/tokenizer" "$@"
}

ppl() {  # ppl OUT_NAME CHECKPOINT SET ORDER-ARGS...: one `armd eval ppl` on val, lm1b or wt2
  local out=$1 ckpt=$2 set=$3
  shift 3
  eval_data "$set"
  armd eval ppl --checkpoint "$ckpt" "${EVAL_DATA[@]}" --batch-size 16 --seed "$SEED" --no-progress \
    --json "$EVAL/$out.json" "$@"
}

eval_data() {  # eval_data SET: set EVAL_DATA to the --data (and window budget) arguments of one set
  case $1 in
    val) EVAL_DATA=(--data "$VAL") ;;                                                # the whole split
    lm1b) EVAL_DATA=(--data "$LM1B" --doc-split line --max-tokens "$EVAL_TOKENS") ;; # a sentence per line
    wt2) EVAL_DATA=(--data "$WT2" --max-tokens "$EVAL_TOKENS") ;;
  esac
}

ckpt_at() { printf '%s/checkpoints/step_%08d' "$RUNS/$1" "$2"; }

# -- 1. data ---------------------------------------------------------------------------------------
prepare_data() {
  python "$REPO/bench/repro_prepare.py" --corpora "$CORPORA" --out "$REPRO_DIR/text"
  armd tokenizer --input "$REPRO_DIR/text" --vocab-size 4096 --model-type bpe --byte-fallback \
    --out "$REPRO_DIR/tokenizer" --no-progress
  armd shards --tokenizer "$REPRO_DIR/tokenizer" --input "$REPRO_DIR/text" --seq-len 128 --val-fraction 0.01 \
    --doc-split paragraph --workers 2 --seed "$SEED" --out "$REPRO_DIR/shards"
}
stage data 0 prepare_data

# Equal training FLOPs: AR and MDLM take as many more steps as ARMD costs more per token.
AR_STEPS=$(python - "$CONFIG" "$ARMD_STEPS" <<'EOF'
import dataclasses, sys
from armd_scale.config import load_config
from armd_scale.model.flops import training_flops_per_token as fpt
cfg = load_config(sys.argv[1])
per_token = {arch: fpt(dataclasses.replace(cfg.model, arch=arch), cfg.data.seq_len) for arch in ("armd", "ar")}
print(round(int(sys.argv[2]) * per_token["armd"] / per_token["ar"]))
EOF
)
echo "repro: ARMD $ARMD_STEPS steps; AR and MDLM $AR_STEPS steps (equal training FLOPs)"
printf 'ARMD_STEPS=%s\nAR_STEPS=%s\nSBP_STEPS=%s\nEVAL_TOKENS=%s\nSAMPLES=%s\nSEED=%s\nDIFF_STEPS=%s\n' \
  "$ARMD_STEPS" "$AR_STEPS" "$SBP_STEPS" "$EVAL_TOKENS" "$SAMPLES" "$SEED" "$DIFF_STEPS" > "$REPRO_DIR/settings.env"

# AR and MDLM keep a checkpoint at ARMD_STEPS (equal steps) besides the final one (equal FLOPs).
EQUAL_STEPS_CKPT=(train.checkpoint_every="$ARMD_STEPS" train.keep_every="$ARMD_STEPS")
PROGRESSIVE=(train.order.kind=progressive train.order.ar_steps=$((ARMD_STEPS * 3 / 10)) train.order.rho=8
  train.order.ramp_end=$((ARMD_STEPS * 7 / 10)))

# -- 2. phase 1: AR and ARMD pretraining -----------------------------------------------------------
train_ar() { stage train_ar A train ar model.arch=ar train.order.kind=l2r train.steps="$AR_STEPS" "${EQUAL_STEPS_CKPT[@]}"; }
train_armd() { stage train_armd B train armd model.arch=armd "${PROGRESSIVE[@]}" train.steps="$ARMD_STEPS" train.checkpoint_every="$ARMD_STEPS"; }
in_parallel train_ar train_armd

# -- 3. phase 2: MDLM pretraining | likelihoods of AR and ARMD, SBP fine-tuning, SBP sweeps ---------
train_mdlm() { stage train_mdlm A train mdlm model.arch=mdlm train.steps="$AR_STEPS" "${EQUAL_STEPS_CKPT[@]}"; }

eval_ar() {
  local set
  for set in val lm1b wt2; do
    ppl "ar_${set}_l2r" "$RUNS/ar" "$set" --order l2r
    ppl "ar-eqsteps_${set}_l2r" "$(ckpt_at ar "$ARMD_STEPS")" "$set" --order l2r
  done
}
eval_armd() {  # eval_armd RUN_NAME
  local set
  for set in val lm1b wt2; do
    ppl "$1_${set}_l2r" "$RUNS/$1" "$set" --order l2r
    ppl "$1_${set}_random" "$RUNS/$1" "$set" --order random --orders 4
    ppl "$1_${set}_diffusion" "$RUNS/$1" "$set" --order diffusion --steps "$DIFF_STEPS" --orders 1
  done
}
finetune_sbp() {
  train armd-sbp model.arch=armd train.init_from="$RUNS/armd" train.order.kind=sbp "train.order.streams=[1,2,4]" \
    train.steps="$SBP_STEPS" train.warmup_steps=20 train.eval_every=50 train.checkpoint_every="$SBP_STEPS"
}
sweep() {  # sweep OUT_NAME CHECKPOINT STREAMS
  armd eval sbp --checkpoint "$2" --judge "$RUNS/ar" --streams "$3" --length "$LENGTH" --num-samples "$SAMPLES" \
    --seed "$SEED" --no-progress --out "$REPRO_DIR/sbp/$1"
}
lane_b_phase2() {
  stage eval_ar B eval_ar
  stage eval_armd B eval_armd armd
  stage finetune_sbp B finetune_sbp
  stage eval_armd_sbp B eval_armd armd-sbp
  stage sweep_armd B sweep armd "$RUNS/armd" 1,2,4
  stage sweep_armd_sbp B sweep armd-sbp "$RUNS/armd-sbp" 1,2,4
  stage sweep_ar B sweep ar "$RUNS/ar" 1
}
in_parallel train_mdlm lane_b_phase2

# -- 4. phase 3: MDLM bounds and samples -----------------------------------------------------------
eval_mdlm_continuous() {
  local set tag ckpt
  for set in val lm1b wt2; do
    for tag in mdlm mdlm-eqsteps; do
      ckpt=$RUNS/mdlm
      [[ $tag == mdlm-eqsteps ]] && ckpt=$(ckpt_at mdlm "$ARMD_STEPS")
      eval_data "$set"
      python "$REPO/bench/repro_mdlm_elbo.py" --checkpoint "$ckpt" "${EVAL_DATA[@]}" --draws 8 --seed "$SEED" \
        --json "$EVAL/${tag}_${set}_continuous.json"
    done
  done
}
mdlm_samples() {
  # T equal to the SBP forward-call counts S + N/S - 1 for S = 1, 2, 4
  python "$REPO/bench/repro_mdlm_samples.py" --checkpoint "$RUNS/mdlm" --judge "$RUNS/ar" --length "$LENGTH" \
    --steps "$LENGTH,$((2 + LENGTH / 2 - 1)),$((4 + LENGTH / 4 - 1))" --num-samples "$SAMPLES" --seed "$SEED" \
    --out "$REPRO_DIR/sbp/mdlm"
}
lane_a_phase3() {  # the whole validation split: about as long as lane B's four stages
  stage eval_mdlm_diffusion_val A ppl mdlm_val_diffusion "$RUNS/mdlm" val --order diffusion --steps "$DIFF_STEPS" --orders 1
}
lane_b_phase3() {
  stage mdlm_samples B mdlm_samples
  stage eval_mdlm_continuous B eval_mdlm_continuous
  stage eval_mdlm_diffusion_lm1b B ppl mdlm_lm1b_diffusion "$RUNS/mdlm" lm1b --order diffusion --steps "$DIFF_STEPS" --orders 1
  stage eval_mdlm_diffusion_wt2 B ppl mdlm_wt2_diffusion "$RUNS/mdlm" wt2 --order diffusion --steps "$DIFF_STEPS" --orders 1
}
in_parallel lane_a_phase3 lane_b_phase3

# -- 5. report -------------------------------------------------------------------------------------
trap - EXIT
printf 'invocation\t-\t%s\n' "$((SECONDS - START))" >> "$TIMINGS"
machine end | tail -n 1 >> "$REPRO_DIR/machine.txt"
stage report 0 python "$REPO/bench/repro_report.py" --repro-dir "$REPRO_DIR" --out "$DOCS_OUT"
echo "repro: done in $(((SECONDS - START) / 60)) min $(((SECONDS - START) % 60)) s; tables and plots in $DOCS_OUT"
