#!/usr/bin/env bash
# run_parallel.sh: run every shard of a shardrun configuration on this machine.
#
# Usage: ./scripts/run_parallel.sh [--config FILE] [--num-shards N] [--only-failed] [--force]
#                                  [--redo-stale] [--dry-run] [--stagger SECONDS] [--jobs J] [--merge]
#                                  [--grace SECONDS] [--max-running P]
#                                  [--notify CMD [ARG...] ';' | --no-notify]
#
#   --version          print the version and exit
#   --config FILE      run configuration (default: conf/default.yaml)
#   --num-shards N     shard count (default: the config's `shards`, else the number of CPUs)
#   --only-failed      re-run exactly the shards whose last run failed, died, was interrupted
#                      or never finished, with the recorded shard count
#   --force            start the run over: discard shard outputs (cached items are reused)
#   --redo-stale       run every shard, regenerating the items that an older revision of the
#                      generator made (a fixed script); the rest is kept
#   --dry-run          print the plan (per shard: items, first … last key); start nothing
#   --stagger SECONDS  pause between two worker launches (default: 0)
#   --jobs J           items in flight per shard (overrides generator.jobs)
#   --merge            run `merge` after a fully successful run
#   --grace SECONDS    on SIGINT/SIGTERM, how long workers get to drain before SIGKILL (default: 4)
#   --max-running P    at most P workers at once; the next queued shard starts as soon as one
#                      ends (default: every shard at once when there are no more shards than
#                      CPUs, else the number of CPUs)
#   --notify CMD [ARG...] ';'
#                      when the run ends, run CMD (no shell) with the run's summary as JSON on
#                      stdin and SHARDRUN_* variables; the ';' word ends its words. Killed after
#                      SHARDRUN_NOTIFY_TIMEOUT seconds (default 60); never changes the exit code.
#                      Remembered with the run: later launches without --notify (--only-failed,
#                      --redo-stale, the printed hints) send the notice too; a new --notify
#                      replaces it
#   --no-notify        send no notice for this launch, and forget the remembered command
#
# Workers run in the background, each logging to logs/<run>/shard_<I>_of_<N>.log. Their pid,
# start and end time and exit code go to logs/<run>/launcher.status. SIGINT and SIGTERM are
# forwarded (as SIGTERM) to the workers this script started, and to nothing else.
# Before any shard starts, `shard-worker --check` checks the plan (a refusal starts and records
# nothing).
# Exit: 0 when every shard succeeded, 1 otherwise, 2 on usage errors, 130/143 when interrupted.
set -Eeuo pipefail

