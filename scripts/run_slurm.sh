#!/usr/bin/env bash
# run_slurm.sh: run every shard of a shardrun configuration as a Slurm job array.
#
# Usage: ./scripts/run_slurm.sh [--config FILE] [--num-shards N] [--only-failed] [--wait]
#                               [--merge] [--force | --redo-stale] [--dry-run] [--jobs J]
#                               [--shards-per-task K] [--throttle K]
#                               [--notify CMD [ARG...] ';' | --no-notify] [-- SBATCH_OPTION...]
#        ./scripts/run_slurm.sh [--config FILE] --status | --cancel | --wait
#
#   --version          print the version and exit
#   --config FILE      run configuration (default: conf/default.yaml)
#   --num-shards N     shard count (default: the config's `shards`; required without it)
#   --only-failed      submit exactly the shards whose last run failed, was interrupted or never
#                      finished (their logs say so), with the recorded shard count; the workers'
#                      preflight refuses a changed dataset identity (not a fixed script)
#   --wait             wait until the array ends; exit 0 only if every shard succeeded. Alone
#                      (no submission option) while the run's jobs are queued: wait for that
#                      submission instead of submitting (after a Ctrl-C of an earlier --wait)
#   --merge            also submit a merge job (name shardrun-<run>-merge) that starts once every
#                      task succeeded (--dependency=afterok) and writes the dataset; Slurm ends it
#                      when a task fails (with --notify and no --wait: afterany, see --notify).
#                      Its output: logs/<run>/slurm-merge-<job>.out
#   --status           the run's shards by state (ok, running, queued, requeued, failed,
#                      interrupted, cancelled, gone, never started) from its recorded jobs: the
#                      controller (scontrol), then one sacct call for the jobs it forgot (where
#                      accounting is on), and one read of the logs
#   --cancel           scancel every job of the run's submissions (split arrays and merge job)
#                      still queued, and wait until they have left the queue
#   --force            start the run over: workers discard their outputs, and outputs of another
#                      shard count are removed (cached items are reused)
#   --redo-stale       submit every shard, regenerating the items that an older revision of the
#                      generator made (a fixed script); the rest is kept
#   --dry-run          print the plan (per shard: items, first … last key) and the sbatch
#                      command(s); submit nothing
#   --jobs J           items in flight per shard: passed to the workers, and --cpus-per-task=J
#   --shards-per-task K  array task t runs shards t*K to t*K+K-1, one after another (default: the
#                      run's last submission's, else 1); --only-failed submits only the tasks that
#                      own failed shards and runs only those shards in them
#   --throttle K       at most K tasks of an array running at once (sbatch --array=...%K; the
#                      same as passing --array=%K after --)
#   --notify CMD [ARG...] ';'
#                      with --wait, when the array ends, run CMD (no shell) with the run's summary
#                      as JSON on stdin and SHARDRUN_* variables; the ';' word ends its words.
#                      Killed after SHARDRUN_NOTIFY_TIMEOUT seconds (default 60); never changes
#                      the exit code. With --merge and no --wait, the merge job sends the run's
#                      one notice: it then waits for the arrays with afterany, merges when every
#                      item is committed (else merge refuses, and the notice says failed), and
#                      runs CMD the same way (its script: logs/<run>/slurm_merge.sh).
#                      Remembered with the run, like the sbatch options: later submissions
#                      without --notify (--only-failed, --redo-stale, the printed hints) send the
#                      notice too when they --wait or --merge; a new --notify replaces it.
#                      --cancel of a run whose merge job was to send it, before that job started,
#                      sends it (exit code 143, state interrupted)
#   --no-notify        send no notice for this submission, and forget the remembered command
#   -- OPTIONS         passed to sbatch as they are (--time, --partition, --mem, --account, ...);
#                      remembered with the run: later submissions without -- reuse them, a new
#                      -- replaces them
#
# Jobs are named shardrun-<run> (squeue -n shardrun-<run>). Task i of the array runs shard i (`shard-worker --shard-index i --num-shards N --quiet`) and
# logs to logs/<run>/shard_<i>_of_<N>.log; Slurm's output goes to logs/<run>/slurm-%A_%a.out.
# Submissions are recorded in logs/<run>/slurm.status. Arrays longer than the cluster's
# MaxArraySize (SHARDRUN_MAX_ARRAY_SIZE overrides it) are split into several submissions; each
# task then runs shard <task id> + <offset of its submission>. See docs/SLURM.md.
# Environment: SHARDRUN_BIN (prebuilt binaries; default target/release, built when missing or
# stale), SHARDRUN_MAX_ARRAY_SIZE, SHARDRUN_SLURM_POLL (seconds between looks at the queue while
# waiting; default 10).
# Exit: 0 submitted (with --wait: every shard succeeded, and the merge job too with --merge;
# --status: shown; --cancel: nothing of the run is queued), 1 a submission failed (with --wait:
# some shard or the merge job did not succeed), 2 usage error or refusal (a failed preflight,
# `shard-worker --check`, submits nothing), 130/143 interrupted while waiting (the
# jobs keep running).
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG=conf/default.yaml
NUM_SHARDS=''
ONLY_FAILED=0
WAIT=0
STATUS_ONLY=0
CANCEL=0
MERGE=0
LAST_FORCE=0 # set by load_last_submission: the last submission was a --force
MERGED=0 # set by run_finished: the finished run was merged and its shard files deleted
MERGE_NOTIFIES=0
FORCE=0
REDO_STALE=0
DRY_RUN=0
JOBS=''
# Shards per array task (--shards-per-task); PER_TASK_ARG is the command line's.
PER_TASK=1
PER_TASK_ARG=''
THROTTLE=''
THROTTLE_ARG=''
SBATCH_OPTS=()
# 1 when this command has a `--`: its options replace those remembered from the run's last launch.
SBATCH_GIVEN=0
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
      *$'\n'*) usage_error "an sbatch option cannot hold a line break" ;;
      *) SBATCH_OPTS+=("$1") ;;
    esac
    shift
  done
}

