#!/usr/bin/env bash
# run_slurm.sh: run every shard of a shardrun configuration as a Slurm job array.
#
# Usage: ./scripts/run_slurm.sh [--config FILE] [--num-shards N] [--only-failed] [--wait]
#                               [--force | --redo-stale] [--dry-run] [--jobs J] [--throttle K]
#                               [--notify CMD [ARG...] ';'] [-- SBATCH_OPTION...]
#
#   --version          print the version and exit
#   --config FILE      run configuration (default: conf/default.yaml)
#   --num-shards N     shard count (default: the config's `shards`; required without it)
#   --only-failed      submit exactly the shards whose last run failed, was interrupted or never
#                      finished (their logs say so), with the recorded shard count; the workers'
#                      preflight refuses a changed dataset identity (not a fixed script)
#   --wait             wait until the array ends; exit 0 only if every shard succeeded
#   --force            start the run over: workers discard their outputs, and outputs of another
#                      shard count are removed (cached items are reused)
#   --redo-stale       submit every shard, regenerating the items that an older revision of the
#                      generator made (a fixed script); the rest is kept
#   --dry-run          print the plan (per shard: items, first … last key) and the sbatch
#                      command(s); submit nothing
#   --jobs J           items in flight per shard: passed to the workers, and --cpus-per-task=J
#   --throttle K       at most K tasks of an array running at once (sbatch --array=...%K; the
#                      same as passing --array=%K after --)
#   --notify CMD [ARG...] ';'
#                      with --wait, when the array ends, run CMD (no shell) with the run's summary
#                      as JSON on stdin and SHARDRUN_* variables; the ';' word ends its words.
#                      Killed after SHARDRUN_NOTIFY_TIMEOUT seconds (default 60); never changes
#                      the exit code
#   -- OPTIONS         passed to sbatch as they are (--time, --partition, --mem, --account, ...)
#
# Task i of the array runs shard i (`shard-worker --shard-index i --num-shards N --quiet`) and
# logs to logs/<run>/shard_<i>_of_<N>.log; Slurm's output goes to logs/<run>/slurm-%A_%a.out.
# Submissions are recorded in logs/<run>/slurm.status. Arrays longer than the cluster's
# MaxArraySize (SHARDRUN_MAX_ARRAY_SIZE overrides it) are split into several submissions; each
# task then runs shard <task id> + <offset of its submission>. See docs/SLURM.md.
# Environment: SHARDRUN_BIN (prebuilt binaries; default target/release, built when missing or
# stale), SHARDRUN_MAX_ARRAY_SIZE, SHARDRUN_SLURM_POLL (seconds between looks at the queue while
# waiting; default 10).
# Exit: 0 submitted (with --wait: every shard succeeded), 1 a submission failed (with --wait:
# some shard did not succeed), 2 usage error or refusal (a failed preflight,
# `shard-worker --check`, submits nothing), 130/143 interrupted while waiting (the
# jobs keep running).
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG=conf/default.yaml
NUM_SHARDS=''
ONLY_FAILED=0
WAIT=0
FORCE=0
REDO_STALE=0
DRY_RUN=0
JOBS=''
THROTTLE=''
SBATCH_OPTS=()
# Seconds between two looks at the queue while --wait waits.
POLL=${SHARDRUN_SLURM_POLL:-10}

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

usage_error() {
  DIE_CODE=2 die "$1 (see --help)"
}

