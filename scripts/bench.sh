#!/usr/bin/env bash
# Benchmarks of the shard worker against standard tools, each measured with one hyperfine call
# over the compared commands that reports medians, ratios and whether the target is met:
#
#   dispatch   2,000 items of a `command` generator running `true`, 2 shards (two shard-worker
#              processes at once) vs `seq 2000 | xargs -P2 -n1 true` and `seq 2000 | parallel -j2
#              true`. Targets: <= 0.8x xargs, <= 0.2x GNU parallel.
#   embedded   the `echo` generator, 1,000,000 items, one shard (durable group commits) vs awk
#              printing the same CSV to a file. Items/s; target <= 3x awk.
#   scaling    the `vitals` generator sized so that one shard takes ~10 s: 1 shard vs 2 shards.
#              Target: speedup >= 1.8x on 2 cores.
#   memory     peak RSS of a worker on 1,000,000 echo items, and of merge on 2 GiB (runs
#              scripts/bench_merge.sh --case a --reps 1). Target: < 64 MiB each.
#   merge, monitor   run scripts/bench_merge.sh / scripts/bench_monitor.sh (only with --only),
#              passing them the arguments after `--`.
#
#   ./scripts/bench.sh [--only NAME]... [--reps N] [--scaling-items N] [--wait-idle SECONDS]
#                      [--quick] [--workdir DIR] [-- ARGS for bench_merge.sh /
#                      bench_monitor.sh]
#
#   --only NAME          run only this benchmark (repeatable); default: dispatch, embedded,
#                        scaling, memory
#   --reps N             timed repetitions of each command (default 5)
#   --scaling-items N    vitals items for scaling (default: calibrated to ~10 s for one shard)
#   --wait-idle SECONDS  before each benchmark's timed runs, wait until other processes use under 10 % of
#                        the CPUs (for at most SECONDS, then go on regardless)
#   --quick              small sizes, a smoke test of the script (targets do not apply)
#   --workdir DIR        where runs and outputs go (created, kept at exit); default: a fresh
#                        directory under ${TMPDIR:-/tmp}, removed at exit
#
# Times with hyperfine (and reads its JSON with jq); installs hyperfine, GNU parallel and GNU time
# with apt-get when run as root and they are missing, and exits 2 when hyperfine or jq is
# missing. Exits 1 when a command fails or a correctness check fails; a missed target is
# reported, not fatal. Each benchmark reports the share of all CPUs that other processes used
# during its timed runs: timings on a busy machine are not comparable with those on an idle one.
# Results and how to read them: docs/BENCHMARKS.md.
set -Eeuo pipefail
shopt -s inherit_errexit
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

ALL_BENCHES=(dispatch embedded scaling memory)
ONLY=()
PASS_ARGS=()
REPS=5
SCALING_ITEMS=
WAIT_IDLE=0
IDLE_MAX_PCT=10
QUICK=0
WORKDIR=
OWN_WORKDIR=0
HAVE_PARALLEL=0
BIN_DIR="${CARGO_TARGET_DIR:-$SHARDRUN_ROOT/target}/release"
WORKER="$BIN_DIR/shard-worker"
RSS_LIMIT_MIB=64

# Sizes (overridden by --quick).
DISPATCH_ITEMS=2000
EMBED_ITEMS=1000000
SCALING_SECONDS=10