# A background job of a non-interactive shell starts with SIGINT ignored, and a shell cannot
# trap a signal it started with ignored: restore the default disposition and start again.
reset_ignored_signals() {
  local mask
  mask=$(awk '/^SigIgn:/ {print $2}' /proc/$$/status 2>/dev/null || echo 0)
  if (((16#${mask:-0} & 2) != 0)) && [ -z "${SHARDRUN_SIGNALS_RESET:-}" ]; then
    export SHARDRUN_SIGNALS_RESET=1
    exec env --default-signal=INT,QUIT "$0" "$@"
  fi
}
reset_ignored_signals "$@"

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG=conf/default.yaml
NUM_SHARDS=''
ONLY_FAILED=0
FORCE=0
REDO_STALE=0
DRY_RUN=0
STAGGER=0
JOBS=''
MERGE=0
GRACE=4
MAX_RUNNING=''

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

usage_error() {
  DIE_CODE=2 die "$1 (see --help)"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      -V | --version) echo "$(basename "$0") (shardrun $(shardrun_version))"; exit 0 ;;
      --config) [ $# -ge 2 ] || usage_error "--config needs a file"; CONFIG=$2; shift ;;
      --num-shards) [ $# -ge 2 ] || usage_error "--num-shards needs a number"; NUM_SHARDS=$2; shift ;;
      --only-failed) ONLY_FAILED=1 ;;
      --force) FORCE=1 ;;
      --redo-stale) REDO_STALE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --stagger) [ $# -ge 2 ] || usage_error "--stagger needs seconds"; STAGGER=$2; shift ;;
      --jobs) [ $# -ge 2 ] || usage_error "--jobs needs a number"; JOBS=$2; shift ;;
      --merge) MERGE=1 ;;
      --grace) [ $# -ge 2 ] || usage_error "--grace needs seconds"; GRACE=$2; shift ;;
      --max-running) [ $# -ge 2 ] || usage_error "--max-running needs a number"; MAX_RUNNING=$2; shift ;;
      --notify) shift; take_notify "$@"; shift $((NOTIFY_WORDS - 1)) ;;
      --no-notify) NO_NOTIFY=1 ;;
      *) usage_error "unknown option: $1" ;;
    esac
    shift
  done
  [ -z "$NUM_SHARDS" ] || is_count "$NUM_SHARDS" "$MAX_SHARDS" || usage_error "--num-shards must be a whole number from 1 to $MAX_SHARDS, not '$NUM_SHARDS'"
  [ -z "$MAX_RUNNING" ] || is_count "$MAX_RUNNING" "$MAX_SHARDS" || usage_error "--max-running must be a whole number from 1 to $MAX_SHARDS, not '$MAX_RUNNING'"
  [ -z "$JOBS" ] || is_count "$JOBS" "$MAX_JOBS" || usage_error "--jobs must be a whole number from 1 to $MAX_JOBS, not '$JOBS'"
  is_seconds "$STAGGER" "$MAX_SECONDS" || usage_error "--stagger must be a number of seconds from 0 to $MAX_SECONDS, not '$STAGGER'"
  is_seconds "$GRACE" "$MAX_SECONDS" || usage_error "--grace must be a number of seconds from 0 to $MAX_SECONDS, not '$GRACE'"
  check_notify_timeout
  check_notify_options
  [ -f "$CONFIG" ] || usage_error "no configuration file at $CONFIG"
  if ((ONLY_FAILED && FORCE)); then usage_error "--only-failed and --force contradict each other"; fi
  if ((REDO_STALE && FORCE)); then usage_error "--redo-stale and --force contradict each other (--force regenerates everything)"; fi
  if ((REDO_STALE && ONLY_FAILED)); then usage_error "--redo-stale runs every shard (stale items can be in any); drop --only-failed"; fi
}

choose_shards() {
  local plans recorded_n i
  if ((ONLY_FAILED)); then
    recorded_n=$(last_field "$STATUS" launch num_shards)
    [ -n "$recorded_n" ] || DIE_CODE=2 die "run '$RUN' has no launcher record ($STATUS); start it without --only-failed"
    [[ "$recorded_n" =~ ^[1-9][0-9]{0,5}$ ]] ||
      DIE_CODE=2 die "the status file $(rel "$STATUS") is damaged (num_shards='${recorded_n:0:40}'); start the run again with --force"
    if [ -n "$NUM_SHARDS" ] && [ "$NUM_SHARDS" != "$recorded_n" ]; then
      DIE_CODE=2 die "run '$RUN' was launched with $recorded_n shards; --only-failed re-runs that plan (use --force to start over with $NUM_SHARDS)"
    fi
    # A changed configuration is the workers' to judge (the preflight already asked them): a
    # new identity is refused, a new revision of the generator (a fixed script, a new
    # generator.version) or new retries or timeouts are not.
    NUM_SHARDS=$recorded_n
  else
    # --redo-stale acts on the run as it is: its existing plan, unless told otherwise.
    if ((REDO_STALE)) && [ -z "$NUM_SHARDS" ]; then
      NUM_SHARDS=$(existing_plans | head -n 1)
    fi
    NUM_SHARDS=${NUM_SHARDS:-${CONFIG_SHARDS:-$(nproc)}}
    plans=$(existing_plans | grep -vx "$NUM_SHARDS" || true)
    if [ -n "$plans" ]; then
      if ((FORCE)); then
        discard_other_plans
      else
        DIE_CODE=2 die "run '$RUN' already has outputs from $(echo "$plans" | tr '\n' ' ' | sed 's/ $//') shards in $DATA_DIR; use --num-shards $(echo "$plans" | head -n 1), or --force to start over with $NUM_SHARDS shards (cached items are reused)"
      fi
    fi
  fi
  SHARDS=()
  for ((i = 0; i < NUM_SHARDS; i++)); do
    if ((ONLY_FAILED)) && shard_succeeded "$i"; then
      continue
    fi
    SHARDS+=("$i")
  done
}