# Refuses the sbatch options run_slurm.sh sets itself: the run's jobs are found by their name
# and work directory (--status, --cancel, the refusal of a second submission), and the merge job
# must be ended when a task fails. (Checked on the command line only: a record written before
# the check keeps working.)
refuse_own_opts() {
  local a
  for a in "$@"; do
    case "$a" in
      --job-name* | -J* | --chdir* | -D* | --kill-on-invalid-dep*)
        usage_error "$a: run_slurm.sh sets this sbatch option itself (the job name shardrun-<run>, this directory as the jobs' work directory, the merge job ended when a task fails)"
        ;;
    esac
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
      --status) STATUS_ONLY=1 ;;
      --cancel) CANCEL=1 ;;
      --merge) MERGE=1 ;;
      --force) FORCE=1 ;;
      --redo-stale) REDO_STALE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --jobs) [ $# -ge 2 ] || usage_error "--jobs needs a number"; JOBS=$2; shift ;;
      --shards-per-task) [ $# -ge 2 ] || usage_error "--shards-per-task needs a number"; PER_TASK_ARG=$2; shift ;;
      --throttle) [ $# -ge 2 ] || usage_error "--throttle needs a number"; THROTTLE_ARG=$2; shift ;;
      --notify) shift; take_notify "$@"; shift $((NOTIFY_WORDS - 1)) ;;
      --no-notify) NO_NOTIFY=1 ;;
      --) shift; SBATCH_GIVEN=1; refuse_own_opts "$@"; take_sbatch_opts "$@"; break ;;
      *) usage_error "unknown option: $1 (sbatch options go after --)" ;;
    esac
    shift
  done
  [ -z "$NUM_SHARDS" ] || is_count "$NUM_SHARDS" "$MAX_SHARDS" || usage_error "--num-shards must be a whole number from 1 to $MAX_SHARDS, not '$NUM_SHARDS'"
  [ -z "$PER_TASK_ARG" ] || is_count "$PER_TASK_ARG" "$MAX_SHARDS" || usage_error "--shards-per-task must be a whole number from 1 to $MAX_SHARDS, not '$PER_TASK_ARG'"
  [ -z "$JOBS" ] || is_count "$JOBS" "$MAX_JOBS" || usage_error "--jobs must be a whole number from 1 to $MAX_JOBS, not '$JOBS'"
  THROTTLE=${THROTTLE_ARG:-$THROTTLE}
  [ -z "$THROTTLE" ] || is_count "$THROTTLE" "$MAX_SHARDS" || usage_error "the throttle must be a whole number from 1 to $MAX_SHARDS, not '$THROTTLE'"
  is_seconds "$POLL" "$MAX_SECONDS" || usage_error "SHARDRUN_SLURM_POLL must be a number of seconds from 0 to $MAX_SECONDS, not '$POLL'"
  [ -f "$CONFIG" ] || usage_error "no configuration file at $CONFIG"
  check_notify_timeout
  check_notify_options
  if ((STATUS_ONLY || CANCEL)) && ((${#NOTIFY[@]} > 0 || NO_NOTIFY)); then
    usage_error "--status and --cancel act on the run's recorded jobs and take only --config"
  fi
  if ((${#NOTIFY[@]} > 0 && !WAIT && !MERGE)); then usage_error "--notify runs when the run ends, which only --wait or the merge job sees: add --wait or --merge (or watch with: monitor --follow --notify CMD ... ';')"; fi
  if ((ONLY_FAILED && FORCE)); then usage_error "--only-failed and --force contradict each other"; fi
  if ((REDO_STALE && FORCE)); then usage_error "--redo-stale and --force contradict each other (--force regenerates everything)"; fi
  if ((STATUS_ONLY + CANCEL > 1)); then usage_error "--status and --cancel are two commands: give one"; fi
  if ((STATUS_ONLY || CANCEL)); then
    local what=--status
    ((CANCEL)) && what=--cancel
    if ((ONLY_FAILED || FORCE || REDO_STALE || DRY_RUN || WAIT || MERGE || SBATCH_GIVEN)) || [ -n "$NUM_SHARDS$JOBS$THROTTLE$PER_TASK_ARG" ]; then
      usage_error "$what acts on the run's recorded jobs and takes only --config"
    fi
  fi
  if ((REDO_STALE && ONLY_FAILED)); then usage_error "--redo-stale runs every shard (stale items can be in any); drop --only-failed"; fi
}

# The run's last launch, by either launcher (this one or run_parallel.sh): the later line wins.
last_launch() {
  local mine local_
  mine=$(last_line "$STATUS" launch)
  local_=$(last_line "$LOGS_DIR/launcher.status" launch)
  if [ -n "$local_" ] && [[ "$local_" > "$mine" ]]; then echo "$local_"; else echo "$mine"; fi
}

# The sbatch options as recorded with a launch (`sbatch=` on its line): the words after `--`, and
# the throttle as --array=%K, quoted as a shell would need them typed.
sbatch_record() {
  local words=("${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}")
  [ -n "$THROTTLE" ] && words+=("--array=%$THROTTLE")
  ((${#words[@]} > 0)) || return 0
  record_words "${words[@]}"
}

# The shards per task: the command line's, else the run's last Slurm launch's, else 1.
choose_per_task() {
  local k
  k=$(field "$(last_line "$STATUS" launch)" shards_per_task)
  [[ "$k" =~ ^[1-9][0-9]{0,5}$ ]] || k=1
  PER_TASK=${PER_TASK_ARG:-$k}
}

# Without a `--` on this command, the sbatch options of the run's last Slurm launch apply again
# (a pasted --only-failed lands in the same partition, with the same limits); a `--throttle`
# given now still wins. REMEMBERED_FROM is the time of that launch ('' when none applies).
use_remembered_sbatch_opts() {
  local line v throttle=$THROTTLE_ARG
  REMEMBERED_FROM=''
  ((SBATCH_GIVEN)) && return 0
  line=$(last_line "$STATUS" launch)
  v=$(logval_field "$line" sbatch) || return 0
  [ -n "$v" ] || return 0
  parse_words "$v" ||
    DIE_CODE=2 die "the sbatch options recorded in $(rel "$STATUS") are damaged ($v); give them again after --"
  ((${#WORDS[@]} > 0)) || return 0
  take_sbatch_opts "${WORDS[@]}"
  THROTTLE=${throttle:-$THROTTLE}
  REMEMBERED_FROM=${line%% *}
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
  read_finishes ''
  SHARDS=()
  for ((i = 0; i < NUM_SHARDS; i++)); do
    if ((ONLY_FAILED)) && [ "${FSTATUS[$i]:-}" = ok ]; then
      continue
    fi
    SHARDS+=("$i")
  done
  # The plain command after a finished run would queue N tasks that each find nothing to do.
  if ((!ONLY_FAILED && !FORCE && !REDO_STALE)) && run_finished; then
    SHARDS=()
  fi
}

# read_finishes SINCE: FINISH[i] = the last `finish` line at or after time SINCE ('' for any) of
# shard i's log in the NUM_SHARDS plan, and FSTATUS[i] its status, for every shard with one. One
# awk over all the logs: a plan of 10,000 shards costs one process, not three per shard.
# shellcheck disable=SC2016  # an awk program
read_finishes() {
  local i st line
  declare -gA FINISH=() FSTATUS=()
  while IFS=' ' read -r i st line; do
    [ -n "$line" ] || continue
    FINISH[$i]=$line
    FSTATUS[$i]=$st
  done < <(find "$LOGS_DIR" -maxdepth 1 -name "shard_*_of_${NUM_SHARDS}.log" -print0 2>/dev/null |
    xargs -0 -r awk -v since="$1" '
      function out() { n = f; sub(/.*\/shard_/, "", n); sub(/_of_.*/, "", n); print n " " st " " line }
      FNR == 1 { if (f != "") out(); f = FILENAME; line = ""; st = "" }
      $2 == "finish" && $1 >= since { line = $0; st = "-"; if (match($0, / status=[^ ]*/)) st = substr($0, RSTART + 8, RLENGTH - 8) }
      END { if (f != "") out() }')
}

# True when every shard of the NUM_SHARDS plan last ended ok and its output is still there.
run_finished() {
  local i stats="$DATA_DIR/stats.json" merged=0
  MERGED=0
  # A merge without --keep-shards deletes the shard files: the run is finished when the merge
  # of this plan came after every shard's last finish.
  [ -f "$stats" ] && grep -qx "  \"shards\": $NUM_SHARDS," "$stats" && merged=1
  for ((i = 0; i < NUM_SHARDS; i++)); do
    [ "${FSTATUS[$i]:-}" = ok ] || return 1
    [ -f "$DATA_DIR/manifest_shard${i}_of_${NUM_SHARDS}.jsonl" ] && continue
    ((merged)) && [ "$stats" -nt "$(shard_log "$i")" ] || return 1
    MERGED=1
  done
}

# The command that re-submits what did not succeed, with the options that name this run.
# An interrupted --redo-stale is finished by --redo-stale (the items still stale), not by
# --only-failed, which would leave them as they are.
again() {
  local action=--only-failed
  ((REDO_STALE)) && action=--redo-stale
  ((MERGE)) && action+=' --merge'
  # The notice of a run that was waited for is sent by the waiter: the re-submission waits too
  # (with --merge, the merge job sends it).
  ((WAIT && !MERGE && ${#NOTIFY[@]} > 0)) && action+=' --wait'
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

# ranges 0 1 2 5 7 8: the compact array syntax, "0-2,5,7-8" (no process per range: a sparse set
# of thousands of shards is one line in a blink).
ranges() {
  local out='' start='' prev='' i
  for i in "$@" ''; do
    if [ -n "$i" ] && [ -n "$prev" ] && ((i == prev + 1)); then
      prev=$i
      continue
    fi
    if [ -n "$start" ]; then
      out+=${out:+,}$start
      ((start == prev)) || out+=-$prev
    fi
    start=$i
    prev=$i
  done
  echo "$out"
}

# expand_ranges "0-2,5": 0 1 2 5, one a line (a throttle, %K, is ignored).
expand_ranges() {
  tr , '\n' <<<"${1%%\%*}" | awk -F- 'NF == 1 && $1 != "" { print $1; next } NF == 2 { for (i = $1; i <= $2; i++) print i }'
}

# Splits SHARDS into submissions of task ids below MaxArraySize: shard i goes to the
# submission with offset (i / M) * M as task i - offset. OFFSETS lists the offsets; ARRAY_OF
# and SHARDS_OF give each one's array spec and shard list.
# With --shards-per-task K, the unit is the task: task t owns shards t*K to t*K+K-1, and the
# task ids (not the shard indices) are split at MaxArraySize.
plan_submissions() {
  local m i t offset prev=-1 tasks=() shards=() last_t=-1
  m=$(max_array_size)
  MAX_ARRAY=$m
  OFFSETS=()
  declare -gA ARRAY_OF=() SHARDS_OF=()
  for i in "${SHARDS[@]}" ''; do
    offset=''
    t=''
    if [ -n "$i" ]; then
      t=$((i / PER_TASK))
      offset=$((t / m * m))
    fi
    if [ "$offset" != "$prev" ] && ((${#tasks[@]} > 0)); then
      OFFSETS+=("$prev")
      ARRAY_OF[$prev]=$(ranges "${tasks[@]}")${THROTTLE:+%$THROTTLE}
      SHARDS_OF[$prev]=$(ranges "${shards[@]}")
      tasks=()
      shards=()
    fi
    [ -n "$i" ] || break
    prev=$offset
    ((t == last_t)) || tasks+=($((t - offset)))
    last_t=$t
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
  local what="shard \$index of $NUM_SHARDS" runs="shard T + O of $NUM_SHARDS"
  if ((PER_TASK > 1)); then
    what="task \$index (shards \$((index * $PER_TASK))-\$((index * $PER_TASK + $((PER_TASK - 1)))) of $NUM_SHARDS)"
    runs="those of shards (T + O) * $PER_TASK to (T + O) * $PER_TASK + $((PER_TASK - 1)) of $NUM_SHARDS in the list (second argument)"
  fi
  cat <<EOF
#!/bin/bash
# Slurm batch script of shardrun run $q_run, written by scripts/run_slurm.sh.
# Task T of an array submitted with offset O (the first argument) runs $runs.
set -eu
index=\$((SLURM_ARRAY_TASK_ID + \${1:-0}))
shard_list=\${2:-}
echo "shardrun: run $q_run, $what, job \${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID} on \$(hostname), restart \${SLURM_RESTART_COUNT:-0}"
set --
EOF
  if ((FORCE)); then
    cat <<'EOF'
# --force applies to the first start only: a requeued task (SLURM_RESTART_COUNT > 0) resumes.
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then set -- --force; fi
EOF
  fi
  if ((PER_TASK == 1)); then
    cat <<EOF
cd $q_root
exec $q_bin --config $q_config --root $q_root --shard-index "\$index" --num-shards $NUM_SHARDS --quiet$extra "\$@"
EOF
    return
  fi
  # K shards per task, one after another: only those of the submission's list (the second
  # argument, ranges such as 3-7,19), so a re-submission runs only the shards that failed. The
  # shell stays (no exec): it passes a SIGTERM meant for the batch step (--signal=B:TERM@...) on
  # to the running worker, starts no further shard, and exits 143.
  cat <<EOF
cd $q_root
task=\$index
first=\$((task * $PER_TASK))
stop=0
pid=''
trap 'stop=1; [ -z "\$pid" ] || kill -TERM "\$pid" 2>/dev/null || true' TERM INT
in_list() {
  for r in \$(echo "\$shard_list" | tr , ' '); do
    lo=\${r%-*}
    hi=\${r#*-}
    [ "\$1" -ge "\$lo" ] && [ "\$1" -le "\$hi" ] && return 0
  done
  return 1
}
rc=0
i=\$first
while [ "\$i" -lt \$((first + $PER_TASK)) ] && [ "\$i" -lt $NUM_SHARDS ]; do
  [ "\$stop" = 0 ] || break
  if in_list "\$i"; then
    echo "shardrun: shard \$i of $NUM_SHARDS"
    set +e
    $q_bin --config $q_config --root $q_root --shard-index "\$i" --num-shards $NUM_SHARDS --quiet$extra "\$@" &
    pid=\$!
    while :; do
      wait "\$pid"
      r=\$?
      kill -0 "\$pid" 2>/dev/null || break
    done
    pid=''
    set -e
    [ "\$r" = 0 ] || rc=\$r
  fi
  i=\$((i + 1))
done
[ "\$stop" = 0 ] || exit 143
exit "\$rc"
EOF
}

# sbatch_args OFFSET: the sbatch command line of one submission (in SBATCH_ARGS).
sbatch_args() {
  local offset=$1
  SBATCH_ARGS=(sbatch --parsable --job-name="shardrun-$RUN" --array="${ARRAY_OF[$offset]}"
    --output="$(rel "$LOGS_DIR")/slurm-%A_%a.out" --open-mode=append --requeue --chdir="$PWD")
  [ -n "$JOBS" ] && SBATCH_ARGS+=(--cpus-per-task="$JOBS")
  SBATCH_ARGS+=("${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}" "$(rel "$BATCH")" "$offset")
  ((PER_TASK == 1)) || SBATCH_ARGS+=("${SHARDS_OF[$offset]}")
}

# Array job ids of this run (from the status file) that are still in the queue. A job counts
# as this run's only if its working directory is this one too, so ids that a reset cluster
# hands out again are not mistaken for ours.
queued_jobs() {
  local ids queue
  ids=$(grep -E '^[^ ]+ submit ' "$STATUS" 2>/dev/null | sed -n 's/.* job=\([0-9]*\).*/\1/p' | sort -un)
  [ -n "$ids" ] || return 0
  queue=$(squeue -h -u "$(id -un)" -o '%F %Z' 2>/dev/null) || die "cannot read the Slurm queue (squeue failed); is Slurm reachable from here?"
  awk -v dir="$PWD" 'NR == FNR { want[$1] = 1; next }
    { id = $1; sub(/^[^ ]+ /, "") } ($0 == dir) && (id in want) && !seen[id]++ { print id }' \
    <(echo "$ids") <(echo "$queue")
}

refuse_when_queued() {
  local q
  q=$(queued_jobs | tr '\n' ' ' | sed 's/ $//')
  [ -z "$q" ] || DIE_CODE=2 die "run '$RUN' still has job(s) $q in the Slurm queue; wait for them (squeue -j ${q// /,}) or cancel them ($(me) $(quoted --config "$CONFIG") --cancel) first"
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

# One line naming the sbatch options in use and where they come from.
describe_sbatch_opts() {
  local opts
  opts=$(sbatch_record)
  if [ -n "$REMEMBERED_FROM" ]; then
    echo "options for sbatch (remembered from the launch of $REMEMBERED_FROM; a new -- replaces them): $opts"
  elif [ -n "$opts" ]; then
    echo "options for sbatch (recorded with the run; later submissions reuse them): $opts"
  fi
}

dry_run() {
  local i out offset n=${#SHARDS[@]} k=0
  for i in "${SHARDS[@]}"; do
    k=$((k + 1))
    # Thousands of shards: the first and last ten tell the plan (one worker process each).
    if ((n > 20 && k > 10 && k <= n - 10)); then
      ((k == 11)) && echo "… $(thousands $((n - 20))) more shards …"
      continue
    fi
    out=$("$WORKER" --config "$CONFIG" --shard-index "$i" --num-shards "$NUM_SHARDS" --dry-run 2>&1) ||
      DIE_CODE=2 die "${out#shard-worker: error: }"
    echo "$out"
  done
  describe_sbatch_opts
  describe_notify
  ((${#NOTIFY[@]} == 0 || WAIT || MERGE)) || echo "(no notice for this submission: the --notify command runs when the run's end is seen, with --wait or --merge)"
  echo "would submit (MaxArraySize $MAX_ARRAY; batch script $(rel "$BATCH")):"
  for offset in "${OFFSETS[@]}"; do
    sbatch_args "$offset"
    printf '%s   # shards %s\n' "$(quoted "${SBATCH_ARGS[@]}")" "${SHARDS_OF[$offset]}"
  done
  if ((MERGE)); then
    merge_sbatch_args '<job ids above>'
    printf '%s   # merge, once every array succeeded\n' "$(quoted "${SBATCH_ARGS[@]}")"
  fi
}

submit() {
  local offset out job done_shards=''
  write_batch_script >"$BATCH.tmp"
  mv -f "$BATCH.tmp" "$BATCH"
  chmod +x "$BATCH"
  SUBMIT_TS=$(now)
  local mode=plain
  ((ONLY_FAILED)) && mode=only-failed
  ((FORCE)) && mode=force
  ((REDO_STALE)) && mode=redo-stale
  status "launch run=$RUN num_shards=$NUM_SHARDS shards=$(ranges "${SHARDS[@]}") mode=$mode jobs=$JOBS merge=$MERGE shards_per_task=$PER_TASK submitter_pid=$$ host=$(hostname -s) config=$(logval "$CONFIG") config_sum=$(config_sum) script=$(logval "$(script_path)") max_array_size=$MAX_ARRAY sbatch=$(logval "$(sbatch_record)") $(notify_field)"
  JOB_IDS=()
  MERGE_JOB=''
  declare -gA JOB_OF=()
  for offset in "${OFFSETS[@]}"; do
    sbatch_args "$offset"
    if ! out=$("${SBATCH_ARGS[@]}" 2>&1); then
      printf '%s\n' "$out" >&2
      status "submit_failed offset=$offset array=${ARRAY_OF[$offset]} shards=${SHARDS_OF[$offset]}"
      # The options are remembered with the run: a hint without a new -- would repeat them.
      [ -z "$(sbatch_record)" ] || say "$(describe_sbatch_opts); if sbatch refused one of them, submit again with the corrected options after a new --"
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
  ((MERGE)) && submit_merge
  return 0
}

# The merge job's sbatch command line (in SBATCH_ARGS), after the arrays DEPS (colon-separated).
# afterok: it starts only once every task of every array succeeded; a task that fails makes the
# dependency impossible, and --kill-on-invalid-dep ends the merge job then instead of leaving it
# pending forever. The user's options (partition, account, time, memory) apply to it too.
# With --notify and no --wait, the merge job also sends the run's one notice (job_notifies): it
# then depends on the arrays with afterany, so that it runs whatever they did (with afterok, a
# failed task would get it cancelled, and no notice sent), and runs the batch script
# MERGE_SCRIPT; merge itself refuses a run with uncommitted items (a failed shard), and the
# notice tells that end.
merge_sbatch_args() {
  local q_merge q_config q_root dep=afterok body
  q_merge=$(printf '%q' "$MERGE_BIN")
  # As the user named it: the job runs in this directory (--chdir), and merge's hints repeat it.
  q_config=$(printf '%q' "$CONFIG")
  q_root=$(printf '%q' "$PWD")
  body=(--wrap="exec $q_merge --config $q_config --root $q_root")
  if job_notifies; then
    dep=afterany
    body=("$MERGE_SCRIPT")
  fi
  SBATCH_ARGS=(sbatch --parsable --job-name="shardrun-$RUN-merge" --dependency="$dep:$1"
    --kill-on-invalid-dep=yes --output="$(rel "$LOGS_DIR")/slurm-merge-%j.out" --open-mode=append
    --chdir="$PWD" "${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}" "${body[@]}")
  # The user's --output names the tasks' files and their --dependency the arrays': the merge
  # job keeps its own.
  strip_output_opts
}

# notice_sender: who sends the --notify notice of the last submission (for --status).
notice_sender() {
  if ((MERGE_NOTIFIES)) && [ -n "$MERGE_JOB" ]; then
    echo " (merge job $MERGE_JOB sends it when the run ends)"
  else
    echo " (sent when the run ends by a --wait on it)"
  fi
}

# True when the merge job sends the --notify notice: nobody waits here to send it.
job_notifies() {
  ((MERGE && !WAIT && ${#NOTIFY[@]} > 0))
}

# The merge job's batch script when it notifies: merge, then the --notify command through monitor
# as the launchers run it (the summary on stdin, SHARDRUN_* variables, killed after the timeout),
# with merge's exit code, which stays the job's. Every word is quoted with printf %q: the
# command's words reach it as given, never evaluated by a shell.
write_merge_script() {
  local q_merge q_monitor q_config q_root q_run
  q_merge=$(printf '%q' "$MERGE_BIN")
  q_monitor=$(printf '%q' "$BIN/monitor")
  # As the user named it: the job runs in this directory (--chdir), and merge's hints repeat it.
  q_config=$(printf '%q' "$CONFIG")
  q_root=$(printf '%q' "$PWD")
  q_run=$(printf '%q' "$RUN")
  # Stopped by Slurm (scancel, its time limit), the job has KillWait seconds (30 by default)
  # before SIGKILL: the notice then gets at most 20 of them.
  local stop_timeout=20
  is_seconds "$NOTIFY_TIMEOUT" 20 && stop_timeout=$NOTIFY_TIMEOUT
  cat <<EOF
#!/bin/bash
# Slurm merge job of shardrun run $q_run, written by scripts/run_slurm.sh: merges the run (merge
# refuses it when a shard did not commit every item), then sends the --notify notice, also when
# Slurm stops the job (scancel, time limit: SIGTERM, exit code 143).
code=0
timeout=$(printf '%q' "$NOTIFY_TIMEOUT")
trap 'code=143; timeout=$(printf '%q' "$stop_timeout")' TERM
rc=0
$q_merge --config $q_config --root $q_root || rc=\$?
[ "\$code" = 143 ] || code=\$rc
$q_monitor --root $q_root --run $q_run --num-shards $NUM_SHARDS --notify-exit-code "\$code" \\
  --notify-timeout "\$timeout" --notify $(quoted_words "${NOTIFY[@]}") ';' </dev/null ||
  echo "merge job: warning: the --notify command could not be run (monitor exited \$?); the job's exit code is merge's" >&2
exit "\$code"
EOF
}

# quoted_words WORD...: each word quoted with printf %q, separated by spaces.
quoted_words() {
  local w out=()
  for w in "$@"; do out+=("$(printf '%q' "$w")"); done
  echo "${out[*]}"
}

submit_merge() {
  local out deps
  deps=$(IFS=:; echo "${JOB_IDS[*]}")
  if job_notifies; then
    write_merge_script >"$MERGE_SCRIPT.tmp"
    mv -f "$MERGE_SCRIPT.tmp" "$MERGE_SCRIPT"
    chmod +x "$MERGE_SCRIPT"
  fi
  merge_sbatch_args "$deps"
  if ! out=$("${SBATCH_ARGS[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    status "submit_failed merge=1 after=$deps"
    die "sbatch refused the merge job (the arrays ${JOB_IDS[*]} are submitted; merge by hand when they end: $(rel "$MERGE_BIN") $(quoted --config "$CONFIG"))"
  fi
  MERGE_JOB=$(grep -E '^[0-9]+(;|$)' <<<"$out" | tail -n 1 | cut -d';' -f1)
  [ -n "$MERGE_JOB" ] || die "unexpected sbatch output: $out"
  MERGE_NOTIFIES=0
  job_notifies && MERGE_NOTIFIES=1
  status "submit job=$MERGE_JOB merge=1 after=$deps notify=$MERGE_NOTIFIES"
}

# Drops --output/-o, --dependency/-d and --chdir/-D from SBATCH_ARGS, except the first of each
# (ours).
strip_output_opts() {
  local a kept=() skip=0 seen=0 dep=0 cd=0
  for a in "${SBATCH_ARGS[@]}"; do
    if ((skip)); then skip=0; continue; fi
    case "$a" in
      --output=*) ((seen++ == 0)) && kept+=("$a") ;;
      -o | --output) skip=1 ;;
      -o*) ;;
      # The user's --dependency holds the arrays back, and so the merge job after them; on
      # the merge job it would replace the dependency on the arrays (sbatch keeps the last).
      --dependency=*) ((dep++ == 0)) && kept+=("$a") ;;
      -d | --dependency) skip=1 ;;
      -d*) ;;
      # The merge job names the configuration relative to this directory: it runs here.
      --chdir=*) ((cd++ == 0)) && kept+=("$a") ;;
      -D | --chdir) skip=1 ;;
      -D*) ;;
      *) kept+=("$a") ;;
    esac
  done
  SBATCH_ARGS=("${kept[@]}")
}

# "12 4 RUNNING" lines (array job, task, state) for this submission's tasks still in the queue.
queue_of_ours() {
  local q
  q=$(squeue -h -r -u "$(id -un)" -o '%F %K %T' 2>/dev/null) || return 1
  awk 'NR == FNR { want[$1] = 1; next } ($1 in want)' <(printf '%s\n' "${JOB_IDS[@]}" "$MERGE_JOB") <(echo "$q")
}

# shellcheck disable=SC2317  # invoked by the INT/TERM traps
on_wait_signal() {
  printf '\n' >&2
  say "$1: stopped waiting; the job(s) keep running (wait again: $(me) $(quoted --config "$CONFIG") --wait; see them: --status; stop them: --cancel)"
  [ "$1" = SIGTERM ] && exit 143
  exit 130
}

wait_for_jobs() {
  local q last='' line failing_since=''
  trap 'on_wait_signal SIGINT' INT
  trap 'on_wait_signal SIGTERM' TERM
  say "waiting for job(s) ${JOB_IDS[*]}${MERGE_JOB:+ and merge job $MERGE_JOB} (Ctrl-C stops waiting, not the jobs)"
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



# job_of_shard I: the Slurm id (A_T) of shard I's task.
job_of_shard() {
  local t=$(($1 / PER_TASK))
  local offset=$((t / MAX_ARRAY * MAX_ARRAY))
  echo "${JOB_OF[$offset]}_$((t - offset))"
}

# What Slurm says about task A_T (state and exit code), from task_states ('' when it is gone).
slurm_state() {
  local st ex
  read -r st ex _ <<<"${SSTATE[$1]:-}"
  [ -n "$st" ] || return 0
  printf '%s, exit %s' "$st" "$ex"
}

# report_shard I: prints shard I's line and records its end; true when it succeeded.
report_shard() {
  local i=$1 line state task out sstate msg
  line=${FINISH[$i]:-}
  state=${FSTATUS[$i]:-}
  task=$(job_of_shard "$i")
  out=$(output_file "$task")
  SHARD_DONE=$(field "$line" "done" | grep -E '^[0-9]+$' || echo 0)
  SHARD_ROWS=$(field "$line" rows | grep -E '^[0-9]+$' || echo 0)
  if [ "$state" = ok ]; then
    printf '✓ shard %s/%s (job %s) ok: %s, %s, %s s\n' "$i" "$NUM_SHARDS" "$task" \
      "$(plural "$SHARD_DONE" item)" "$(plural "$SHARD_ROWS" row)" "$(field "$line" elapsed_s)"
    status "end shard=$i num_shards=$NUM_SHARDS job=$task state=ok"
    return 0
  fi
  sstate=$(slurm_state "$task")
  [ -n "$sstate" ] || sstate=$GONE
  # The worker's last stderr line (in Slurm's output) says why in full; the log holds failed
  # items' reasons and their generators' stderr.
  msg=$(worker_reason "$out")
  if [ "$state" = interrupted ]; then
    printf '✗ shard %s/%s (job %s) interrupted: exit %s, %s committed (Slurm: %s; see %s)\n' "$i" "$NUM_SHARDS" "$task" \
      "$(field "$line" exit)" "$(plural "$SHARD_DONE" item)" "$sstate" "$(rel "$(shard_log "$i")")"
  elif [ -n "$state" ]; then
    printf '✗ shard %s/%s (job %s) %s: exit %s: %s (Slurm: %s; see %s, %s)\n' "$i" "$NUM_SHARDS" "$task" \
      "$state" "$(field "$line" exit)" "${msg:-$(field "$line" failed) items failed}" "$sstate" \
      "$(rel "$(shard_log "$i")")" "$(shown_output "$out")"
  else
    # No finish line: the worker never started or was killed hard; its Slurm output says why.
    msg=$(grep -v '^shardrun: run ' "$out" 2>/dev/null | tail -n 1 | sed 's/^shard-worker: error: //' || true)
    [ -z "$(worker_reason "$out")" ] || msg=$(worker_reason "$out")
    printf '✗ shard %s/%s (job %s) did not finish (Slurm: %s)%s (%s)\n' "$i" "$NUM_SHARDS" "$task" \
      "$sstate" "${msg:+: $msg}" "$(shown_output "$out" see)"
    state=unfinished
  fi
  status "end shard=$i num_shards=$NUM_SHARDS job=$task state=$state"
  return 1
}

report() {
  local i ok=0 bad=0 items=0 rows=0
  read_finishes "$SUBMIT_TS"
  task_states
  for i in "${SHARDS[@]}"; do
    if report_shard "$i"; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    items=$((items + SHARD_DONE))
    rows=$((rows + SHARD_ROWS))
  done
  printf '%s: %s ok, %s not ok; %s, %s\n' "$(plural "${#SHARDS[@]}" shard)" "$ok" "$bad" "$(plural "$items" item)" "$(plural "$rows" row)"
  if ((bad > 0)); then
    if [ -n "$MERGE_JOB" ] && ((MERGE_NOTIFIES)); then
      echo "merge job $MERGE_JOB ran after every task ended: merge refuses an incomplete run, and the job sent the --notify notice"
    elif [ -n "$MERGE_JOB" ]; then
      echo "merge job $MERGE_JOB did not run (it waits for every shard to succeed; Slurm ends it when one did not)"
    fi
    echo "next: fix the cause (see the files named above), then re-submit only those shards: $(again)"
    end_run 1
  fi
  if [ -n "$MERGE_JOB" ]; then
    local merged=0
    report_merge || merged=$?
    end_run "$merged"
  fi
  echo "next: $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")"
  end_run 0
}

# The merge job's line, like a shard's: its state, exit and output file; true when it succeeded.
report_merge() {
  local st ex out msg
  read -r st ex _ <<<"${SSTATE[$MERGE_JOB]:-}"
  out=$(output_file "$MERGE_JOB")
  if [ "$st" = COMPLETED ] && [ "$ex" = 0:0 ]; then
    printf '✓ merge (job %s) ok: %s (%s)\n' "$MERGE_JOB" "$(rel "$DATA_DIR")/" "$(shown_output "$out" output)"
    status "end merge=1 job=$MERGE_JOB state=ok"
    return 0
  fi
  msg=$(worker_reason "$out")
  msg=${msg#merge: }
  msg=${msg#error: }
  printf '✗ merge (job %s) %s%s (%s)\n' "$MERGE_JOB" "${st:+Slurm: $st, exit $ex}${st:-$GONE}" "${msg:+: $msg}" "$(shown_output "$out" see)"
  status "end merge=1 job=$MERGE_JOB state=${st:-gone}"
  echo "next: fix the cause, then merge: $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")"
  return 1
}

# ---- what Slurm says about the run's jobs --------------------------------------------------

# task_states: SSTATE[A_T] (and SSTATE[J] for the merge job) = "STATE EXIT RESTARTS", and
# SOUT[...] = the output file Slurm names, for the run's recorded jobs still known to Slurm.
# The controller first (`scontrol`, one call per array): its states are current, where
# accounting lags it by a second or two (a task that just ended still reads RUNNING, a task just
# started reads nothing), but it forgets a job MinJobAge seconds after its end. Then, where
# accounting is on, one `sacct` call for the jobs the controller forgot. (sacct's fields are
# those of every Slurm version in use: 22.05 has no Restarts.) Job ids come back (they wrap at
# MaxJobId, and a controller whose state was reset starts again at FirstJobId), and `sacct
# --jobs` then also lists the older jobs of that id (an earlier array's tasks, before the run's):
# so only jobs still active since a minute before the submission (clocks differ a little) are
# asked for, and of two records of one task the later submitted is kept. GONE says what a
# missing task means; STATE_SOURCE names the source(s) used, or why sacct could not be.
task_states() {
  local ids out since err
  declare -gA SSTATE=() SOUT=()
  ids=$(IFS=,; echo "${JOB_IDS[*]}${MERGE_JOB:+,$MERGE_JOB}")
  STATE_SOURCE=scontrol
  GONE="gone: Slurm forgets a job $(min_job_age) s after it ends, and this cluster keeps no accounting (sacct)"
  [ -n "$ids" ] || return 0
  out=$(scontrol_jobs "${JOB_IDS[@]}" "$MERGE_JOB" | awk -v want="$ids" '
    function val(k,   m) { if (match($0, " " k "=[^ ]*")) return substr($0, RSTART + length(k) + 2, RLENGTH - length(k) - 2); return "" }
    BEGIN { n = split(want, w, ","); for (i = 1; i <= n; i++) ok[w[i]] = 1 }
    { $0 = " " $0; job = val("ArrayJobId"); task = val("ArrayTaskId")
      if (job == "") { job = val("JobId"); task = "-" }
      if (!(job in ok)) next
      print job, task, val("JobState"), val("ExitCode"), val("Restarts"), val("StdOut") }')
  local from_ctl
  add_states "$out"
  from_ctl=$ADDED
  have_cmd sacct || return 0
  # sacct's --starttime is in local time.
  since=$(date -d "$SUBMIT_TS" +%s 2>/dev/null) && since=$(date -d "@$((since - 60))" +%Y-%m-%dT%H:%M:%S) || since=''
  if ! out=$(sacct -n -P -X -j "$ids" ${since:+-S "$since"} -o JobID,State,ExitCode,Submit 2>/dev/null); then
    # Once more for its words: accounting off is said above; anything else (slurmdbd down) is
    # said as sacct says it.
    err=$(sacct -n -P -X -j "$ids" ${since:+-S "$since"} -o JobID,State,ExitCode,Submit 2>&1 >/dev/null | tail -n 1 || true)
    if [ -n "$err" ] && [[ "$err" != *"accounting storage is disabled"* ]]; then
      STATE_SOURCE="scontrol (sacct failed: $err)"
      GONE="gone: Slurm forgets a job $(min_job_age) s after it ends, and sacct failed: $err"
    fi
    return 0
  fi
  GONE="unknown to Slurm's accounting (sacct)"
  out=$(awk -F'|' '{ id = $1; st = $2; sub(/ .*/, "", st); job = id; task = "-"
      if (id ~ /_/) { sub(/_.*/, "", job); task = id; sub(/^[^_]*_/, "", task); gsub(/[][]/, "", task) }
      if (id in submit && submit[id] > $4) next
      if (!(id in line)) order[++n] = id
      submit[id] = $4; line[id] = job " " task " " st " " $3 " 0 -" }
    END { for (i = 1; i <= n; i++) print line[order[i]] }' <<<"$out")
  add_states "$out" keep
  if ((ADDED > 0)); then
    if ((from_ctl > 0)); then STATE_SOURCE="scontrol and sacct"; else STATE_SOURCE=sacct; fi
  fi
}

# add_states LINES [keep]: sets SSTATE and SOUT from "JOB TASK STATE EXIT RESTARTS STDOUT" lines
# (TASK '-' for a job that is no array, or a range of pending tasks); with keep, a task already
# known keeps its state. ADDED = how many tasks it set.
add_states() {
  local job task st ex rs so t n=0
  while read -r job task st ex rs so; do
    [ -n "$job" ] || continue
    if [ "$task" = - ]; then
      [ -n "${2:-}" ] && [ -n "${SSTATE[$job]:-}" ] && continue
      SSTATE[$job]="$st $ex ${rs:-0}"
      [ "$so" = - ] || SOUT[$job]=$so
      n=$((n + 1))
      continue
    fi
    # A pending array's tasks come as one record with a range (4-99%2), whose output file name
    # Slurm expands with a placeholder task id: only a single task's is its own.
    [[ "$task" =~ ^[0-9]+$ ]] && [[ "$so" != *4294967294* ]] || so=-
    while read -r t; do
      [ -n "${2:-}" ] && [ -n "${SSTATE[${job}_$t]:-}" ] && continue
      SSTATE[${job}_$t]="$st $ex ${rs:-0}"
      [ "$so" = - ] || SOUT[${job}_$t]=$so
      n=$((n + 1))
    done < <(expand_ranges "$task")
  done <<<"$1"
  ADDED=$n
}

# scontrol_jobs ID...: `scontrol -o show job` of each job (one call per array, not a listing of
# the whole cluster); a job Slurm has forgotten prints nothing.
scontrol_jobs() {
  local id
  for id in "$@"; do
    [ -z "$id" ] || scontrol -o show job "$id" 2>/dev/null || true
  done
}

min_job_age() {
  # Unreachable controller: Slurm's default (and no exit status that would end the script).
  { scontrol show config 2>/dev/null || true; } | awk '$1 == "MinJobAge" { print $3; found = 1 } END { if (!found) print 300 }'
}

# output_file ID: the output file of task A_T (or of the merge job J): the one Slurm names, else
# the --output pattern in force expanded (%A, %a, %j, %x, %u, %%), relative to here when below.
output_file() {
  local id=$1 job task pat
  if [ -n "${SOUT[$id]:-}" ]; then
    rel "${SOUT[$id]}"
    return
  fi
  job=${id%%_*}
  task=''
  [[ "$id" == *_* ]] && task=${id#*_}
  if [ -z "$task" ]; then
    pat=$(rel "$LOGS_DIR")/slurm-merge-%j.out
  else
    pat=$(output_pattern)
  fi
  pat=${pat//%%/$'\001'}
  pat=${pat//%A/$job}
  pat=${pat//%a/$task}
  pat=${pat//%j/$job}
  pat=${pat//%x/shardrun-$RUN}
  pat=${pat//%u/$(id -un)}
  pat=${pat//$'\001'/%}
  # Relative patterns are relative to the tasks' --chdir, this directory.
  if [[ "$pat" == /* ]]; then rel "$pat"; else echo "$pat"; fi
}

# The tasks' --output pattern: the user's last --output/-o, else ours.
output_pattern() {
  local pat i o=("${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"}")
  pat="$(rel "$LOGS_DIR")/slurm-%A_%a.out"
  for ((i = 0; i < ${#o[@]}; i++)); do
    case "${o[$i]}" in
      --output=*) pat=${o[$i]#--output=} ;;
      -o | --output) pat=${o[$((i + 1))]:-$pat} ;;
      -o*) pat=${o[$i]#-o} ;;
    esac
  done
  echo "$pat"
}

# shown_output FILE [WORD]: "WORD FILE" when the file exists, else says there is none.
shown_output() {
  if [ -e "$1" ]; then
    echo "${2:+$2 }$1"
  else
    echo "no Slurm output file: $1 was never written (the task never started)"
  fi
}

# ---- the run's last submission, from its records --------------------------------------------

# load_last_submission: the run's last Slurm launch and its submissions, from slurm.status:
# SUBMIT_TS, NUM_SHARDS, MAX_ARRAY, JOBS, REDO_STALE, SHARDS, JOB_IDS, JOB_OF, OFFSET_OF, MERGE_JOB.
load_last_submission() {
  local n line l job offset shards
  [ -f "$STATUS" ] && n=$(grep -n -E '^[^ ]+ launch ' "$STATUS" | tail -n 1 | cut -d: -f1)
  [ -n "${n:-}" ] || DIE_CODE=2 die "run '$RUN' has no Slurm submission recorded ($(rel "$STATUS")); submit it first: $(me) $(quoted --config "$CONFIG")"
  line=$(sed -n "${n}p" "$STATUS")
  SUBMIT_TS=${line%% *}
  NUM_SHARDS=$(field "$line" num_shards)
  MAX_ARRAY=$(field "$line" max_array_size)
  if ! [[ "$NUM_SHARDS" =~ ^[1-9][0-9]{0,5}$ && "$MAX_ARRAY" =~ ^[1-9][0-9]{0,6}$ ]]; then
    DIE_CODE=2 die "the status file $(rel "$STATUS") is damaged (its last launch line: ${line:0:80}); start the run again with --force"
  fi
  JOBS=$(field "$line" jobs)
  PER_TASK=$(field "$line" shards_per_task)
  [[ "$PER_TASK" =~ ^[1-9][0-9]{0,5}$ ]] || PER_TASK=1
  case "$(field "$line" mode)" in
    redo-stale) REDO_STALE=1 ;;
    force) LAST_FORCE=1 ;;
  esac
  [ "$(field "$line" merge)" = 1 ] && MERGE=1
  JOB_IDS=()
  SHARDS=()
  MERGE_JOB=''
  declare -gA JOB_OF=()
  while IFS= read -r l; do
    job=$(field "$l" job)
    [[ "$job" =~ ^[0-9]+$ ]] || continue
    if [ "$(field "$l" merge)" = 1 ]; then
      MERGE_JOB=$job
      MERGE_NOTIFIES=0
      [ "$(field "$l" notify)" = 1 ] && MERGE_NOTIFIES=1
      continue
    fi
    offset=$(field "$l" offset)
    shards=$(field "$l" shards)
    JOB_IDS+=("$job")
    JOB_OF[$offset]=$job
    mapfile -t -O "${#SHARDS[@]}" SHARDS < <(expand_ranges "$shards")
  done < <(tail -n +"$n" "$STATUS" | grep -E '^[^ ]+ submit ')
  ((${#JOB_IDS[@]} > 0)) || DIE_CODE=2 die "run '$RUN': sbatch accepted nothing at its last submission ($SUBMIT_TS); submit it again: $(again)$( [ -z "$(sbatch_record)" ] || echo " (with corrected options after a new -- if sbatch refused one of the remembered ones: $(sbatch_record))")"
}

# ---- --status, --cancel ------------------------------------------------------------------

# One line per state: how many shards, and which (compressed ranges).
show_status() {
  local i st task key had_gone sst srs mst='' mex
  need_cmd scontrol
  load_last_submission
  read_finishes "$SUBMIT_TS"
  task_states
  declare -A in_sub=() members=()
  for i in "${SHARDS[@]}"; do in_sub[$i]=1; done
  echo "run '$RUN': $(plural "$NUM_SHARDS" shard); last submission $SUBMIT_TS: job(s) ${JOB_IDS[*]} (name shardrun-$RUN)${MERGE_JOB:+, merge job $MERGE_JOB (shardrun-$RUN-merge)}"
  [ -n "$(sbatch_record)" ] && echo "sbatch options: $(sbatch_record)"
  ((${#NOTIFY[@]} == 0)) || echo "--notify command: $(record_words "${NOTIFY[@]}")$(notice_sender)"
  echo "job states from $STATE_SOURCE"
  # Shards outside the last submission keep what their logs last said.
  [ "${#in_sub[@]}" = "$NUM_SHARDS" ] || read_earlier_finishes
  for ((i = 0; i < NUM_SHARDS; i++)); do
    if [ -z "${in_sub[$i]:-}" ]; then
      st=${EARLIER[$i]:-never started}
      [ "$st" = ok ] && st='ok'
    else
      task=$(job_of_shard "$i")
      read -r sst _ srs <<<"${SSTATE[$task]:-}"
      case "$sst" in
        PENDING | REQUEUED | REQUEUE_HOLD | REQUEUE_FED)
          if [ "${srs:-0}" != 0 ] || [ "$sst" != PENDING ]; then st=requeued; else st=queued; fi ;;
        RUNNING | COMPLETING | CONFIGURING | SUSPENDED | STOPPED)
          st=running
          # A task of several shards runs them one after another: those done say so.
          ((PER_TASK == 1)) || st=${FSTATUS[$i]:-running}
          ;;
        *)
          st=${FSTATUS[$i]:-}
          if [ -z "$st" ]; then
            if [ -n "$sst" ]; then
              st="did not finish (Slurm: $sst)"
              if [ "$sst" = CANCELLED ]; then
                st="cancelled while running"
                [ -e "$(output_file "$task")" ] || st="cancelled, never started"
              fi
            else
              st=gone
            fi
          fi
          ;;
      esac
    fi
    members[$st]+="$i "
  done
  had_gone=0
  [ -n "${members[gone]:-}" ] && had_gone=1
  declare -gA counted=()
  for key in "${!members[@]}"; do counted[$key]=1; done
  for key in ok running queued requeued failed interrupted halted "cancelled while running" "cancelled, never started" gone "never started"; do
    [ -n "${members[$key]:-}" ] || continue
    # shellcheck disable=SC2086  # one word per shard
    printf '  %-28s %6s  %s\n' "$key" "$(thousands "$(wc -w <<<"${members[$key]}")")" "$(ranges ${members[$key]})"
    unset "members[$key]"
  done
  for key in "${!members[@]}"; do
    # shellcheck disable=SC2086
    printf '  %-28s %6s  %s\n' "$key" "$(thousands "$(wc -w <<<"${members[$key]}")")" "$(ranges ${members[$key]})"
  done
  if [ -n "$MERGE_JOB" ]; then
    read -r mst mex _ <<<"${SSTATE[$MERGE_JOB]:-}"
    if [ "$mst" = PENDING ]; then
      echo "  merge job $MERGE_JOB: PENDING (it starts once every task has succeeded)"
    else
      echo "  merge job $MERGE_JOB: ${mst:-$GONE}${mex:+, exit $mex} ($(shown_output "$(output_file "$MERGE_JOB")" output))"
    fi
  fi
  ((had_gone)) && echo "  gone: Slurm no longer knows the task, and its log has no end since the submission (${GONE#gone: })"
  status_next "$mst"
  return 0
}

# status_next MERGE_STATE: what to do next, after --status's table (`counted`: the states shown).
# The re-submission keeps --merge when the run has a merge job (load_last_submission sets MERGE).
status_next() {
  local live=0 bad=0 key
  for key in "${!counted[@]}"; do
    case "$key" in
      ok) ;;
      running | queued | requeued) live=1 ;;
      *) bad=1 ;;
    esac
  done
  if ((live)); then
    echo "watch: $(rel "$BIN/monitor") $(quoted --config "$CONFIG") --follow"
  elif ((bad)); then
    echo "why:   $(rel "$BIN/monitor") $(quoted --config "$CONFIG") --failures"
    echo "next:  $(again)"
  elif read_finishes '' && run_finished && ((MERGED)); then
    echo "merged: $(rel "$DATA_DIR")/stats.json"
  elif [ -z "$MERGE_JOB" ] || [ "$1" != COMPLETED ]; then
    echo "next:  $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")"
  fi
}

# Cancels the run's jobs still in the queue (every array of a split run, and its merge job), and
# waits until they have left it: a cancelled worker commits its finished items first.
cancel_run() {
  local q t=0
  need_cmd scancel
  need_cmd squeue
  q=$(queued_jobs | tr '\n' ' ' | sed 's/ $//')
  if [ -z "$q" ]; then
    echo "nothing to cancel: run '$RUN' has no job in the Slurm queue"
    exit 0
  fi
  load_last_submission
  # shellcheck disable=SC2086  # one argument per job id
  scancel $q || die "scancel $q failed"
  status "cancel jobs=${q// /,}"
  say "cancelled job(s) $q; waiting for their tasks to leave the queue (running workers commit what they finished)"
  while [ -n "$(queued_jobs)" ]; do
    ((t++ < 600)) || die "job(s) $q are still in the queue after 10 minutes (squeue -j ${q// /,})"
    sleep 1
  done
  if ((LAST_FORCE)); then
    # Shards that never started still hold their outputs from before --force, which
    # --only-failed would count as done: only --force starts the run over.
    echo "cancelled run '$RUN': job(s) $q; nothing of it is queued. Start it over later with: $(me) $(quoted --config "$CONFIG")${JOBS:+ --jobs $JOBS} --force$( ((MERGE)) && echo ' --merge')"
  else
    echo "cancelled run '$RUN': job(s) $q; nothing of it is queued. Finish it later with: $(again)"
  fi
  notify_cancelled "$q"
  exit 0
}

# notify_cancelled JOBS: the merge job was to send the run's --notify notice; cancelled before it
# started (Slurm creates its output file when it starts), it never will, so the notice goes from
# here, with the exit code of a run stopped by SIGTERM (143: state interrupted). A merge job
# stopped while running sends it itself (write_merge_script).
notify_cancelled() {
  ((MERGE_NOTIFIES && ${#NOTIFY[@]} > 0)) && [ -n "$MERGE_JOB" ] || return 0
  [[ " $1 " == *" $MERGE_JOB "* ]] || return 0
  [ ! -e "$LOGS_DIR/slurm-merge-$MERGE_JOB.out" ] || return 0
  say "merge job $MERGE_JOB never started: sending the run's --notify notice from here"
  status "notify merge_job=$MERGE_JOB exit=143 why=cancelled"
  run_notify 143
}

# read_earlier_finishes: EARLIER[i] = the status of shard i's last finish line, whenever written.
read_earlier_finishes() {
  local i
  read_finishes ''
  declare -gA EARLIER=()
  for i in "${!FSTATUS[@]}"; do EARLIER[$i]=${FSTATUS[$i]}; done
  read_finishes "$SUBMIT_TS"
}


print_next_steps() {
  local cmd when='every shard succeeded'
  cmd="$(me) $(quoted --config "$CONFIG")"
  job_notifies && when='every task ended'
  echo "submitted run '$RUN': job(s) ${JOB_IDS[*]} (name shardrun-$RUN), shard(s) $(ranges "${SHARDS[@]}") of $NUM_SHARDS${MERGE_JOB:+; merge job $MERGE_JOB (shardrun-$RUN-merge) once $when}; logs in $(rel "$LOGS_DIR")/"
  echo "watch:  $(rel "$BIN")/monitor $(quoted --config "$CONFIG") --follow"
  echo "        $cmd --status   (--wait waits for it, --cancel cancels it)"
  if [ -n "$MERGE_JOB" ] && job_notifies; then
    echo "then:   the merge job writes $(rel "$DATA_DIR")/ and sends the --notify notice, also when a shard fails (then: $(again))"
  elif [ -n "$MERGE_JOB" ]; then
    echo "then:   the merge job writes $(rel "$DATA_DIR")/ (if a shard fails: $(again))"
  else
    echo "then:   $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")   (when every shard is done; else: $(again))"
  fi
}

nothing_to_do() {
  local more=''
  ((ONLY_FAILED)) || more="; --force starts it over"
  if ((MERGED)); then
    echo "nothing to do: all $(plural "$NUM_SHARDS" shard) of run '$RUN' succeeded and were merged ($(rel "$DATA_DIR")/stats.json)$more"
    exit 0
  fi
  echo "nothing to do: all $(plural "$NUM_SHARDS" shard) of run '$RUN' succeeded$more"
  ((MERGE)) && echo "next: $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")"
  exit 0
}

main() {
  parse_args "$@"
  ensure_binaries
  describe_run slurm.status
  BATCH=$LOGS_DIR/slurm_task.sh
  MERGE_SCRIPT=$LOGS_DIR/slurm_merge.sh
  use_remembered_sbatch_opts
  use_remembered_notify
  choose_per_task
  if ((STATUS_ONLY)); then
    show_status
    exit 0
  fi
  if ((CANCEL)); then
    cancel_run
  fi
  # Without a shard count (none given, none in the configuration), the run's own plan: the
  # plain command and a `--wait` re-attach act on the run as it was launched.
  NUM_SHARDS_GIVEN=$NUM_SHARDS
  if [ -z "$NUM_SHARDS$CONFIG_SHARDS" ]; then
    NUM_SHARDS=$(field "$(last_launch)" num_shards)
    [[ "$NUM_SHARDS" =~ ^[1-9][0-9]{0,5}$ ]] || NUM_SHARDS=''
  fi
  if ((DRY_RUN)); then
    choose_shards
    ((${#SHARDS[@]} > 0)) || nothing_to_do
    plan_submissions
    dry_run
    exit 0
  fi
  need_cmd sbatch
  need_cmd squeue
  take_submit_lock
  # --wait alone while the run's jobs are queued: wait for that submission (after a Ctrl-C of an
  # earlier --wait, or from another login).
  if ((WAIT && !ONLY_FAILED && !FORCE && !REDO_STALE && !MERGE && !SBATCH_GIVEN)) && [ -z "$NUM_SHARDS_GIVEN$JOBS$THROTTLE_ARG$PER_TASK_ARG" ] &&
    [ -n "$(queued_jobs)" ]; then
    exec 9>&-
    load_last_submission
    # Its merge job sends the remembered notice: one notice per run.
    if ((MERGE_NOTIFIES)) && [ -n "$NOTIFY_FROM" ]; then NOTIFY=(); fi
    say "run '$RUN' has job(s) in the queue: waiting for its submission of $SUBMIT_TS"
    wait_for_jobs
    report
  fi
  refuse_when_queued
  if ((ONLY_FAILED)); then
    preflight "$(field "$(last_launch)" num_shards)"
  else
    preflight "${NUM_SHARDS:-$CONFIG_SHARDS}"
  fi
  choose_shards
  if ((${#SHARDS[@]} == 0)); then
    nothing_to_do
  fi
  ((ONLY_FAILED)) && say "re-submitting shard(s) $(ranges "${SHARDS[@]}") of $NUM_SHARDS"
  plan_submissions
  if [ -n "$NOTIFY_FROM" ] && ((!WAIT && !MERGE)); then
    say "no notice for this submission: the --notify command remembered from the launch of $NOTIFY_FROM runs when the run's end is seen (add --wait or --merge; --no-notify forgets it)"
  fi
  ((${#OFFSETS[@]} > 1)) && say "$NUM_SHARDS shards exceed MaxArraySize $MAX_ARRAY: ${#OFFSETS[@]} array submissions"
  submit
  exec 9>&-
  print_next_steps
  if ((WAIT)); then
    # The report judges shards by their logs and Slurm's memory of the tasks.
    wait_for_jobs
    report
  fi
}

main "$@"