cleanup() {
  remove_own_workdir
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      --only)
        [ $# -ge 2 ] || usage 2
        ONLY+=("$2")
        shift 2
        ;;
      --reps)
        [ $# -ge 2 ] || usage 2
        REPS=$2
        shift 2
        ;;
      --scaling-items)
        [ $# -ge 2 ] || usage 2
        SCALING_ITEMS=$2
        shift 2
        ;;
      --wait-idle)
        [ $# -ge 2 ] || usage 2
        WAIT_IDLE=$2
        shift 2
        ;;
      --quick)
        QUICK=1
        shift
        ;;
      --workdir)
        [ $# -ge 2 ] || usage 2
        WORKDIR=$2
        shift 2
        ;;
      --)
        shift
        PASS_ARGS=("$@")
        break
        ;;
      *)
        printf 'unknown argument: %s\n\n' "$1" >&2
        usage 2
        ;;
    esac
  done
  DIE_CODE=2
  [[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer, not '$REPS'"
  [ -z "$SCALING_ITEMS" ] || [[ "$SCALING_ITEMS" =~ ^[1-9][0-9]*$ ]] ||
    die "--scaling-items must be a positive integer, not '$SCALING_ITEMS'"
  [[ "$WAIT_IDLE" =~ ^[0-9]+$ ]] || die "--wait-idle must be a whole number of seconds, not '$WAIT_IDLE'"
  local b
  for b in "${ONLY[@]}"; do
    case "$b" in
      dispatch | embedded | scaling | memory | merge | monitor) ;;
      *) die "--only: unknown benchmark '$b' (dispatch, embedded, scaling, memory, merge, monitor)" ;;
    esac
  done
  [ ${#ONLY[@]} -gt 0 ] || ONLY=("${ALL_BENCHES[@]}")
  DIE_CODE=1
  if [ "$QUICK" -eq 1 ]; then
    DISPATCH_ITEMS=200
    EMBED_ITEMS=50000
    SCALING_SECONDS=1
  fi
}

selected() {
  local b
  for b in "${ONLY[@]}"; do [ "$b" != "$1" ] || return 0; done
  return 1
}

ensure_tools() {
  local t
  for t in awk seq xargs sort sync stat cmp df; do need_cmd "$t"; done
  if have_cmd cargo; then
    say "building release binaries (cargo build --release)"
    (cd "$SHARDRUN_ROOT" && cargo build --release --quiet --bin shard-worker --bin merge)
  fi
  [ -x "$WORKER" ] || die "no $WORKER (and no cargo to build it)"
  need_hyperfine
  if selected dispatch; then
    is_gnu_parallel || { say "installing GNU parallel" && apt_install parallel; } || true
    if is_gnu_parallel; then
      HAVE_PARALLEL=1
    else
      say "GNU parallel is not available; the dispatch benchmark compares with xargs only"
    fi
  fi
  if selected memory && [ ! -x /usr/bin/time ]; then
    say "installing time (for /usr/bin/time -v)"
    apt_install time || die "the memory benchmark needs GNU time (/usr/bin/time)"
  fi
}

is_gnu_parallel() { have_cmd parallel && parallel --version 2>/dev/null | grep -q 'GNU parallel'; }

# ---- measuring ---------------------------------------------------------------------------------

# CPU_MARK: "busy total ours" in clock ticks: all CPUs' busy and total time (/proc/stat), and
# this script's own CPU time including every child it (transitively) waited for.
cpu_mark() {
  local s f
  s=$(</proc/$$/stat)
  s=${s##*) }
  read -ra f <<<"$s"
  awk -v ours="$((f[11] + f[12] + f[13] + f[14]))" '$1 == "cpu" {
      total = 0; for (i = 2; i <= 9; i++) total += $i
      print total - $5 - $6, total, ours; exit }' /proc/stat
}

# others_share MARK_BEFORE MARK_AFTER: the share of all CPUs (%) that other processes used.
others_share() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    t = y[2] - x[2]; o = (y[1] - x[1]) - (y[3] - x[3])
    if (o < 0) o = 0
    printf "%.0f", (t > 0 ? 100 * o / t : 0) }'
}

# wait_idle: waits (up to WAIT_IDLE seconds) until other processes use under IDLE_MAX_PCT % of
# the CPUs over one second.
wait_idle() {
  local start=$SECONDS a b share
  while :; do
    a=$(cpu_mark)
    sleep 1
    b=$(cpu_mark)
    share=$(others_share "$a" "$b")
    [ "$share" -ge "$IDLE_MAX_PCT" ] || return 0
    if ((SECONDS - start >= WAIT_IDLE)); then
      say "other processes still use $share % of the CPUs after ${WAIT_IDLE}s; going on"
      return 0
    fi
  done
}