# True when shard I's latest run finished ok: its log's last start/finish line is a finish with
# status=ok (a start without a finish after it is a worker that died).
shard_succeeded() {
  local log
  log=$(shard_log "$1")
  [ -f "$log" ] || return 1
  grep -E '^[^ ]+ (start|finish)( |$)' "$log" | tail -n 1 | grep -q ' finish status=ok'
}

dry_run() {
  local i out
  for ((i = 0; i < NUM_SHARDS; i++)); do
    out=$("$WORKER" --config "$CONFIG" --shard-index "$i" --num-shards "$NUM_SHARDS" --dry-run 2>&1) ||
      DIE_CODE=2 die "${out#shard-worker: error: }"
    echo "$out"
  done
}

take_launcher_lock() {
  mkdir -p "$LOGS_DIR"
  LOCK=$LOGS_DIR/launcher.lock
  exec 9<>"$LOCK"
  flock -n 9 || another_launcher
  echo "pid $$ on $(hostname)" >"$LOCK"
}

another_launcher() {
  DIE_CODE=2 die "another launcher ($(cat "$LOGS_DIR/launcher.lock" 2>/dev/null || echo 'pid unknown')) is running run '$RUN'; wait for it or stop it first"
}

# Refuses, reading only, when another launcher runs this run (before the preflight, whose
# complaint about the shards' locks would say less).
refuse_another_launcher() {
  [ -e "$LOGS_DIR/launcher.lock" ] || return 0
  exec 9<"$LOGS_DIR/launcher.lock"
  flock -n 9 || another_launcher
  exec 9<&-
}

# ---- running -------------------------------------------------------------------------------

declare -A PID_OF=() SHARD_OF=() START_OF=() EXIT_OF=() STATE_OF=() ERR_FROM=()
LIVE=()
INTERRUPTED=''
KILLER=''
STDERR_SAVED=''
DISPLAY_PID=''

# On a terminal, the monitor's live display runs while the workers do (SHARDRUN_NO_DISPLAY=1
# turns it off); otherwise a line is printed per shard as it ends.
start_display() {
  [ -t 1 ] && [ -x "$BIN/monitor" ] && [ -z "${SHARDRUN_NO_DISPLAY:-}" ] || return 0
  "$BIN/monitor" --run "$RUN" --root "$PWD" --num-shards "$NUM_SHARDS" --follow --interval 1 &
  DISPLAY_PID=$!
}

