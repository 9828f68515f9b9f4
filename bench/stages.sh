# Stages of a long study script, sourced by bench/repro.sh. The caller sets STAGE_LOGS (a folder) and
# STAGE_TIMINGS (a TSV file with the header `stage<TAB>lane<TAB>seconds`), and runs under `set -e`.
#
#   stage NAME LANE CMD...   run CMD (a command or a shell function) with its output in
#                            $STAGE_LOGS/NAME.log; on success append its wall time to $STAGE_TIMINGS;
#                            on failure print the log's last lines and return CMD's status.
#                            With STAGE_RESUME=1 a stage already recorded there is skipped, so a study
#                            that failed in its last stage resumes there instead of starting over.
#   in_parallel F G          run shell functions F and G at the same time; fail if either fails.

stage() {
  local name=$1 lane=$2 t0=$SECONDS rc
  shift 2
  if [[ ${STAGE_RESUME:-0} == 1 ]] && cut -f1 "$STAGE_TIMINGS" | grep -qxF "$name"; then
    echo "[$(date +%T)] lane $lane: $name (done before, skipped)"
    return 0
  fi
  echo "[$(date +%T)] lane $lane: $name"
  # Bash switches errexit off inside anything run as a condition (`if ! f`, `f || ...`), so a stage
  # of several commands run that way passes whenever its last command does. Run it as a plain command
  # in a subshell with errexit on, and read the status afterwards.
  set +e
  (
    set -e
    "$@"
  ) > "$STAGE_LOGS/$name.log" 2>&1
  rc=$?
  set -e
  if ((rc != 0)); then
    echo "stage $name FAILED (exit $rc); last lines of $STAGE_LOGS/$name.log:" >&2
    tail -n 25 "$STAGE_LOGS/$name.log" >&2
    return "$rc"
  fi
  printf '%s\t%s\t%s\n' "$name" "$lane" "$((SECONDS - t0))" >> "$STAGE_TIMINGS"
}

in_parallel() {
  local rc=0 a b
  "$1" &
  a=$!
  "$2" &
  b=$!
  wait "$a" || rc=1
  wait "$b" || rc=1
  return "$rc"
}