# measure PREP NAME1 CMD1 [NAME2 CMD2 ...]: one hyperfine call that runs each command REPS times,
# each run after PREP (`--shell bash`, so the shell's start-up is subtracted), and writes its
# statistics to RESULTS (JSON). LOAD: the share of the CPUs (%) other processes used meanwhile.
RESULTS=
LOAD=
measure() {
  local prep=$1
  shift
  local args=() m0 m1
  while [ $# -gt 0 ]; do
    args+=(-n "$1" "$2")
    shift 2
  done
  RESULTS="$WORKDIR/hyperfine.json"
  [ "$WAIT_IDLE" -eq 0 ] || wait_idle
  m0=$(cpu_mark)
  hyperfine --runs "$REPS" --style none --shell bash --prepare "$prep" --export-json "$RESULTS" \
    "${args[@]}" >/dev/null
  m1=$(cpu_mark)
  LOAD=$(others_share "$m0" "$m1")
}

# result NAME FILTER: jq FILTER applied to NAME's entry in RESULTS.
result() { jq -r --arg n "$1" ".results[] | select(.command == \$n) | $2" "$RESULTS"; }

# med NAME: the median wall time of NAME.
med() { result "$1" .median; }

# cpu NAME: the mean CPU time of NAME (user + system, with children; hyperfine gives no median).
cpu() { printf '%.3f' "$(result "$1" '.user + .system')"; }

# runs NAME: the wall times of NAME in order, 3 decimals.
runs() { result "$1" '.times[]' | xargs printf '%.3f ' | sed 's/ $//'; }

# load_line: the report line on other processes' CPU use during the measurement.
load_line() { printf 'other processes used %s %% of the CPUs during the runs' "$LOAD"; }

# head_row TITLE: a results table's header; row NAME EXTRA: one command's line (median wall time,
# mean CPU time, a per-benchmark figure, then every wall time in order).
head_row() { printf '%-13s %9s %9s %11s   %s' command 'wall s' 'CPU s' "$1" 'wall times (s, in order)'; }
row() { printf '%-13s %9.3f %9s %11s   %s' "$1" "$(med "$1")" "$(cpu "$1")" "$2" "$(runs "$1")"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
at_most() { awk -v r="$1" -v t="$2" 'BEGIN { print (r <= t ? "yes" : "NO") }'; }
at_least() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "yes" : "NO") }'; }
q() { printf '%q ' "$@" | sed 's/ $//'; }

# wipe DIR...: the prepare step: removes the runs' outputs, then flushes the filesystem so that
# no command pays for the previous one's deletions or dirty pages.
wipe_cmd() { printf 'rm -rf %s && sync -f %s' "$(q "$@")" "$(q "$WORKDIR")"; }

# ---- benchmarks --------------------------------------------------------------------------------

REPORT=()
report() { REPORT+=("$*"); }