stop_display() {
  [ -n "$DISPLAY_PID" ] || return 0
  kill -TERM "$DISPLAY_PID" 2>/dev/null || true
  wait "$DISPLAY_PID" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked by the INT/TERM traps
on_signal() {
  local sig=$1
  if [ -n "$INTERRUPTED" ]; then
    # A second signal: no more draining. A worker's second SIGINT makes it kill its generators'
    # process groups and exit at once.
    ((${#LIVE[@]} == 0)) || kill -INT "${LIVE[@]}" 2>/dev/null || true
    return
  fi
  INTERRUPTED=$sig
  # The terminal is gone: writing to it would fail and end the script before the workers have
  # drained. Their logs and the status file keep the outcome.
  [ "$sig" != SIGHUP ] || exec >/dev/null 2>&1 </dev/null
  printf '\n' >&2
  say "$sig received: stopping ${#LIVE[@]} worker(s) (SIGKILL after ${GRACE}s)"
  stop_workers
}

# Sends SIGTERM to the running workers and, once, starts the grace-period timer: after it, we ask
# ourselves (USR1) to KILL whoever is left. Only this shell knows which workers still run, and
# their pids cannot be reused until it reaps them.
stop_workers() {
  ((${#LIVE[@]} > 0)) || return 0
  kill -TERM "${LIVE[@]}" 2>/dev/null || true
  [ -z "$KILLER" ] || return 0
  (
    sleep "$GRACE" &
    timer=$!
    trap 'kill "$timer" 2>/dev/null; exit 0' TERM
    wait "$timer"
    kill -USR1 $$ 2>/dev/null || true
  ) &
  KILLER=$!
}

# shellcheck disable=SC2317  # invoked by the USR1 trap
on_grace_expired() {
  ((${#LIVE[@]} == 0)) && return
  say "grace period over: stopping ${#LIVE[@]} worker(s) at once"
  # Bash writes a job notice ("line N: PID Killed ...") on its stderr when it reaps a worker
  # killed here; each worker's summary line says it better. So the shell's stderr is set aside
  # until every worker is reaped (run_shards restores it); nothing else is said meanwhile.
  exec {STDERR_SAVED}>&2 2>/dev/null
  # A worker's second signal makes it SIGKILL its generators' process groups and exit; only a
  # worker that cannot even do that gets SIGKILL itself, half a second later. Its generators'
  # groups are then the guard's job: each worker's guard process (see src/child/guard.rs) kills
  # the groups still listed when the worker's end closes its pipe, background children included.
  kill -INT "${LIVE[@]}" 2>/dev/null || true
  sleep 0.5
  kill -KILL "${LIVE[@]}" 2>/dev/null || true
}

launch_shard() {
  local i=$1 args
  args=(--config "$CONFIG" --shard-index "$i" --num-shards "$NUM_SHARDS" --quiet)
  ((FORCE)) && args+=(--force)
  ((REDO_STALE)) && args+=(--redo-stale)
  [ -n "$JOBS" ] && args+=(--jobs "$JOBS")
  # 9>&-: the launcher's lock must not be inherited by workers and whatever their generators
  # leave behind, or it would outlive the launcher.
  # What this run adds to the .stderr file is what its report quotes.
  # (No process is started for it when the file is empty, the common case: with many short
  # shards, the launcher's own processes would cost more than the workers.)
  local err=$LOGS_DIR/shard_${i}_of_${NUM_SHARDS}.stderr
  ERR_FROM[$i]=0
  [ ! -s "$err" ] || ERR_FROM[$i]=$(file_size "$err")
  "$WORKER" "${args[@]}" >/dev/null 2>>"$err" 9>&- &
  local pid=$!
  PID_OF[$i]=$pid
  SHARD_OF[$pid]=$i
  START_OF[$i]=$EPOCHSECONDS
  LIVE+=("$pid")
  status "start shard=$i num_shards=$NUM_SHARDS pid=$pid"
}

# state_for CODE: sets STATE to the state a worker's exit code means.
state_for() {
  case "$1" in
    0) STATE=ok ;;
    1) STATE=failed ;;
    2) STATE=error ;;
    3) STATE=locked ;;
    130 | 143) STATE=interrupted ;;
    *) if [ -n "$INTERRUPTED" ]; then STATE=interrupted; else STATE=died; fi ;;
  esac
}

finish_shard() {
  local pid=$1 code=$2 i state p rest=() STATE
  i=${SHARD_OF[$pid]}
  state_for "$code"
  state=$STATE
  EXIT_OF[$i]=$code
  STATE_OF[$i]=$state
  for p in "${LIVE[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  LIVE=("${rest[@]+"${rest[@]}"}")
  status "end shard=$i num_shards=$NUM_SHARDS pid=$pid exit=$code state=$state elapsed_s=$((EPOCHSECONDS - START_OF[$i]))"
  [ -n "$DISPLAY_PID" ] || summary_line "$i"
}

# Finishes workers that are gone but were not reported by `wait -n`.
reap_gone() {
  local p code found=0
  for p in "${LIVE[@]}"; do
    kill -0 "$p" 2>/dev/null && continue
    code=0
    wait "$p" 2>/dev/null || code=$?
    # 127: bash no longer knows the exit status; the worker was killed.
    ((code == 127)) && code=137
    finish_shard "$p" "$code"
    found=1
  done
  ((found)) || sleep 0.05
}

install_traps() {
  trap 'on_signal SIGINT' INT
  trap 'on_signal SIGTERM' TERM
  trap 'on_signal SIGHUP' HUP
  trap on_grace_expired USR1
}

# wait_one: waits for one worker to end (blocking in `wait -n`, no polling) and records it.
wait_one() {
  local pid='' code=0 p
  # Workers that bash has already reaped are no longer its jobs, and `wait -n` given only such
  # ids waits for any child instead (the grace timer, the display): finish those first.
  for p in "${LIVE[@]}"; do
    kill -0 "$p" 2>/dev/null || { reap_gone; return; }
  done
  wait -n -p pid "${LIVE[@]}" || code=$?
  if [ -z "${pid:-}" ] || [ -z "${SHARD_OF[$pid]+set}" ]; then
    # A trap interrupted `wait` (wait again), bash already reaped workers that died together
    # and no longer reports them, or another child ended: find the gone workers and finish them.
    reap_gone
    return
  fi
  finish_shard "$pid" "$code"
}

run_shards() {
  local i n=0 queued=''
  ((${#SHARDS[@]} > MAX_RUNNING)) && queued=", at most $MAX_RUNNING at once"
  status "launch run=$RUN num_shards=$NUM_SHARDS shards=$(IFS=,; echo "${SHARDS[*]}") max_running=$MAX_RUNNING launcher_pid=$$ config=$(logval "$CONFIG") config_sum=$(config_sum) script=$(logval "$(script_path)") $(notify_field)"
  say "run '$RUN': starting ${#SHARDS[@]} of $NUM_SHARDS shard(s)$queued; logs in $(rel "$LOGS_DIR")/"
  # Before the first launch, so that queued shards are on screen (pending) from the start.
  start_display
  for i in "${SHARDS[@]}"; do
    [ -n "$INTERRUPTED" ] && break
    # A shard waits for a free slot; an interruption leaves it (and those after it) unstarted,
    # which --only-failed then runs.
    while ((${#LIVE[@]} >= MAX_RUNNING)) && [ -z "$INTERRUPTED" ]; do
      wait_one
    done
    [ -n "$INTERRUPTED" ] && break
    if ((n > 0)) && [ "$STAGGER" != 0 ]; then
      sleep "$STAGGER" &
      wait $! || true
      [ -n "$INTERRUPTED" ] && break
    fi
    launch_shard "$i"
    n=$((n + 1))
  done
  # A signal that arrived while a worker was being started may have missed it.
  [ -z "$INTERRUPTED" ] || stop_workers
  while ((${#LIVE[@]} > 0)); do
    wait_one
  done
  if [ -n "$STDERR_SAVED" ]; then exec 2>&"$STDERR_SAVED" {STDERR_SAVED}>&-; fi
  if [ -n "$KILLER" ]; then kill "$KILLER" 2>/dev/null || true; wait "$KILLER" 2>/dev/null || true; fi
  stop_display
  trap - INT TERM USR1
}



# last_finish LOG: the log's last `finish` line. A worker writes it last, so it is looked for in
# the log's end first (one process, whatever the log's length), then in the whole log.
last_finish() {
  local tail_ line found=''
  # Only a regular file: a log replaced by a device (/dev/full in a test) reads forever.
  [ -f "$1" ] || return 0
  tail_=$(tail -c 4096 "$1" 2>/dev/null) || return 0
  while IFS= read -r line; do
    [[ "$line" =~ ^[^\ ]+\ finish( |$) ]] && found=$line
  done <<<"$tail_"
  [ -n "$found" ] || found=$(last_line "$1" finish)
  printf '%s' "$found"
}

# line_field LINE KEY: the value of KEY on a log line (field, without a process).
line_field() {
  [[ " $1 " =~ \ $2=([^\ ]*)\  ]] && printf '%s' "${BASH_REMATCH[1]}"
  return 0
}

# One line per ended shard. A shard that did not succeed says why in full (the worker's last
# stderr line) and names the file with the rest: the log for failed items (their reasons and
# their generators' stderr), the .stderr file for errors (often the only file, e.g. for a
# configuration error).
summary_line() {
  local i=$1 log err state code pid done_ rows elapsed why file finish
  log=$LOGS_DIR/shard_${i}_of_${NUM_SHARDS}.log
  err=$LOGS_DIR/shard_${i}_of_${NUM_SHARDS}.stderr
  state=${STATE_OF[$i]}
  code=${EXIT_OF[$i]}
  pid=${PID_OF[$i]}
  finish=$(last_finish "$log")
  done_=$(line_field "$finish" "done")
  rows=$(line_field "$finish" rows)
  elapsed=$(line_field "$finish" elapsed_s)
  case "$state" in
    ok)
      printf '✓ shard %s/%s (pid %s) ok: %s items, %s rows, %.0f s\n' "$i" "$NUM_SHARDS" "$pid" \
        "$(thousands "${done_:-0}")" "$(thousands "${rows:-0}")" "${elapsed:-0}"
      return ;;
    interrupted)
      printf '✗ shard %s/%s (pid %s) interrupted: exit %s, %s items committed (see %s)\n' "$i" "$NUM_SHARDS" "$pid" \
        "$code" "$(thousands "${done_:-$(last_field "$log" item "done")}" | sed 's/^$/0/')" "$(rel "$log")"
      return ;;
  esac
  why=$(worker_reason "$err" "${ERR_FROM[$i]:-0}")
  case "$state" in
    failed) file=$log ;;
    died)
      ((code > 128)) && why=${why:-killed by SIG$(kill -l $((code - 128)) 2>/dev/null || echo $((code - 128)))}
      file=$log ;;
    *) file=$err ;;
  esac
  [ -s "$file" ] || file=$err
  printf '✗ shard %s/%s (pid %s) %s: exit %s%s (see %s)\n' "$i" "$NUM_SHARDS" "$pid" "$state" "$code" \
    "${why:+: $why}" "$(rel "$file")"
}

# The command that re-runs what did not succeed, with the options that name this run.
# An interrupted --redo-stale is finished by --redo-stale (the items still stale), not by
# --only-failed, which would leave them as they are.
again() {
  local action=--only-failed
  ((REDO_STALE)) && action=--redo-stale
  printf '%s %s%s %s' "$(me)" "$(quoted --config "$CONFIG")" "${JOBS:+ --jobs $JOBS}" "$action"
}

# shard_totals SHARD...: "items rows" summed over the shards' last finish lines (one awk per
# few thousand logs, not a few processes per shard: a run may have 100,000 shards).
# shellcheck disable=SC2016  # the $ are awk's fields, not the shell's
shard_totals() {
  local i log
  for i in "$@"; do
    log=$LOGS_DIR/shard_${i}_of_${NUM_SHARDS}.log # shard_log, without a subshell per shard
    # Not `[ -f ] && echo`: a last shard without a log (interrupted before it wrote one) would
    # make the loop, and with pipefail the whole summary, fail (set -e: exit 1, no report).
    if [ -f "$log" ]; then echo "$log"; fi
  done | xargs -r -d '\n' awk '
    function flush() { d += done_; r += rows_; done_ = 0; rows_ = 0 }
    FNR == 1 { flush() }
    $2 == "finish" {
      done_ = 0; rows_ = 0
      for (k = 3; k <= NF; k++) {
        if ($k ~ /^done=[0-9]+$/) done_ = substr($k, 6) + 0
        if ($k ~ /^rows=[0-9]+$/) rows_ = substr($k, 6) + 0
      }
    }
    END { flush(); printf "%d %d\n", d, r }' 2>/dev/null |
    awk '{ d += $1; r += $2 } END { printf "%d %d\n", d, r }'
}

report() {
  local i ok=0 bad=0 pending=() started=() totals
  for i in "${SHARDS[@]}"; do
    [ -n "${STATE_OF[$i]:-}" ] || continue
    [ -z "$DISPLAY_PID" ] || summary_line "$i"
  done
  for i in "${SHARDS[@]}"; do
    # A shard still queued when the run was interrupted never started: it is pending, and
    # --only-failed runs it.
    if [ -z "${STATE_OF[$i]:-}" ]; then pending+=("$i"); continue; fi
    started+=("$i")
    if [ "${STATE_OF[$i]}" = ok ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done
  if ((${#pending[@]} > 0)); then
    status "pending shards=$(IFS=,; echo "${pending[*]}") num_shards=$NUM_SHARDS"
  fi
  totals=$(shard_totals "${started[@]+"${started[@]}"}")
  printf '%s shard(s): %s ok, %s not ok%s; %s items, %s rows\n' "${#SHARDS[@]}" "$ok" "$((bad + ${#pending[@]}))" \
    "${pending[*]:+ (${#pending[@]} never started)}" "$(thousands "${totals% *}")" "$(thousands "${totals#* }")"
  local again
  again=$(again)
  if [ -n "$INTERRUPTED" ]; then
    echo "interrupted; committed items are kept. To finish: $again"
    [ "$INTERRUPTED" = SIGTERM ] && end_run 143
    [ "$INTERRUPTED" = SIGHUP ] && end_run 129
    end_run 130
  fi
  if ((bad > 0)); then
    echo "next: fix the cause (see the files named above), then re-run only those shards: $again"
    end_run 1
  fi
  if ((MERGE)); then
    say "merging"
    local code=0
    "$MERGE_BIN" --config "$CONFIG" || code=$?
    end_run "$code"
  else
    echo "next: $(rel "$MERGE_BIN") $(quoted --config "$CONFIG")   (watch a run with: $(rel "$BIN")/monitor $(quoted --config "$CONFIG") --follow)"
  fi
  end_run 0
}

main() {
  # From the start, so a signal during start-up is not lost (it stops the run before any worker
  # is started).
  install_traps
  parse_args "$@"
  ensure_binaries
  describe_run launcher.status
  use_remembered_notify
  if ((DRY_RUN)); then
    NUM_SHARDS=${NUM_SHARDS:-${CONFIG_SHARDS:-$(nproc)}}
    dry_run
    describe_notify
    exit 0
  fi
  refuse_another_launcher
  if ((ONLY_FAILED)); then
    preflight "$(last_field "$STATUS" launch num_shards)"
  else
    preflight "${NUM_SHARDS:-${CONFIG_SHARDS:-$(nproc)}}"
  fi
  take_launcher_lock
  choose_shards
  MAX_RUNNING=${MAX_RUNNING:-$(nproc)}
  if [ -n "$INTERRUPTED" ]; then
    echo "interrupted before any worker started"
    [ "$INTERRUPTED" = SIGTERM ] && exit 143
    [ "$INTERRUPTED" = SIGHUP ] && exit 129
    exit 130
  fi
  if ((${#SHARDS[@]} == 0)); then
    echo "nothing to do: all $NUM_SHARDS shard(s) of run '$RUN' succeeded"
    exit 0
  fi
  if ((ONLY_FAILED)); then
    say "re-running shard(s) $(IFS=,; echo "${SHARDS[*]}") of $NUM_SHARDS"
  fi
  [ -z "$NOTIFY_FROM" ] || say "when it ends: the --notify command remembered from the launch of $NOTIFY_FROM, $(record_words "${NOTIFY[@]}") (--no-notify drops it)"
  run_shards
  report
}

main "$@"
