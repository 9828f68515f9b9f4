#!/usr/bin/env bash
# The left-to-right gap study (docs/REPRODUCTION.md, "The left-to-right gap"): why ARMD trailed AR
# in the very order where it should behave like a causal LM, which query-stream input closes the gap,
# and how the gap behaves with model size. Every run is an ordinary `armd train` with overrides, listed
# in bench/ar_gap_runs.txt; each run's validation curve stays in its metrics.jsonl.
#
#   bash bench/ar_gap.sh                         # every group (tiny-cpu, the study's size, scaling)
#   PARTS=table,pstart bash bench/ar_gap.sh      # some groups only
#   bash bench/ar_gap.sh --list                  # what would run, and what is already done
#
# Environment (defaults in brackets):
#   AR_GAP_DIR  runs, data and logs [/tmp/armd_ar_gap]; runs already finished there are kept, so the
#               command resumes and extends a study instead of starting over
#   DOCS_OUT    where the tables and plots go [<repo>/docs/ar_gap]
#   RUNS        the run list [<repo>/bench/ar_gap_runs.txt]; bench/paper_model_runs.txt is the re-run of
#               the paper's model beside ours (DOCS_OUT=<repo>/docs/paper_model for its report)
#   PARTS       comma list of groups of the run list [all]
#   LANES       runs trained at the same time, one thread each [2]
#   CORPORA     the shared corpora folder for the study-size and scaling groups [<repo>/../shared/corpora];
#               without it those groups are skipped with a message
#
# Seeds are fixed (train.seed per run, data order data.seed of the preset), so a run's numbers do not
# depend on machine load, only its wall time does.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AR_GAP_DIR=${AR_GAP_DIR:-/tmp/armd_ar_gap}
DOCS_OUT=${DOCS_OUT:-$REPO/docs/ar_gap}
PARTS=${PARTS:-}
LANES=${LANES:-2}
CORPORA=${CORPORA:-$REPO/../shared/corpora}
RUNS_FILE=${RUNS:-$REPO/bench/ar_gap_runs.txt}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export ARGAP_DATA=$AR_GAP_DIR/data
mkdir -p "$AR_GAP_DIR"

if [[ ${1:-} == --list ]]; then
  exec python "$REPO/bench/ar_gap_run.py" --runs "$RUNS_FILE" --out "$AR_GAP_DIR" ${PARTS:+--groups "$PARTS"} --list
fi

# Which groups need the prose shards of the reproduction study (presets that read ${ARGAP_DATA}).
all_groups=$(awk '$1 == "run" {print $2}' "$RUNS_FILE" | sort -u | paste -sd, -)
wanted=${PARTS:-$all_groups}
needs_data=$(awk -v want=",$wanted," '$1 == "preset" && /ARGAP_DATA/ {p[$2] = 1}
  $1 == "run" && p[$4] && index(want, "," $2 ",") {print $2}' "$RUNS_FILE" | sort -u | paste -sd, -)
if [[ -n $needs_data && ! -f $ARGAP_DATA/shards/val/manifest.json ]]; then
  if [[ -d $CORPORA/gutenberg_nltk ]]; then
    # The same text, tokenizer and shards as bench/repro.sh (same commands and seed).
    echo "ar_gap: preparing the study's shards in $ARGAP_DATA"
    python "$REPO/bench/repro_prepare.py" --corpora "$CORPORA" --out "$ARGAP_DATA/text"
    armd tokenizer --input "$ARGAP_DATA/text" --vocab-size 4096 --model-type bpe --byte-fallback \
      --out "$ARGAP_DATA/tokenizer" --no-progress
    armd shards --tokenizer "$ARGAP_DATA/tokenizer" --input "$ARGAP_DATA/text" --seq-len 128 --val-fraction 0.01 \
      --doc-split paragraph --workers 2 --seed 0 --out "$ARGAP_DATA/shards"
  else
    echo "ar_gap: SKIPPING groups $needs_data: corpus folder $CORPORA not found (set CORPORA)"
    wanted=$(tr , '\n' <<< "$wanted" | grep -vxF -f <(tr , '\n' <<< "$needs_data") | paste -sd, -)
  fi
fi

rc=0
if [[ -n $wanted ]]; then
  python "$REPO/bench/ar_gap_run.py" --runs "$RUNS_FILE" --out "$AR_GAP_DIR" --lanes "$LANES" --groups "$wanted" || rc=$?
fi
python "$REPO/bench/ar_gap_report.py" --runs "$RUNS_FILE" --out "$AR_GAP_DIR" --docs "$DOCS_OUT"
exit "$rc"