bench_dispatch() {
  local dir="$WORKDIR/dispatch" n=$DISPATCH_ITEMS
  mkdir -p "$dir/conf"
  cat >"$dir/conf/dispatch.yaml" <<EOF
run: dispatch
seed: 0
items: {range: {start: 0, end: $n}}
generator: {command: ["true"], retries: 0}
output: {columns: [x]}
cache: {enabled: false}
EOF
  local w conf="$dir/conf/dispatch.yaml"
  w="$(q "$WORKER") --root $(q "$dir") --config $(q "$conf") --num-shards 2 --quiet --force"
  local worker_cmd="$w --shard-index 0 & p=\$!; $w --shard-index 1; r=\$?; wait \$p && exit \$r"
  local xargs_cmd="seq $n | xargs -P2 -n1 true"
  local par_cmd="seq $n | parallel -j2 true"
  local prep
  prep=$(wipe_cmd "$dir/data" "$dir/logs")

  say "dispatch: $n items of \`true\`, 2 shards; checking one run of each command"
  bash -c "$prep"
  bash -c "$worker_cmd" >/dev/null
  local i recs
  for i in 0 1; do
    recs=$(($(wc -l <"$dir/data/dispatch/manifest_shard${i}_of_2.jsonl") - 1))
    [ "$recs" -eq $((n / 2)) ] || die "dispatch: shard $i committed $recs items, not $((n / 2))"
    ! grep -q '"status":"failed"' "$dir/data/dispatch/manifest_shard${i}_of_2.jsonl" ||
      die "dispatch: shard $i has failed items"
  done
  bash -c "$xargs_cmd" >/dev/null
  local set=(worker "$worker_cmd" xargs "$xargs_cmd")
  if [ "$HAVE_PARALLEL" -eq 1 ]; then
    bash -c "$par_cmd" >/dev/null
    set+=(parallel "$par_cmd")
  fi

  measure "$prep" "${set[@]}"
  local mw mx mp=n/a rx rp=n/a
  mw=$(med worker)
  mx=$(med xargs)
  rx=$(ratio "$mw" "$mx")
  report "## dispatch: $n items of a \`true\` command, 2 shards (two shard-worker processes)"
  report "$(load_line)"
  per_item() { awk -v t="$1" -v n="$n" 'BEGIN { printf "%.3f", 1000 * t / n }'; }
  report "$(head_row 'ms per item')"
  report "$(row worker "$(per_item "$mw")")"
  report "$(row xargs "$(per_item "$mx")")"
  if [ "$HAVE_PARALLEL" -eq 1 ]; then
    mp=$(med parallel)
    rp=$(ratio "$mw" "$mp")
    report "$(row parallel "$(per_item "$mp")")"
  fi
  report "worker / xargs    = ${rx}x (target <= 0.8x): $(at_most "$rx" 0.8)"
  if [ "$HAVE_PARALLEL" -eq 1 ]; then
    report "worker / parallel = ${rp}x (target <= 0.2x): $(at_most "$rp" 0.2)"
  else
    report "worker / parallel = n/a (GNU parallel missing)"
  fi
  report ""
}

# The awk program that prints the echo generator's CSV (key,index,seed,row,pad) for N items; the
# seed column holds 16-digit numbers like the echo generator's 53-bit seeds.
awk_echo() {
  printf '%s' "awk -v n=$1 'BEGIN { print \"key,index,seed,row,pad\"; for (i = 0; i < n; i++) printf \"%d,%d,%.0f,0,\\n\", i, i, 1000000000000000 + (i * 2654435761) % 8000000000000000 }'"
}

echo_conf() {
  local file=$1 run=$2 n=$3 cache=$4
  cat >"$file" <<EOF
run: $run
seed: 0
items: {range: {start: 0, end: $n}}
generator: {builtin: echo, jobs: 1}
cache: {enabled: $cache, dir: data/cache}
EOF
}