# Keeps sbatch options, except an --array that only sets a throttle (%K), which becomes
# --throttle: the script writes the index list itself.
take_sbatch_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --array=%* | -a%*) THROTTLE=${1#*%} ;;
      --array | -a)
        { [ $# -ge 2 ] && [[ "$2" == %* ]]; } || usage_error "the array's indices are the shards; pass only a throttle (--array=%K)"
        THROTTLE=${2#%}
        shift
        ;;
      --array=* | -a*) usage_error "the array's indices are the shards; pass only a throttle (--array=%K), not $1" ;;
      *) SBATCH_OPTS+=("$1") ;;
    esac
    shift
  done
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      -V | --version) echo "$(basename "$0") (shardrun $(shardrun_version))"; exit 0 ;;
      --config) [ $# -ge 2 ] || usage_error "--config needs a file"; CONFIG=$2; shift ;;
      --num-shards) [ $# -ge 2 ] || usage_error "--num-shards needs a number"; NUM_SHARDS=$2; shift ;;
      --only-failed) ONLY_FAILED=1 ;;
      --wait) WAIT=1 ;;
      --force) FORCE=1 ;;
      --redo-stale) REDO_STALE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --jobs) [ $# -ge 2 ] || usage_error "--jobs needs a number"; JOBS=$2; shift ;;
      --throttle) [ $# -ge 2 ] || usage_error "--throttle needs a number"; THROTTLE=$2; shift ;;
      --notify) shift; take_notify "$@"; shift $((NOTIFY_WORDS - 1)) ;;
      --) shift; take_sbatch_opts "$@"; break ;;
      *) usage_error "unknown option: $1 (sbatch options go after --)" ;;
    esac
    shift
  done
  [ -z "$NUM_SHARDS" ] || is_count "$NUM_SHARDS" "$MAX_SHARDS" || usage_error "--num-shards must be a whole number from 1 to $MAX_SHARDS, not '$NUM_SHARDS'"
  [ -z "$JOBS" ] || is_count "$JOBS" "$MAX_JOBS" || usage_error "--jobs must be a whole number from 1 to $MAX_JOBS, not '$JOBS'"
  [ -z "$THROTTLE" ] || is_count "$THROTTLE" "$MAX_SHARDS" || usage_error "the throttle must be a whole number from 1 to $MAX_SHARDS, not '$THROTTLE'"
  is_seconds "$POLL" "$MAX_SECONDS" || usage_error "SHARDRUN_SLURM_POLL must be a number of seconds from 0 to $MAX_SECONDS, not '$POLL'"
  [ -f "$CONFIG" ] || usage_error "no configuration file at $CONFIG"
  check_notify_timeout
  if ((${#NOTIFY[@]} > 0 && !WAIT)); then usage_error "--notify runs when the array ends, which only --wait sees: add --wait (or watch with: monitor --follow --notify CMD ... ';')"; fi
  if ((ONLY_FAILED && FORCE)); then usage_error "--only-failed and --force contradict each other"; fi
  if ((REDO_STALE && FORCE)); then usage_error "--redo-stale and --force contradict each other (--force regenerates everything)"; fi
  if ((REDO_STALE && ONLY_FAILED)); then usage_error "--redo-stale runs every shard (stale items can be in any); drop --only-failed"; fi
}












# The run's last launch, by either launcher (this one or run_parallel.sh): the later line wins.
last_launch() {
  local mine local_
  mine=$(last_line "$STATUS" launch)
  local_=$(last_line "$LOGS_DIR/launcher.status" launch)
  if [ -n "$local_" ] && [[ "$local_" > "$mine" ]]; then echo "$local_"; else echo "$mine"; fi
}

choose_shards() {
  local plans launch recorded_n i
  if ((ONLY_FAILED)); then
    launch=$(last_launch)
    recorded_n=$(field "$launch" num_shards)
    [ -n "$recorded_n" ] || DIE_CODE=2 die "run '$RUN' has no launch record ($(rel "$STATUS")); start it without --only-failed"
    [[ "$recorded_n" =~ ^[1-9][0-9]{0,5}$ ]] ||
      DIE_CODE=2 die "the status file $(rel "$STATUS") is damaged (num_shards='${recorded_n:0:40}'); start the run again with --force"
    if [ -n "$NUM_SHARDS" ] && [ "$NUM_SHARDS" != "$recorded_n" ]; then
      DIE_CODE=2 die "run '$RUN' was launched with $recorded_n shards; --only-failed re-runs that plan (use --force to start over with $NUM_SHARDS)"
    fi
    # A changed configuration is the workers' to judge (the preflight already asked them): a
    # new identity is refused, a new revision of the generator is not.
    NUM_SHARDS=$recorded_n
  else
    # --redo-stale acts on the run as it is: its existing plan, unless told otherwise.
    if ((REDO_STALE)) && [ -z "$NUM_SHARDS" ]; then
      NUM_SHARDS=$(existing_plans | head -n 1)
    fi
    [ -n "$NUM_SHARDS$CONFIG_SHARDS" ] || usage_error "$CONFIG sets no shard count: pass --num-shards N"
    NUM_SHARDS=${NUM_SHARDS:-$CONFIG_SHARDS}
    plans=$(existing_plans | grep -vx "$NUM_SHARDS" || true)
    if [ -n "$plans" ]; then
      if ((FORCE)); then
        ((DRY_RUN)) || discard_other_plans
      else
        DIE_CODE=2 die "run '$RUN' already has outputs from $(echo "$plans" | tr '\n' ' ' | sed 's/ $//') shards in $DATA_DIR; use --num-shards $(echo "$plans" | head -n 1), or --force to start over with $NUM_SHARDS shards (cached items are reused)"
      fi
    fi
  fi
  SHARDS=()
  for ((i = 0; i < NUM_SHARDS; i++)); do
    if ((ONLY_FAILED)) && [ "$(last_field "$(shard_log "$i")" finish status)" = ok ]; then
      continue
    fi
    SHARDS+=("$i")
  done
}

# The command that re-submits what did not succeed, with the options that name this run.
# An interrupted --redo-stale is finished by --redo-stale (the items still stale), not by
# --only-failed, which would leave them as they are.
again() {
  local action=--only-failed
  ((REDO_STALE)) && action=--redo-stale
  printf '%s %s%s %s' "$(me)" "$(quoted --config "$CONFIG")" "${JOBS:+ --jobs $JOBS}" "$action"
}

# ---- Slurm ---------------------------------------------------------------------------------

# The cluster's MaxArraySize: a task id must be below it. SHARDRUN_MAX_ARRAY_SIZE overrides it.
max_array_size() {
  local m=${SHARDRUN_MAX_ARRAY_SIZE:-}
  if [ -z "$m" ] && have_cmd scontrol; then
    m=$(scontrol show config 2>/dev/null | awk '$1 == "MaxArraySize" {print $3}')
  fi
  if [ -z "$m" ]; then
    ((DRY_RUN)) || die "cannot read MaxArraySize (scontrol show config); is Slurm reachable from here?"
    say "cannot read MaxArraySize (no Slurm here): assuming Slurm's default, 1001"
    m=1001
  fi
  # Slurm's own ceiling for MaxArraySize is 4000001.
  is_count "$m" 4000001 || DIE_CODE=2 die "MaxArraySize must be a whole number from 1 to 4000001, not '$m'"
  echo "$m"
}

# ranges 0 1 2 5 7 8: the compact array syntax, "0-2,5,7-8".
ranges() {
  local out='' start='' prev='' i
  for i in "$@"; do
    if [ -n "$prev" ] && ((i == prev + 1)); then
      prev=$i
      continue
    fi
    [ -n "$start" ] && out+=$(range_of "$start" "$prev"),
    start=$i
    prev=$i
  done
  [ -n "$start" ] && out+=$(range_of "$start" "$prev")
  echo "$out"
}
range_of() { if (($1 == $2)); then echo "$1"; else echo "$1-$2"; fi; }

# Splits SHARDS into submissions of task ids below MaxArraySize: shard i goes to the
# submission with offset (i / M) * M as task i - offset. OFFSETS lists the offsets; ARRAY_OF
# and SHARDS_OF give each one's array spec and shard list.
plan_submissions() {
  local m i offset prev=-1 tasks=() shards=()
  m=$(max_array_size)
  MAX_ARRAY=$m
  OFFSETS=()
  declare -gA ARRAY_OF=() SHARDS_OF=()
  for i in "${SHARDS[@]}" ''; do
    offset=''
    [ -n "$i" ] && offset=$((i / m * m))
    if [ "$offset" != "$prev" ] && ((${#tasks[@]} > 0)); then
      OFFSETS+=("$prev")
      ARRAY_OF[$prev]=$(ranges "${tasks[@]}")${THROTTLE:+%$THROTTLE}
      SHARDS_OF[$prev]=$(IFS=,; echo "${shards[*]}")
      tasks=()
      shards=()
    fi
    [ -n "$i" ] || break
    prev=$offset
    tasks+=($((i - offset)))
    shards+=("$i")
  done
}

# The batch script: a few lines with every value written in, so a task depends on nothing but
# the shared file system. The worker replaces the shell (exec): Slurm's SIGTERM (scancel, time
# limit, preemption) then reaches it directly and it commits its finished items before exiting.
write_batch_script() {
  local q_bin q_root q_config q_run extra=''
  q_bin=$(printf '%q' "$WORKER")
  q_root=$(printf '%q' "$PWD")
  q_config=$(printf '%q' "$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")")
  q_run=$(printf '%q' "$RUN")
  [ -n "$JOBS" ] && extra=" --jobs $JOBS"
  # A requeued task redoes what is still stale: the same work, never more.
  ((REDO_STALE)) && extra+=" --redo-stale"
  cat <<EOF
#!/bin/bash
# Slurm batch script of shardrun run $q_run, written by scripts/run_slurm.sh.
# Task T of an array submitted with offset O (the first argument) runs shard T + O of $NUM_SHARDS.
set -eu
index=\$((SLURM_ARRAY_TASK_ID + \${1:-0}))
echo "shardrun: run $q_run, shard \$index of $NUM_SHARDS, job \${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID} on \$(hostname), restart \${SLURM_RESTART_COUNT:-0}"
set --
EOF
  if ((FORCE)); then
    cat <<'EOF'
# --force applies to the first start only: a requeued task (SLURM_RESTART_COUNT > 0) resumes.
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then set -- --force; fi
EOF
  fi
  cat <<EOF
cd $q_root
exec $q_bin --config $q_config --root $q_root --shard-index "\$index" --num-shards $NUM_SHARDS --quiet$extra "\$@"
EOF
}

# sbatch_args OFFSET: the sbatch command line of one submission (in SBATCH_ARGS).
sbatch_args() {
  local offset=$1
  SBATCH_ARGS=(sbatch --parsable --job-name="shardrun-$RUN" --array="${ARRAY_OF[$offset]}"
    --output="$(rel "$LOGS_DIR")/slurm-%A_%a.out" --open-mode=append --requeue --chdir="$PWD")
  [ -n "$JOBS" ] && SBATCH_ARGS+=(--cpus-per-task="$JOBS")
  SBATCH_ARGS+=("${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}" "$(rel "$BATCH")" "$offset")
}

# Array job ids of this run (from the status file) that are still in the queue. A job counts
# as this run's only if its working directory is this one too, so ids that a reset cluster
# hands out again are not mistaken for ours.
queued_jobs() {
  local ids queue
  ids=$(grep -E '^[^ ]+ submit ' "$STATUS" 2>/dev/null | sed -n 's/.* job=\([0-9]*\).*/\1/p' | sort -u)
  [ -n "$ids" ] || return 0
  queue=$(squeue -h -u "$(id -un)" -o '%F %Z' 2>/dev/null) || die "cannot read the Slurm queue (squeue failed); is Slurm reachable from here?"
  awk -v dir="$PWD" 'NR == FNR { want[$1] = 1; next }
    { id = $1; sub(/^[^ ]+ /, "") } ($0 == dir) && (id in want) && !seen[id]++ { print id }' \
    <(echo "$ids") <(echo "$queue")
}

refuse_when_queued() {
  local q
  q=$(queued_jobs | tr '\n' ' ' | sed 's/ $//')
  [ -z "$q" ] || DIE_CODE=2 die "run '$RUN' still has job(s) $q in the Slurm queue; wait for them (squeue -j ${q// /,}) or cancel them (scancel ${q// /}) first"
}

take_submit_lock() {
  mkdir -p "$LOGS_DIR"
  exec 9<>"$LOGS_DIR/slurm.lock"
  flock -n 9 || DIE_CODE=2 die "another run_slurm.sh is submitting run '$RUN'; try again when it is done"
  # A local launcher of the same run holds launcher.lock: its workers own the shards' locks.
  [ -e "$LOGS_DIR/launcher.lock" ] || return 0
  exec 8<"$LOGS_DIR/launcher.lock"
  if ! flock -n 8; then
    DIE_CODE=2 die "a local launcher ($(cat "$LOGS_DIR/launcher.lock" 2>/dev/null || echo 'pid unknown')) is running run '$RUN'; wait for it or stop it first"
  fi
  exec 8<&-
}

dry_run() {
  local i out offset
  for i in "${SHARDS[@]}"; do
    out=$("$WORKER" --config "$CONFIG" --shard-index "$i" --num-shards "$NUM_SHARDS" --dry-run 2>&1) ||
      DIE_CODE=2 die "${out#shard-worker: error: }"
    echo "$out"
  done
  echo "would submit (MaxArraySize $MAX_ARRAY; batch script $(rel "$BATCH")):"
  for offset in "${OFFSETS[@]}"; do
    sbatch_args "$offset"
    printf '%q ' "${SBATCH_ARGS[@]}" | sed 's/ $//'
    printf '   # shards %s\n' "${SHARDS_OF[$offset]}"
  done
}

submit() {
  local offset out job done_shards=''
  write_batch_script >"$BATCH.tmp"
  mv -f "$BATCH.tmp" "$BATCH"
  chmod +x "$BATCH"
  SUBMIT_TS=$(now)
  status "launch run=$RUN num_shards=$NUM_SHARDS shards=$(IFS=,; echo "${SHARDS[*]}") submitter_pid=$$ host=$(hostname -s) config=$(logval "$CONFIG") config_sum=$(config_sum) script=$(logval "$(script_path)") max_array_size=$MAX_ARRAY"
  JOB_IDS=()
  declare -gA JOB_OF=()
  for offset in "${OFFSETS[@]}"; do
    sbatch_args "$offset"
    if ! out=$("${SBATCH_ARGS[@]}" 2>&1); then
      printf '%s\n' "$out" >&2
      status "submit_failed offset=$offset array=${ARRAY_OF[$offset]} shards=${SHARDS_OF[$offset]}"
      die "sbatch refused shard(s) ${SHARDS_OF[$offset]}${done_shards:+ (submitted before: $done_shards; after they end, --only-failed submits the rest)}"
    fi
    # --parsable prints "<job id>[;<cluster>]"; warnings may come before it.
    job=$(grep -E '^[0-9]+(;|$)' <<<"$out" | tail -n 1 | cut -d';' -f1)
    [ -n "$job" ] || die "unexpected sbatch output: $out"
    JOB_IDS+=("$job")
    JOB_OF[$offset]=$job
    status "submit job=$job offset=$offset array=${ARRAY_OF[$offset]} shards=${SHARDS_OF[$offset]}"
    done_shards+=${done_shards:+,}${SHARDS_OF[$offset]}
  done
}

# "12 4 RUNNING" lines (array job, task, state) for this submission's tasks still in the queue.
queue_of_ours() {
  local q
  q=$(squeue -h -r -u "$(id -un)" -o '%F %K %T' 2>/dev/null) || return 1
  awk 'NR == FNR { want[$1] = 1; next } ($1 in want)' <(printf '%s\n' "${JOB_IDS[@]}") <(echo "$q")
}

# shellcheck disable=SC2317  # invoked by the INT/TERM traps
on_wait_signal() {
  local jobs
  jobs=$(IFS=' '; echo "${JOB_IDS[*]}")
  printf '\n' >&2
  say "$1: stopped waiting; the job(s) keep running (squeue -j ${jobs// /,}; stop them with: scancel $jobs)"
  [ "$1" = SIGTERM ] && exit 143
  exit 130
}

wait_for_jobs() {
  local q last='' line failing_since=''
  trap 'on_wait_signal SIGINT' INT
  trap 'on_wait_signal SIGTERM' TERM
  say "waiting for job(s) ${JOB_IDS[*]} (Ctrl-C stops waiting, not the jobs)"
  while true; do
    if q=$(queue_of_ours); then
      failing_since=''
      [ -n "$q" ] || break
      line=$(awk '{ n[tolower($3)]++ } END { for (s in n) printf "%s%d %s", (k++ ? ", " : ""), n[s], s }' <<<"$q")
      [ "$line" = "$last" ] || say "$(date +%H:%M:%S) $line"
      last=$line
    else
      failing_since=${failing_since:-$SECONDS}
      ((SECONDS - failing_since < 120)) || die "squeue has been failing for 2 minutes; the jobs may still be running"
    fi
    sleep "$POLL" &
    wait $! || true
  done
  trap - INT TERM
}


# The shard's last finish line written since this submission ('' if none).
finish_since_submit() {
  local log
  log=$(shard_log "$1")
  [ -f "$log" ] || return 0
  awk -v since="$SUBMIT_TS" '$2 == "finish" && $1 >= since { line = $0 } END { print line }' "$log"
}

# job_of_shard I: the Slurm id (A_T) of shard I's task.
job_of_shard() {
  local offset=$(($1 / MAX_ARRAY * MAX_ARRAY))
  echo "${JOB_OF[$offset]}_$(($1 - offset))"
}

# What Slurm says about a task (state and exit code), while it still remembers it.
slurm_state() {
  scontrol -o show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([^ ]*\).* ExitCode=\([^ ]*\).*/\1, exit \2/p' | head -n 1
}

# report_shard I: prints shard I's line and records its end; true when it succeeded.
report_shard() {
  local i=$1 line state task out sstate msg
  line=$(finish_since_submit "$i")
  state=$(field "$line" status)
  task=$(job_of_shard "$i")
  out=$(rel "$LOGS_DIR")/slurm-${task}.out
  SHARD_DONE=$(field "$line" "done" | grep -E '^[0-9]+$' || echo 0)
  SHARD_ROWS=$(field "$line" rows | grep -E '^[0-9]+$' || echo 0)
  if [ "$state" = ok ]; then
    printf '✓ shard %s/%s (job %s) ok: %s items, %s rows, %s s\n' "$i" "$NUM_SHARDS" "$task" \
      "$(thousands "$SHARD_DONE")" "$(thousands "$SHARD_ROWS")" "$(field "$line" elapsed_s)"
    status "end shard=$i num_shards=$NUM_SHARDS job=$task state=ok"
    return 0
  fi
  sstate=$(slurm_state "$task")
  # The worker's last stderr line (in Slurm's output) says why in full; the log holds failed
  # items' reasons and their generators' stderr.
  msg=$(worker_reason "$out")
  if [ "$state" = interrupted ]; then
    printf '✗ shard %s/%s (job %s) interrupted: exit %s, %s items committed (Slurm: %s; see %s)\n' "$i" "$NUM_SHARDS" "$task" \
      "$(field "$line" exit)" "$(thousands "$SHARD_DONE")" "${sstate:-gone}" "$(rel "$(shard_log "$i")")"
  elif [ -n "$state" ]; then
    printf '✗ shard %s/%s (job %s) %s: exit %s: %s (Slurm: %s; see %s, %s)\n' "$i" "$NUM_SHARDS" "$task" \
      "$state" "$(field "$line" exit)" "${msg:-$(field "$line" failed) items failed}" "${sstate:-gone}" \
      "$(rel "$(shard_log "$i")")" "$out"
  else
    # No finish line: the worker never started or was killed hard; its Slurm output says why.
    msg=$(grep -v '^shardrun: run ' "$out" 2>/dev/null | tail -n 1 | sed 's/^shard-worker: error: //' || true)
    [ -z "$(worker_reason "$out")" ] || msg=$(worker_reason "$out")
    printf '✗ shard %s/%s (job %s) did not finish (Slurm: %s)%s (see %s)\n' "$i" "$NUM_SHARDS" "$task" \
      "${sstate:-gone}" "${msg:+: $msg}" "$out"
    state=unfinished
  fi
  status "end shard=$i num_shards=$NUM_SHARDS job=$task state=$state"
  return 1
}

report() {
  local i ok=0 bad=0 items=0 rows=0
  for i in "${SHARDS[@]}"; do
    if report_shard "$i"; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    items=$((items + SHARD_DONE))
    rows=$((rows + SHARD_ROWS))
  done
  printf '%s shard(s): %s ok, %s not ok; %s items, %s rows\n' "${#SHARDS[@]}" "$ok" "$bad" "$(thousands "$items")" "$(thousands "$rows")"
  if ((bad > 0)); then
    echo "next: fix the cause (see the files named above), then re-submit only those shards: $(again)"
    end_run 1
  fi
  echo "next: $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")"
  end_run 0
}

print_next_steps() {
  local jobs
  jobs=$(IFS=,; echo "${JOB_IDS[*]}")
  echo "submitted run '$RUN': job(s) ${JOB_IDS[*]}, shard(s) $(ranges "${SHARDS[@]}") of $NUM_SHARDS; logs in $(rel "$LOGS_DIR")/"
  echo "watch:  $(rel "$BIN")/monitor $(quoted --config "$CONFIG") --follow"
  echo "        squeue -j $jobs"
  echo "then:   $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")   (when every shard is done; else: $(again))"
}

main() {
  parse_args "$@"
  ensure_binaries
  describe_run slurm.status
  BATCH=$LOGS_DIR/slurm_task.sh
  if ((DRY_RUN)); then
    choose_shards
    plan_submissions
    dry_run
    exit 0
  fi
  need_cmd sbatch
  need_cmd squeue
  take_submit_lock
  refuse_when_queued
  if ((ONLY_FAILED)); then
    preflight "$(field "$(last_launch)" num_shards)"
  else
    preflight "${NUM_SHARDS:-$CONFIG_SHARDS}"
  fi
  choose_shards
  if ((${#SHARDS[@]} == 0)); then
    echo "nothing to do: all $NUM_SHARDS shard(s) of run '$RUN' succeeded"
    exit 0
  fi
  ((ONLY_FAILED)) && say "re-submitting shard(s) $(ranges "${SHARDS[@]}") of $NUM_SHARDS"
  plan_submissions
  ((${#OFFSETS[@]} > 1)) && say "$NUM_SHARDS shards exceed MaxArraySize $MAX_ARRAY: ${#OFFSETS[@]} array submissions"
  submit
  exec 9>&-
  print_next_steps
  if ((WAIT)); then
    wait_for_jobs
    report
  fi
}

main "$@"
