#!/usr/bin/env bash
# Shared helpers for the shardrun scripts. Source it; it defines functions only.

# The repository root (the directory above scripts/).
SHARDRUN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SHARDRUN_ROOT

if [ -t 2 ]; then
  _bold=$'\033[1m' _red=$'\033[31m' _reset=$'\033[0m'
else
  _bold='' _red='' _reset=''
fi

# say MESSAGE...: one line of progress on stderr.
say() { printf '%s==>%s %s\n' "$_bold" "$_reset" "$*" >&2; }

# die MESSAGE...: an error on stderr, exit 1 (or $DIE_CODE).
die() {
  printf '%serror:%s %s\n' "$_red" "$_reset" "$*" >&2
  exit "${DIE_CODE:-1}"
}

# need_cmd NAME: fail clearly when a command is missing.
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "need '$1' (not found on PATH)"; }

# have_cmd NAME: true when a command exists.
have_cmd() { command -v "$1" >/dev/null 2>&1; }

# apt_install PACKAGE...: install Debian packages when running as root; runs apt-get update once,
# also across the scripts and tests this one starts (they inherit SHARDRUN_APT_UPDATED).
_apt_updated=${SHARDRUN_APT_UPDATED:-0}
apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! have_cmd apt-get; then
    say "cannot install $* (not root or no apt-get); skipping what needs it"
    return 1
  fi
  if [ "$_apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    _apt_updated=1
    export SHARDRUN_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# need_hyperfine: the benchmarks time with hyperfine and read its JSON export with jq; installs
# hyperfine when root and exits 2 when either is still missing.
need_hyperfine() {
  if ! have_cmd hyperfine; then
    say "installing hyperfine"
    apt_install hyperfine || true
  fi
  have_cmd hyperfine || DIE_CODE=2 die "hyperfine is required: apt-get install hyperfine"
  have_cmd jq || DIE_CODE=2 die "jq is required: apt-get install jq"
}

# ---- numbers from the command line -------------------------------------------------------------
# Documented maxima (README): bash arithmetic wraps at 2^63 and loops over a shard count, so every
# number is checked by its digits before any arithmetic sees it.
# shellcheck disable=SC2034 # used by the launchers that source this file
MAX_SHARDS=100000 # shardrun::config::MAX_SHARDS
# shellcheck disable=SC2034 # used by the launchers that source this file
MAX_JOBS=1024     # shardrun::config::MAX_JOBS
# shellcheck disable=SC2034 # used by the launchers that source this file
MAX_SECONDS=3600  # --stagger, --grace, SHARDRUN_SLURM_POLL

# is_count VALUE MAX: true when VALUE is a whole number from 1 to MAX.
is_count() {
  [[ "$1" =~ ^[1-9][0-9]{0,17}$ ]] && (($1 <= $2))
}

# is_seconds VALUE MAX: true when VALUE is a number of seconds (digits, optional decimals) from 0
# to MAX.
is_seconds() {
  [[ "$1" =~ ^([0-9]{1,18})(\.([0-9]{1,9}))?$ ]] || return 1
  local whole=$((10#${BASH_REMATCH[1]})) frac=${BASH_REMATCH[3]}
  ((whole < $2)) || { ((whole == $2)) && [[ "$frac" =~ ^0*$ ]]; }
}

# ---- shared by the launchers (run_parallel.sh, run_slurm.sh) ------------------------------------
# They expect CONFIG (the configuration path) and, once chosen, NUM_SHARDS.

# Builds the release binaries when they are missing or older than the sources; sets BIN, WORKER
# and MERGE_BIN. SHARDRUN_BIN points at prebuilt binaries instead (used as is).
ensure_binaries() {
  BIN=${SHARDRUN_BIN:-$SHARDRUN_ROOT/target/release}
  WORKER=$BIN/shard-worker
  MERGE_BIN=$BIN/merge
  if [ -n "${SHARDRUN_BIN:-}" ]; then
    BIN=$(cd "$BIN" 2>/dev/null && pwd) || die "SHARDRUN_BIN=$SHARDRUN_BIN is not a directory"
    WORKER=$BIN/shard-worker
    MERGE_BIN=$BIN/merge
    [ -x "$WORKER" ] && [ -x "$MERGE_BIN" ] && return 0
    die "SHARDRUN_BIN=$SHARDRUN_BIN does not hold shard-worker and merge"
  fi
  local stale=0 b
  for b in "$WORKER" "$MERGE_BIN"; do
    [ -x "$b" ] || stale=1
  done
  if ((stale == 0)) && [ -n "$(find "$SHARDRUN_ROOT/src" "$SHARDRUN_ROOT/Cargo.toml" -newer "$WORKER" -print -quit 2>/dev/null)" ]; then
    stale=1
  fi
  if ((stale)); then
    need_cmd cargo
    say "building the release binaries (cargo build --release; the first build takes minutes)"
    # On a terminal, cargo's progress bar shows the build is alive; elsewhere only its errors.
    local quiet=--quiet
    [ -t 2 ] && quiet=''
    (cd "$SHARDRUN_ROOT" && cargo build --release ${quiet:+"$quiet"}) || die "the build failed"
  fi
}

# now_into VAR: the UTC time as the log grammar writes it (2026-11-24T06:16:34.734Z), without
# starting a process (a launcher writes a few per shard, and a run may have 100,000 shards).
now_into() {
  # Names of its own: printf -v sets the caller's variable, which a local of the same name hides.
  local _now_t=$EPOCHREALTIME _now_s
  # EPOCHREALTIME's separator is the locale's decimal point.
  TZ=UTC0 printf -v _now_s '%(%Y-%m-%dT%H:%M:%S)T.%s' "${_now_t%[.,]*}" "${_now_t#*[.,]}"
  printf -v "$1" '%sZ' "${_now_s:0:23}"
}

now() {
  local t
  now_into t
  printf '%s\n' "$t"
}

# status EVENT KEY=VALUE...: appends one line to $STATUS (one write, so lines stay whole).
status() {
  local t
  now_into t
  printf '%s %s\n' "$t" "$*" >>"$STATUS"
}

# describe_run STATUS_FILE_NAME: reads the run's name and directories from the worker; sets RUN,
# CONFIG_SHARDS, DATA_DIR, LOGS_DIR and STATUS (logs/<run>/STATUS_FILE_NAME).
# shellcheck disable=SC2034  # RUN and CONFIG_SHARDS are read by the scripts that source this
describe_run() {
  local out line
  out=$("$WORKER" --config "$CONFIG" --describe 2>&1) || DIE_CODE=2 die "${out#shard-worker: error: }"
  while IFS= read -r line; do
    case "$line" in
      run=*) RUN=${line#run=} ;;
      shards=*) CONFIG_SHARDS=${line#shards=} ;;
      data_dir=*) DATA_DIR=${line#data_dir=} ;;
      logs_dir=*) LOGS_DIR=${line#logs_dir=} ;;
    esac
  done <<<"$out"
  STATUS=$LOGS_DIR/$1
}

# preflight N: the workers' own checks for a plan of N shards (configuration, items, program and
# the files it names, writable directories, free locks), once, before any shard starts or any
# launch is recorded: a mistake then costs nothing to fix. Exit 2 with the worker's message.
preflight() {
  local out
  # A damaged status file is reported by the caller, not here.
  [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]] || return 0
  local force=()
  ((${FORCE:-0})) && force=(--force)
  if ! out=$("$WORKER" --config "$CONFIG" --num-shards "$1" --check "${force[@]}" 2>&1); then
    local over=''
    # A refused resume is lifted by --force, which does not go with --only-failed: give the
    # whole command.
    if [[ "$out" == *--force* ]]; then
      over="
or start the run over (its outputs are discarded; cached items are reused): $(me) $(quoted --config "$CONFIG") --num-shards $1 --force"
    fi
    DIE_CODE=2 die "${out#shard-worker: error: }
nothing was started or recorded; fix it and run the same command again$over"
  fi
}

# last_line FILE EVENT: the last line of FILE whose event is EVENT ('' if none).
last_line() {
  [ -f "$1" ] || return 0
  { grep -E "^[^ ]+ $2( |\$)" "$1" 2>/dev/null || true; } | tail -n 1
}

# field LINE KEY: the value of KEY on a log line.
field() { sed -n "s/.* $2=\\([^ ]*\\).*/\\1/p" <<<"$1"; }

# last_field FILE EVENT KEY: the value of KEY on the last EVENT line of FILE ('' if none).
last_field() { field "$(last_line "$1" "$2")" "$3"; }

config_sum() { sha256sum "$CONFIG" | cut -d' ' -f1; }

shard_log() { echo "$LOGS_DIR/shard_${1}_of_${NUM_SHARDS}.log"; }

# file_size FILE: its size in bytes (0 when it does not exist).
file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# worker_reason FILE [OFFSET]: why a worker did not end ok, from what it wrote to FILE (its stderr)
# after byte OFFSET: its last `shard-worker: <status>: <why>` line, whole (else the last line),
# without the prefix. A worker prints one such line when it ends with an error, failed items or a
# halt.
worker_reason() {
  local text line
  [ -f "$1" ] || return 0
  text=$(tail -c +$((${2:-0} + 1)) "$1" 2>/dev/null | tr -d '\r' | grep -v '^[[:space:]]*$' || true)
  line=$(grep '^shard-worker: ' <<<"$text" | tail -n 1 || true)
  [ -n "$line" ] || line=$(tail -n 1 <<<"$text")
  line=${line#shard-worker: }
  case "$line" in
    error:\ * | failed:\ * | halted:\ *) line=${line#*: } ;;
  esac
  printf '%s' "$line"
}

# shardrun_version: the version in Cargo.toml (what the binaries built from here report).
shardrun_version() {
  sed -n 's/^version = "\(.*\)"/\1/p' "$SHARDRUN_ROOT/Cargo.toml" | head -n 1
}

# me: the running script as a user here would type it (for hints).
me() {
  local p
  p=$(rel "$(script_path)")
  [[ "$p" == /* ]] || p=./$p
  printf '%s' "$p"
}

# script_path: the running script's absolute path (recorded with each launch, for other tools'
# hints).
script_path() { printf '%s/%s' "$(cd "$(dirname "$0")" && pwd)" "$(basename "$0")"; }

# logval VALUE: VALUE as the log grammar writes it: bare when it has no space, '"', '=' or control
# character, else a JSON string.
logval() {
  local v=$1
  if [[ -n "$v" && "$v" != *[[:space:]\"=[:cntrl:]]* ]]; then
    printf '%s' "$v"
  else
    v=${v//\\/\\\\}
    v=${v//\"/\\\"}
    printf '"%s"' "$v"
  fi
}

# quoted WORD...: the words as a shell would need them typed (for hints meant to be pasted).
quoted() {
  local out='' w q="'\\''"
  for w in "$@"; do
    [[ "$w" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]] || w="'${w//\'/$q}'"
    out+="${out:+ }$w"
  done
  printf '%s' "$out"
}

# ---- words recorded with a launch (sbatch options, the --notify command) ----------------------
# A launch line keeps them as a shell would need them typed (readable, and pasteable), in one
# field written with logval; record_words and parse_words are each other's inverse for any words
# an argv can hold (spaces, quotes, ';', '$', backslashes, line breaks, UTF-8), without eval.

# record_words WORD...: like `quoted`, but each control character (a line break, a tab) is
# written $'\xHH', so that the words stay on one line of a status file.
record_words() {
  local LC_ALL=C out='' w q="'\\''" i c seg x
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      :
    elif [[ "$w" != *[[:cntrl:]]* ]]; then
      w="'${w//\'/$q}'"
    else
      seg=''
      x=''
      for ((i = 0; i < ${#w}; i++)); do
        c=${w:i:1}
        if [[ "$c" == [[:cntrl:]] ]]; then
          [ -z "$seg" ] || x+="'$seg'"
          seg=''
          printf -v c "\$'\\\\x%02x'" "'$c"
          x+=$c
        elif [ "$c" = "'" ]; then
          [ -z "$seg" ] || x+="'$seg'"
          seg=''
          x+="\\'"
        else
          seg+=$c
        fi
      done
      [ -z "$seg" ] || x+="'$seg'"
      w=$x
    fi
    out+="${out:+ }$w"
  done
  printf '%s' "$out"
}

# parse_words TEXT: the words of TEXT, as record_words (or quoted) writes them, into WORDS; false
# when TEXT is not in that form (a damaged record).
parse_words() {
  local LC_ALL=C s=$1 w='' have=0 c
  WORDS=()
  while [ -n "$s" ]; do
    case "$s" in
      ' '*)
        ((have)) && WORDS+=("$w")
        w=''
        have=0
        s=${s:1}
        continue
        ;;
      "'"*)
        s=${s:1}
        [[ "$s" == *"'"* ]] || return 1
        w+=${s%%"'"*}
        s=${s#*"'"}
        ;;
      "\\'"*)
        w+="'"
        s=${s:2}
        ;;
      "\$'\\x"[0-9a-fA-F][0-9a-fA-F]"'"*)
        printf -v c '%b' "\\x${s:4:2}"
        w+=$c
        s=${s:7}
        ;;
      [\\\$\"]*) return 1 ;;
      *)
        c=${s%%[ \'\\\$\"]*}
        w+=$c
        s=${s:${#c}}
        ;;
    esac
    have=1
  done
  ((have)) && WORDS+=("$w")
  return 0
}

# logval_field LINE KEY: the value of KEY on a status line as logval wrote it (a JSON string
# decoded); false when the line has no such field. Reads the fields in order, so that a value
# holding ' KEY=' (a quoted path, a command's words) is never taken for the field.
logval_field() {
  local s=${1#* } key v c
  [[ "$s" == *' '* ]] || return 1
  s=${s#* }
  while [ -n "$s" ]; do
    [[ "$s" == *=* ]] || return 1
    key=${s%%=*}
    s=${s#*=}
    v=''
    if [[ "$s" == '"'* ]]; then
      s=${s:1}
      while [ -n "$s" ]; do
        case "$s" in
          '"'*) s=${s:1}; break ;;
          \\?*) v+=${s:1:1}; s=${s:2} ;;
          \\) s='' ;;
          *) c=${s%%[\"\\]*}; v+=$c; s=${s:${#c}} ;;
        esac
      done
    else
      v=${s%% *}
      s=${s:${#v}}
    fi
    s=${s# }
    if [ "$key" = "$2" ]; then
      printf '%s' "$v"
      return 0
    fi
  done
  return 1
}

# A path relative to the current directory when it is below it.
rel() { echo "${1#"$PWD"/}"; }

# plural N WORD: "1 item", "2 items", "1,000 items".
plural() { if [ "$1" = 1 ]; then echo "1 $2"; else echo "$(thousands "$1") $2s"; fi; }


# thousands NUMBER: 1234567 as 1,234,567 (in bash: called a few times per shard).
thousands() {
  local n=$1 out=''
  [[ "$n" =~ ^[0-9]+$ ]] || { printf '%s\n' "$n"; return; }
  while ((${#n} > 3)); do
    out=,${n: -3}$out
    n=${n:0:${#n}-3}
  done
  printf '%s\n' "$n$out"
}

# Shard counts of the outputs already in the run directory.
existing_plans() {
  local m
  for m in "$DATA_DIR"/manifest_shard*_of_*.jsonl; do
    [ -e "$m" ] || continue
    m=${m##*_of_}
    echo "${m%.jsonl}"
  done | sort -u
}

# Removes the outputs of shard plans other than NUM_SHARDS (a launcher's --force).
discard_other_plans() {
  local m name n lock=$DATA_DIR/.locks/run.lock
  # Like a worker, hold the run's lock shared while deleting shard outputs: a merge holds it
  # exclusive while it reads them (src/store/lock.rs).
  mkdir -p "$DATA_DIR/.locks"
  exec 7<>"$lock"
  if ! flock -s -n 7; then
    DIE_CODE=2 die "run '$RUN' is being merged by $(cat "$lock" 2>/dev/null || echo 'another process') ($lock); wait for the merge to finish, then launch again"
  fi
  for m in "$DATA_DIR"/manifest_shard*_of_*.jsonl; do
    [ -e "$m" ] || continue
    n=${m##*_of_}
    n=${n%.jsonl}
    [ "$n" = "$NUM_SHARDS" ] && continue
    name=$(head -n 1 "$m" | sed -n 's/.*"name":"\([A-Za-z0-9._-]*\)".*/\1/p')
    [ -n "$name" ] && rm -f "$DATA_DIR/$name.csv"
    rm -f "$m"
  done
  exec 7<&-
}

# ---- shared by the benchmarks (bench*.sh) -------------------------------------------------------

# use_workdir NAME: makes WORKDIR absolute (creating it), or a fresh temporary directory when it is
# empty (OWN_WORKDIR=1: removed by remove_own_workdir); INT/TERM exit with 130/143.
use_workdir() {
  if [ -z "$WORKDIR" ]; then
    WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    OWN_WORKDIR=1
  else
    mkdir -p -- "$WORKDIR"
    WORKDIR=$(cd -- "$WORKDIR" && pwd)
  fi
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Removes WORKDIR when use_workdir created it.
remove_own_workdir() {
  if [ "$OWN_WORKDIR" -eq 1 ] && [ -n "$WORKDIR" ] && [ -d "$WORKDIR" ]; then
    rm -rf -- "$WORKDIR"
  fi
}

# ---- --notify CMD ARG... ';' (both launchers) ---------------------------------------------------
# The command's words follow --notify and end at a ';' word (quoted for the shell, as with
# find -exec), so a command with options of its own never mixes with the launcher's. It runs once
# when the run ends, through `monitor`, which gives it the run's summary as JSON on stdin and
# SHARDRUN_* variables, and kills its process group after SHARDRUN_NOTIFY_TIMEOUT seconds
# (default 60). Its failure is reported and never changes the launcher's exit code.
NOTIFY=()
NOTIFY_WORDS=0
# --no-notify: this launch sends no notice, and forgets the command remembered with the run.
NO_NOTIFY=0
# The time of the launch whose --notify command applies again ('' when it was given now, or none).
NOTIFY_FROM=''
NOTIFY_TIMEOUT=${SHARDRUN_NOTIFY_TIMEOUT:-60}
NOTIFY_FORM="write the command's words after --notify and end them with a ';' word, e.g. --notify notify-send 'run ended' ';'"

# take_notify WORDS...: the words after --notify, up to ';', become NOTIFY; NOTIFY_WORDS is how
# many arguments that took (the ';' included). The caller defines usage_error.
take_notify() {
  ((${#NOTIFY[@]} == 0)) || usage_error "--notify is given twice; give one command"
  local n=0
  while [ $# -gt 0 ] && [ "$1" != ';' ]; do
    NOTIFY+=("$1")
    n=$((n + 1))
    shift
  done
  [ $# -gt 0 ] || usage_error "--notify: no ';' ends the command; $NOTIFY_FORM"
  ((n > 0)) || usage_error "--notify: no command before ';'; $NOTIFY_FORM"
  # shellcheck disable=SC2034 # read by the launchers' option parsers
  NOTIFY_WORDS=$((n + 1))
}

# check_notify_options: --notify and --no-notify are not given together. The caller defines
# usage_error.
check_notify_options() {
  if ((NO_NOTIFY && ${#NOTIFY[@]} > 0)); then
    usage_error "--notify and --no-notify contradict each other: give a new command with --notify, or drop the remembered one with --no-notify"
  fi
}

# use_remembered_notify: without --notify or --no-notify on this command, the --notify command
# recorded with the run's last launch by this launcher (notify_cmd= on its line in $STATUS)
# applies again, as the sbatch options do: a pasted --only-failed or --redo-stale hint tells the
# user of the re-run too. Sets NOTIFY and NOTIFY_FROM (that launch's time).
use_remembered_notify() {
  local line v
  NOTIFY_FROM=''
  ((${#NOTIFY[@]} == 0 && !NO_NOTIFY)) || return 0
  line=$(last_line "$STATUS" launch)
  v=$(logval_field "$line" notify_cmd) || return 0
  [ -n "$v" ] || return 0
  if ! parse_words "$v" || ((${#WORDS[@]} == 0)); then
    DIE_CODE=2 die "the --notify command recorded in $(rel "$STATUS") is damaged ($v); give it again with --notify CMD ... ';', or drop it with --no-notify"
  fi
  NOTIFY=("${WORDS[@]}")
  NOTIFY_FROM=${line%% *}
}

# notify_field: the launch line's notify_cmd= field (the command in force, "" when none).
notify_field() {
  local words=''
  ((${#NOTIFY[@]} == 0)) || words=$(record_words "${NOTIFY[@]}")
  printf 'notify_cmd=%s' "$(logval "$words")"
}

# describe_notify: one line naming the --notify command in force and where it comes from (dry
# runs, --status); nothing when there is none.
describe_notify() {
  ((${#NOTIFY[@]} > 0)) || return 0
  if [ -n "$NOTIFY_FROM" ]; then
    echo "--notify command (remembered from the launch of $NOTIFY_FROM; a new --notify replaces it, --no-notify drops it): $(record_words "${NOTIFY[@]}")"
  else
    echo "--notify command (recorded with the run; later launches reuse it): $(record_words "${NOTIFY[@]}")"
  fi
}

# check_notify_timeout: SHARDRUN_NOTIFY_TIMEOUT is a number of seconds above 0.
check_notify_timeout() {
  if ! is_seconds "$NOTIFY_TIMEOUT" "$MAX_SECONDS" || [[ "$NOTIFY_TIMEOUT" =~ ^0*(\.0*)?$ ]]; then
    usage_error "SHARDRUN_NOTIFY_TIMEOUT must be a number of seconds above 0 and at most $MAX_SECONDS, not '$NOTIFY_TIMEOUT'"
  fi
}

# run_notify CODE: runs the --notify command, if any, on the run as it ended with exit code CODE.
# Never fails and returns within about SHARDRUN_NOTIFY_TIMEOUT + 2 seconds.
run_notify() {
  ((${#NOTIFY[@]} > 0)) || return 0
  if [ ! -x "$BIN/monitor" ]; then
    say "warning: no $BIN/monitor to run the --notify command with; the run's exit code is unchanged"
    return 0
  fi
  "$BIN/monitor" --root "$PWD" --run "$RUN" --num-shards "$NUM_SHARDS" --notify-exit-code "$1" \
    --notify-timeout "$NOTIFY_TIMEOUT" --notify "${NOTIFY[@]}" ';' </dev/null ||
    say "warning: the --notify command could not be run (monitor exited $?); the run's exit code is unchanged"
}

# end_run CODE: the run has ended: notify, then exit with CODE.
end_run() {
  run_notify "$1"
  exit "$1"
}