bench_embedded() {
  local dir="$WORKDIR/embedded" n=$EMBED_ITEMS
  mkdir -p "$dir/conf" "$dir/cached/conf"
  echo_conf "$dir/conf/embedded.yaml" embedded "$n" false
  echo_conf "$dir/cached/conf/embedded.yaml" embedded "$n" true
  local worker_cmd cached_cmd awk_cmd sync_cmd prep
  worker_cmd="$(q "$WORKER") --root $(q "$dir") --config $(q "$dir/conf/embedded.yaml") --quiet --force"
  cached_cmd="$(q "$WORKER") --root $(q "$dir/cached") --config $(q "$dir/cached/conf/embedded.yaml") --quiet --force"
  awk_cmd="$(awk_echo "$n") >$(q "$dir/awk.csv")"
  sync_cmd="$awk_cmd && sync $(q "$dir/awk.csv")"
  prep=$(wipe_cmd "$dir/data" "$dir/logs" "$dir/cached/data" "$dir/cached/logs" "$dir/awk.csv")

  say "embedded: echo generator, $n items, one shard; checking one run of each command"
  bash -c "$prep"
  bash -c "$worker_cmd" >/dev/null
  bash -c "$awk_cmd"
  local data="$dir/data/embedded/process-0.csv" lines wb ab
  lines=$(wc -l <"$data")
  [ "$lines" -eq $((n + 1)) ] || die "embedded: the worker wrote $lines lines, not $((n + 1))"
  [ "$(wc -l <"$dir/awk.csv")" -eq $((n + 1)) ] || die "embedded: awk did not write $((n + 1)) lines"
  wb=$(stat -c %s "$data")
  ab=$(stat -c %s "$dir/awk.csv")
  awk -v a="$wb" -v b="$ab" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= a / 50) }' ||
    die "embedded: awk's CSV ($ab bytes) is not the size of the worker's ($wb bytes)"
  local mf
  mf=$(stat -c %s "$dir/data/embedded/manifest_shard0_of_1.jsonl")

  measure "$prep" worker "$worker_cmd" awk "$awk_cmd" awk+sync "$sync_cmd" worker+cache "$cached_cmd"
  local mw ma ms mc r rs
  mw=$(med worker)
  ma=$(med awk)
  ms=$(med awk+sync)
  mc=$(med worker+cache)
  r=$(ratio "$mw" "$ma")
  rs=$(ratio "$mw" "$ms")
  ips() { awk -v t="$1" -v n="$n" 'BEGIN { printf "%.0f", n / t }'; }
  report "## embedded: echo generator, $n items, one shard (data $wb B, manifest $mf B; awk CSV $ab B)"
  report "$(load_line)"
  report "$(head_row items/s)"
  report "$(row worker "$(ips "$mw")")"
  report "$(row awk "$(ips "$ma")")"
  report "$(row awk+sync "$(ips "$ms")")"
  report "$(row worker+cache "$(ips "$mc")")"
  report "worker / awk      = ${r}x (target <= 3x): $(at_most "$r" 3)"
  report "worker / awk+sync = ${rs}x"
  report ""
}

vitals_conf() {
  cat >"$1" <<EOF
run: scaling
seed: 42
sharding: contiguous
items: {range: {start: 0, end: $2}}
generator: {builtin: vitals, jobs: 1}
cache: {enabled: false}
EOF
}

# calibrate DIR: vitals items for ~SCALING_SECONDS with one shard (doubling a trial run until it
# takes at least 1 s, then scaling linearly; rounded to 100 items).
calibrate() {
  local dir=$1/calibrate n=1000 t0 t
  mkdir -p "$dir/conf"
  while :; do
    vitals_conf "$dir/conf/c.yaml" "$n"
    rm -rf "$dir/data" "$dir/logs"
    t0=$EPOCHREALTIME
    "$WORKER" --root "$dir" --config "$dir/conf/c.yaml" --quiet --force >/dev/null
    t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
    if awk -v t="$t" -v s="$SCALING_SECONDS" 'BEGIN { exit !(t >= 1 || t >= s) }' || [ "$n" -ge 100000000 ]; then
      break
    fi
    n=$((n * 2))
  done
  rm -rf "$dir"
  say "calibration: $n vitals items took $(printf '%.2f' "$t") s"
  awk -v n="$n" -v t="$t" -v s="$SCALING_SECONDS" 'BEGIN {
    v = int(n * s / t / 100 + 0.5) * 100; print (v < 100 ? 100 : v) }'
}

# A purely CPU-bound reference for the scaling benchmark: an awk loop of N iterations.
cpu_loop() { printf "awk -v n=%s 'BEGIN { for (i = 0; i < n; i++) s += i * i; exit s < 0 }'" "$1"; }

# calibrate_loop SECONDS: iterations of cpu_loop that take about SECONDS (an even number).
calibrate_loop() {
  local n=1000000 t0 t
  while :; do
    t0=$EPOCHREALTIME
    bash -c "$(cpu_loop "$n")"
    t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
    awk -v t="$t" 'BEGIN { exit !(t >= 0.5) }' && break
    n=$((n * 2))
  done
  awk -v n="$n" -v t="$t" -v s="$1" 'BEGIN { printf "%.0f\n", int(n * s / t / 2 + 0.5) * 2 }'
}

bench_scaling() {
  local dir="$WORKDIR/scaling" n
  mkdir -p "$dir/one/conf" "$dir/two/conf"
  if [ -n "$SCALING_ITEMS" ]; then
    n=$SCALING_ITEMS
  else
    n=$(calibrate "$dir")
  fi
  vitals_conf "$dir/one/conf/scaling.yaml" "$n"
  vitals_conf "$dir/two/conf/scaling.yaml" "$n"
  local one two w prep
  one="$(q "$WORKER") --root $(q "$dir/one") --config $(q "$dir/one/conf/scaling.yaml") --quiet --force"
  w="$(q "$WORKER") --root $(q "$dir/two") --config $(q "$dir/two/conf/scaling.yaml") --num-shards 2 --quiet --force"
  two="$w --shard-index 0 & p=\$!; $w --shard-index 1; r=\$?; wait \$p && exit \$r"
  prep=$(wipe_cmd "$dir/one/data" "$dir/one/logs" "$dir/two/data" "$dir/two/logs")

  say "scaling: vitals generator, $n items; checking that 1 and 2 shards write the same rows"
  bash -c "$prep"
  bash -c "$one" >/dev/null
  bash -c "$two" >/dev/null
  local d1="$dir/one/data/scaling" d2="$dir/two/data/scaling"
  cmp -s "$d1/process-0.csv" <(cat "$d2/process-0.csv" && tail -n +2 "$d2/process-1.csv") ||
    die "scaling: the rows of 2 shards differ from those of 1 shard"
  local rows bytes
  rows=$(($(wc -l <"$d1/process-0.csv") - 1))
  bytes=$(stat -c %s "$d1/process-0.csv")

  # The reference: the same awk loop as one process, and split between two processes.
  local loops loop1 loop2
  loops=$(calibrate_loop "$(awk -v s="$SCALING_SECONDS" 'BEGIN { print s * 0.3 }')")
  loop1=$(cpu_loop "$loops")
  loop2="$(cpu_loop $((loops / 2))) & p=\$!; $(cpu_loop $((loops / 2))); r=\$?; wait \$p && exit \$r"

  measure "$prep" 1-shard "$one" 2-shards "$two" awk-1 "$loop1" awk-2 "$loop2"
  local m1s m2s s sr
  m1s=$(med 1-shard)
  m2s=$(med 2-shards)
  s=$(ratio "$m1s" "$m2s")
  sr=$(ratio "$(med awk-1)" "$(med awk-2)")
  ips() { awk -v t="$1" -v n="$n" 'BEGIN { printf "%.0f", n / t }'; }
  report "## scaling: vitals generator, $n items ($rows rows, $bytes B), on $(nproc) CPUs"
  report "$(load_line)"
  report "$(head_row items/s)"
  report "$(row 1-shard "$(ips "$m1s")")"
  report "$(row 2-shards "$(ips "$m2s")")"
  report "$(row awk-1 '')"
  report "$(row awk-2 '')"
  report "speedup 1 shard / 2 shards = ${s}x (target >= 1.8x): $(at_least "$s" 1.8)"
  report "reference: a CPU-bound awk loop ($loops iterations) in 1 process / split over 2 processes = ${sr}x"
  report ""
}

# peak_rss_mib FILE: the maximum resident set size from a `/usr/bin/time -v` report, in MiB.
peak_rss_mib() { awk -F: '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$1"; }

bench_memory() {
  local dir="$WORKDIR/memory" n=$EMBED_ITEMS cache rss=() tv
  for cache in false true; do
    mkdir -p "$dir/$cache/conf"
    echo_conf "$dir/$cache/conf/memory.yaml" memory "$n" "$cache"
    tv="$dir/time-v-$cache.txt"
    say "memory: worker on $n echo items (cache $cache) under /usr/bin/time -v"
    /usr/bin/time -v -o "$tv" "$WORKER" --root "$dir/$cache" \
      --config "$dir/$cache/conf/memory.yaml" --quiet --force
    rss+=("$(peak_rss_mib "$tv")")
    rm -rf -- "${dir:?}/$cache"
  done
  local merge_args=(--case a --reps 1 --workdir "$dir/merge")
  [ "$QUICK" -eq 0 ] || merge_args+=(--scale 0.02)
  say "memory: merge of 8 shards x ~256 MiB: scripts/bench_merge.sh ${merge_args[*]}"
  local out="$dir/bench_merge.out"
  bash "$SHARDRUN_ROOT/scripts/bench_merge.sh" "${merge_args[@]}" | tee "$out" >&2
  rm -rf -- "${dir:?}/merge"
  local merge_rss merge_mib
  merge_rss=$(awk '$1 == "a" && NF >= 10 { print $9 }' "$out")
  merge_mib=$(awk '$1 == "a" && NF >= 10 { print $3 }' "$out")
  [ -n "$merge_rss" ] || die "memory: no result line for case a in the output of bench_merge.sh"
  lt() { awk -v r="$1" -v l="$RSS_LIMIT_MIB" 'BEGIN { print (r < l ? "yes" : "NO") }'; }
  report "## memory: peak resident set (GNU time, maximum resident set size)"
  report "$(printf '%-44s %9s   %s' process 'peak MiB' "< $RSS_LIMIT_MIB MiB")"
  report "$(printf '%-44s %9s   %s' "worker, $n echo items, cache off" "${rss[0]}" "$(lt "${rss[0]}")")"
  report "$(printf '%-44s %9s   %s' "worker, $n echo items, cache on" "${rss[1]}" "$(lt "${rss[1]}")")"
  report "$(printf '%-44s %9s   %s' "merge, 8 shards, $merge_mib MiB output" "$merge_rss" "$(lt "$merge_rss")")"
  report ""
}

machine() {
  local fs cpu timer par=n/a note=''
  timer=$(hyperfine --version)
  [ "$HAVE_PARALLEL" -eq 0 ] || par=$(parallel --version | awk 'NR == 1 { print $3 }')
  [ "$QUICK" -eq 0 ] || note='; --quick: small sizes, targets do not apply'
  fs=$(df -PT -- "$WORKDIR" | awk 'NR == 2 { print $2 " on " $1 }')
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  printf 'shardrun benchmarks, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'machine: %s CPUs (%s), %s MiB RAM, kernel %s, %s (%s)\n' "$(nproc)" "${cpu:-?}" \
    "$(awk '/MemTotal/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)" "$(uname -r)" "$fs" "$WORKDIR"
  printf 'tools: %s; %s; %s; xargs %s; awk: %s; GNU parallel %s\n' \
    "$(rustc --version 2>/dev/null || echo 'rustc ?')" \
    "$timer" \
    "$("$WORKER" --version)" "$(xargs --version | awk 'NR == 1 { print $NF }')" \
    "$(readlink -f "$(command -v awk)")" \
    "$par"
  printf '%s runs per command (one hyperfine call per benchmark); wall times are medians, CPU times means%s\n\n' \
    "$REPS" "$note"
}

main() {
  parse_args "$@"
  if selected merge || selected monitor; then
    [ ${#ONLY[@]} -eq 1 ] || DIE_CODE=2 die "--only merge and --only monitor run alone"
    exec bash "$SHARDRUN_ROOT/scripts/bench_${ONLY[0]}.sh" "${PASS_ARGS[@]}"
  fi
  [ ${#PASS_ARGS[@]} -eq 0 ] || DIE_CODE=2 die "arguments after -- are for --only merge or --only monitor"
  use_workdir bench
  trap cleanup EXIT
  ensure_tools
  local b
  for b in "${ALL_BENCHES[@]}"; do
    if selected "$b"; then "bench_$b"; fi
  done
  machine
  printf '%s\n' "${REPORT[@]}"
}

main "$@"
