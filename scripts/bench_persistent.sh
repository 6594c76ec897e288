#!/usr/bin/env bash
# Persistent-generator benchmark, with examples/slow_import_gen.py (0.5 s import, trivial work):
#   (1) persistent mode: shard-worker x 2 shards in parallel, jobs 1, no cache, 2,000 items;
#   (2) the plain loop: one Python process imports the same module and writes the same rows;
#   (3) per-item mode on a subset, extrapolated to the full item count;
#   (4) protocol overhead: persistent generators that answer at once, 20,000 items, 1 shard.
#
#   ./scripts/bench_persistent.sh [--reps N] [--items N] [--per-item-items N] [--per-item-reps N]
#                                 [--protocol-items N] [--case C] [--python PATH]
#                                 [--workdir DIR] [--no-pin]
#
#   --reps N              timed runs of each fast command, one hyperfine call per case (default 5)
#   --items N             items of (1) and (2) (default 2000)
#   --per-item-items N    items of (3) (default 100)
#   --per-item-reps N     timed runs of (3), ~30 s each at the default size (default 3)
#   --protocol-items N    items of (4) (default 20000)
#   --case C              main (1 and 2), per-item, protocol or all (default all)
#   --python PATH         interpreter for every case (default: python3 resolved to its real
#                         executable, so a pyenv shim's start-up is not timed)
#   --workdir DIR         work directory (created if missing, kept at exit); default: a fresh
#                         directory under ${TMPDIR:-/tmp}, removed at exit
#   --no-pin              in (4), skip the runs with worker and generator pinned to one CPU
#
# Reports medians, persistent/plain against the 1.3x target and the protocol overhead per item
# ((worker wall - the generator's own wall, fed the same request lines from a file) / items)
# against the 50 us target. Exits 1 when a dataset differs from the plain loop's rows, 2 when
# hyperfine or jq is missing.
# Results: docs/BENCHMARKS.md.
set -Eeuo pipefail
shopt -s inherit_errexit
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

RATIO_TARGET=1.3
OVERHEAD_TARGET_US=50
SHARDS=2
SEED=42

REPS=5
ITEMS=2000
PER_ITEM_ITEMS=100
PER_ITEM_REPS=3
PROTOCOL_ITEMS=20000
CASES=all
PY=
WORKDIR=
OWN_WORKDIR=0
PIN=1
BIN_DIR="${CARGO_TARGET_DIR:-$SHARDRUN_ROOT/target}/release"
WORKER="$BIN_DIR/shard-worker"
MERGE="$BIN_DIR/merge"
GEN="$SHARDRUN_ROOT/examples/slow_import_gen.py"
AWK=
AWK_FLAGS=
REPORT=()

cleanup() {
  remove_own_workdir
}

positive() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || DIE_CODE=2 die "$1 must be a positive integer, not '$2'"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      --reps | --items | --per-item-items | --per-item-reps | --protocol-items | --case | \
        --python | --workdir)
        [ $# -ge 2 ] || DIE_CODE=2 die "$1 needs a value (see --help)"
        case "$1" in
          --reps) REPS=$2 ;;
          --items) ITEMS=$2 ;;
          --per-item-items) PER_ITEM_ITEMS=$2 ;;
          --per-item-reps) PER_ITEM_REPS=$2 ;;
          --protocol-items) PROTOCOL_ITEMS=$2 ;;
          --case) CASES=$2 ;;
          --python) PY=$2 ;;
          --workdir) WORKDIR=$2 ;;
        esac
        shift 2
        ;;
      --no-pin)
        PIN=0
        shift
        ;;
      *) DIE_CODE=2 die "unknown argument: $1 (see --help)" ;;
    esac
  done
  positive --reps "$REPS"
  positive --items "$ITEMS"
  positive --per-item-items "$PER_ITEM_ITEMS"
  positive --per-item-reps "$PER_ITEM_REPS"
  positive --protocol-items "$PROTOCOL_ITEMS"
  case "$CASES" in
    main | per-item | protocol | all) ;;
    *) DIE_CODE=2 die "--case must be main, per-item, protocol or all, not '$CASES'" ;;
  esac
  if want per-item && [ "$PER_ITEM_ITEMS" -gt "$ITEMS" ]; then
    DIE_CODE=2 die "--per-item-items must not exceed --items"
  fi
}

want() { [ "$CASES" = all ] || [ "$CASES" = "$1" ]; }

ensure_tools() {
  need_cmd awk
  need_cmd cmp
  if [ -z "$PY" ]; then
    need_cmd python3
    PY=$(python3 -c 'import sys; print(sys.executable)')
  fi
  [ -x "$PY" ] || die "no Python interpreter at $PY"
  if [ ! -x "$WORKER" ] || [ ! -x "$MERGE" ]; then
    need_cmd cargo
    say "building release binaries (cargo build --release)"
    (cd "$SHARDRUN_ROOT" && cargo build --release --quiet --bin shard-worker --bin merge)
  fi
  if [ ! -x "$WORKER" ] || [ ! -x "$MERGE" ]; then
    die "no binaries in $BIN_DIR after the build"
  fi
  need_hyperfine
  # mawk waits for a full input buffer unless told it is interactive (line-buffered stdin).
  AWK=$(command -v mawk || command -v gawk || command -v awk)
  AWK_FLAGS=
  case "$(basename "$AWK")" in
    mawk) AWK_FLAGS="-Winteractive" ;;
  esac
}

# python_env: the same interpreter settings for every case. Bytecode is cached in the work
# directory (never next to the sources), and stdout buffering is Python's default.
python_env() {
  unset PYTHONDONTWRITEBYTECODE PYTHONUNBUFFERED PYTHONPATH
  export PYTHONPYCACHEPREFIX="$WORKDIR/pycache"
}

# write_files: configurations, the plain loop, the protocol generators, the shard runner.
write_files() {
  local w=$WORKDIR
  mkdir -p "$w/conf"
  # (1) persistent mode, as conf/persistent-example.yaml but jobs 1 and no cache.
  cat >"$w/conf/persistent.yaml" <<EOF
run: persistent
seed: $SEED
sharding: contiguous
items: {range: {start: 0, end: $ITEMS}}
generator:
  command: ['$PY', '$GEN', --serve]
  mode: persistent
  jobs: 1
output: {columns: [key, seed, value]}
cache: {enabled: false}
EOF
  # (3) per-item mode: one process per item.
  cat >"$w/conf/per-item.yaml" <<EOF
run: per-item
seed: $SEED
sharding: contiguous
items: {range: {start: 0, end: $PER_ITEM_ITEMS}}
generator:
  command: ['$PY', '$GEN', --item, '{key}', --seed, '{seed}']
  jobs: 1
output: {columns: [key, seed, value]}
cache: {enabled: false}
EOF
  # (4) generators that answer at once: one row ("0" or the key), then the marker line.
  local name cmd flags=
  [ -z "$AWK_FLAGS" ] || flags=" '$AWK_FLAGS',"
  for name in serve minimal awk capture; do
    case "$name" in
      serve | minimal | capture) cmd="['$PY', '$w/proto_$name.py']" ;;
      # {{ and }}: literal braces in a command template.
      awk) cmd="['$AWK',$flags '{{ print \"0\"; print \"\\036\"; fflush() }}']" ;;
    esac
    cat >"$w/conf/proto-$name.yaml" <<EOF
run: proto-$name
seed: $SEED
items: {range: {start: 0, end: $PROTOCOL_ITEMS}}
generator:
  command: $cmd
  mode: persistent
  jobs: 1
output: {columns: [v]}
cache: {enabled: false}
EOF
  done
  # The floor: the echo builtin, no generator process at all.
  cat >"$w/conf/proto-echo.yaml" <<EOF
run: proto-echo
seed: $SEED
items: {range: {start: 0, end: $PROTOCOL_ITEMS}}
generator: {builtin: echo, jobs: 1}
cache: {enabled: false}
EOF

  cat >"$w/plain_loop.py" <<'EOF'
"""The plain loop: import the generator's module (its 0.5 s import included), then write the rows
of items 0 .. N-1 to one CSV file, with the per-item seed computed as shardrun computes it."""
import csv
import importlib.util
import sys

path, n, out_path, gseed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
spec = importlib.util.spec_from_file_location("slow_import_gen", path)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

M = (1 << 64) - 1


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M
    return h


g = splitmix64(gseed)
with open(out_path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["key", "seed", "value"])
    for i in range(n):
        key = str(i)
        item = {"index": i, "key": key, "seed": splitmix64(g ^ fnv1a64(key)) >> 11, "fields": {}}
        for row in gen.rows(item):
            w.writerow(row)
EOF

  cat >"$w/proto_serve.py" <<EOF
import sys
sys.path.insert(0, "$SHARDRUN_ROOT/python")
import shardrun_gen
shardrun_gen.serve(lambda item: [[item["key"]]])
EOF
  cat >"$w/proto_minimal.py" <<'EOF'
import sys
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    out.write(b"0\n\x1e\n")
    out.flush()
EOF
  # Untimed: records the request lines the worker writes, for the standalone runs.
  cat >"$w/proto_capture.py" <<EOF
import sys
out = sys.stdout.buffer
with open("$w/requests.jsonl", "wb") as log:
    for line in sys.stdin.buffer:
        log.write(line)
        out.write(b"0\n\x1e\n")
        out.flush()
EOF

  # run_shards.sh CONFIG SHARDS: every shard in parallel; fails when one fails.
  cat >"$w/run_shards.sh" <<EOF
#!/usr/bin/env bash
set -u
pids=()
for ((i = 0; i < \$2; i++)); do
  '$WORKER' --root '$w' --config "\$1" --shard-index "\$i" --num-shards "\$2" --no-cache --quiet \\
    >/dev/null 2>>'$w/worker.stderr' &
  pids+=("\$!")
done
rc=0
for p in "\${pids[@]}"; do wait "\$p" || rc=1; done
exit "\$rc"
EOF
  chmod +x "$w/run_shards.sh"
}

q() { printf '%q' "$1"; }

# clean_cmd RUN: the shell command removing a run's outputs (a worker would resume them).
clean_cmd() { printf 'rm -rf %s %s' "$(q "$WORKDIR/data/$1")" "$(q "$WORKDIR/logs/$1")"; }

# shards_cmd RUN SHARDS: the shell command running a run's shards in parallel.
shards_cmd() { printf '%s %s %s' "$(q "$WORKDIR/run_shards.sh")" "$(q "$WORKDIR/conf/$1.yaml")" "$2"; }

# The machine may be shared: other_start / other_end measure the share of all CPUs that other
# processes used during a series: busy time in /proc/stat minus this script's own CPU time (its
# shell and every reaped descendant, /proc/$$/stat fields 14-17).
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
own_cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$$/stat"; }
OTHER_T0=() OTHER=""
other_start() { OTHER_T0=("$EPOCHREALTIME" "$(cpu_busy)" "$(own_cpu)"); }
other_end() {
  OTHER=$(awk -v t0="${OTHER_T0[0]}" -v t1="$EPOCHREALTIME" -v b0="${OTHER_T0[1]}" -v b1="$(cpu_busy)" \
    -v o0="${OTHER_T0[2]}" -v o1="$(own_cpu)" -v hz="$CLK_TCK" -v n="$(nproc)" \
    'BEGIN { x = ((b1 - b0) - (o1 - o0)) / hz / ((t1 - t0) * n) * 100; printf "%.0f", (x < 0 ? 0 : x) }')
}

# Timing results, by case name: WALL[name] (every wall time, space-separated), MED[name] (their
# median) and CPU[name] (mean user + system; hyperfine's JSON has no median for it).
declare -A WALL=() MED=() CPU=() PREP=() CMD=()

# bench NAME...: one hyperfine call that runs each named command REPS times, each run after its
# PREP, one command's runs after the other's; reads the results from its JSON export.
bench() {
  local json="$WORKDIR/hyperfine.json" args=() name
  for name in "$@"; do args+=(--prepare "${PREP[$name]}" -n "$name" "${CMD[$name]}"); done
  hyperfine --runs "$REPS" --style none --shell bash --export-json "$json" "${args[@]}" \
    >/dev/null || die "a timed command failed (hyperfine's message above)"
  for name in "$@"; do
    WALL[$name]=$(jq -r --arg n "$name" '.results[] | select(.command == $n) | .times | map(tostring) | join(" ")' "$json")
    MED[$name]=$(jq -r --arg n "$name" '.results[] | select(.command == $n) | .median' "$json")
    CPU[$name]=$(jq -r --arg n "$name" '.results[] | select(.command == $n) | .user + .system' "$json")
    say "$name: $(list "${WALL[$name]}") s"
  done
}

med() { echo "${MED[$1]}"; }
med_cpu() { echo "${CPU[$1]}"; }
# cpu_col NAME: the mean CPU time with 3 decimals.
cpu_col() { fmt3 "$(med_cpu "$1")"; }
fmt3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
list() { awk '{ for (i = 1; i <= NF; i++) printf "%s%.3f", (i > 1 ? ", " : ""), $i }' <<<"$1"; }

# merged RUN: merges a run (keeping its shards) and prints the path of combined.csv.
merged() {
  rm -f "$WORKDIR/data/$1/combined.csv" "$WORKDIR/data/$1/manifest_final.csv" "$WORKDIR/data/$1/stats.json"
  "$MERGE" --root "$WORKDIR" --run "$1" --keep-shards >/dev/null 2>>"$WORKDIR/merge.stderr" ||
    die "merge of run $1 failed (see $WORKDIR/merge.stderr)"
  printf '%s\n' "$WORKDIR/data/$1/combined.csv"
}

# same_rows RUN N: the merged run must equal the plain loop's output for N items.
same_rows() {
  local want="$WORKDIR/plain-$2.csv" got
  [ -f "$want" ] || "$PY" "$WORKDIR/plain_loop.py" "$GEN" "$2" "$want" "$SEED"
  got=$(merged "$1")
  cmp -s "$got" "$want" || die "run $1: merged output $got differs from the plain loop's $want"
  say "run $1: merged output equals the plain loop's rows ($(($(wc -l <"$want") - 1)) rows, $(wc -c <"$want") bytes)"
}

bench_main() {
  say "(1) persistent, 2 shards vs (2) the plain loop: $ITEMS items"
  PREP[persistent]=$(clean_cmd persistent)
  CMD[persistent]=$(shards_cmd persistent "$SHARDS")
  PREP[merge]="rm -f $(q "$WORKDIR/data/persistent/combined.csv") $(q "$WORKDIR/data/persistent/manifest_final.csv") $(q "$WORKDIR/data/persistent/stats.json")"
  CMD[merge]="$(q "$MERGE") --root $(q "$WORKDIR") --run persistent --keep-shards >/dev/null"
  PREP[plain]="rm -f $(q "$WORKDIR/plain.csv")"
  CMD[plain]="$(q "$PY") $(q "$WORKDIR/plain_loop.py") $(q "$GEN") $ITEMS $(q "$WORKDIR/plain.csv") $SEED"
  # Warm-up and check: the persistent run's merged rows equal the plain loop's.
  bash -c "${PREP[persistent]}; ${CMD[persistent]}" || die "the persistent run failed (see $WORKDIR/worker.stderr)"
  same_rows persistent "$ITEMS"
  bash -c "${PREP[plain]}; ${CMD[plain]}"
  cmp -s "$WORKDIR/plain.csv" "$WORKDIR/plain-$ITEMS.csv" || die "the plain loop is not deterministic"
  # merge after persistent: it merges the last persistent run's shards.
  other_start
  bench persistent merge plain
  other_end
  same_rows persistent "$ITEMS"
  cmp -s "$WORKDIR/plain.csv" "$WORKDIR/plain-$ITEMS.csv" || die "the plain loop's last output differs"

  local mp mm mq ratio ratio2 met
  mp=$(med persistent) mm=$(med merge) mq=$(med plain)
  ratio=$(awk -v a="$mp" -v b="$mq" 'BEGIN { printf "%.2f", a / b }')
  ratio2=$(awk -v a="$mp" -v m="$mm" -v b="$mq" 'BEGIN { printf "%.2f", (a + m) / b }')
  met=$(awk -v r="$ratio" -v t="$RATIO_TARGET" 'BEGIN { print (r <= t ? "yes" : "NO") }')
  REPORT+=("" "(1) vs (2): $ITEMS items, $SHARDS shards, jobs 1, no cache (wall s, median of $REPS; CPU = mean user + system)")
  REPORT+=("$(printf '  %-34s %8s %8s   %s' case wall CPU runs)")
  REPORT+=("$(printf '  %-34s %8.3f %8s   %s' "(1) persistent, 2 shards" "$mp" "$(cpu_col persistent)" "$(list "${WALL[persistent]}")")")
  REPORT+=("$(printf '  %-34s %8.3f %8s   %s' "    merge of its 2 shards" "$mm" "$(cpu_col merge)" "$(list "${WALL[merge]}")")")
  REPORT+=("$(printf '  %-34s %8.3f %8s   %s' "(2) plain loop, 1 process" "$mq" "$(cpu_col plain)" "$(list "${WALL[plain]}")")")
  REPORT+=("  persistent / plain = ${ratio}x (target <= ${RATIO_TARGET}x: $met); (persistent + merge) / plain = ${ratio2}x")
  REPORT+=("  other processes used $OTHER % of the CPUs during these runs")
  REPORT+=("  rows: merged persistent output = plain loop output ($(($(wc -l <"$WORKDIR/plain.csv") - 1)) rows, byte-identical)")
}

bench_per_item() {
  say "(3) per-item, 2 shards: $PER_ITEM_ITEMS items (extrapolated to $ITEMS), $PER_ITEM_REPS runs"
  PREP[per-item]=$(clean_cmd per-item)
  CMD[per-item]=$(shards_cmd per-item "$SHARDS")
  local reps=$REPS
  REPS=$PER_ITEM_REPS
  other_start
  bench per-item
  other_end
  REPS=$reps
  same_rows per-item "$PER_ITEM_ITEMS"
  local m per extra base
  m=$(med per-item)
  # slot-seconds per item (each of the 2 shards runs one item at a time)
  per=$(awk -v m="$m" -v s="$SHARDS" -v n="$PER_ITEM_ITEMS" 'BEGIN { printf "%.1f", m * s / n * 1000 }')
  extra=$(awk -v m="$m" -v n="$PER_ITEM_ITEMS" -v N="$ITEMS" 'BEGIN { printf "%.1f", m * N / n }')
  REPORT+=("" "(3) per-item mode: $PER_ITEM_ITEMS items, $SHARDS shards, jobs 1 (wall s, median of $PER_ITEM_REPS)")
  REPORT+=("$(printf '  measured: %.3f s wall, %s s CPU; runs %s' "$m" "$(cpu_col per-item)" "$(list "${WALL[per-item]}")")")
  REPORT+=("  per item: $per ms per slot (wall x shards / items)")
  REPORT+=("  EXTRAPOLATED to $ITEMS items, $SHARDS shards: ~$extra s wall (measured wall x $ITEMS / $PER_ITEM_ITEMS)")
  if [ -n "${WALL[plain]:-}" ]; then
    base=$(med plain)
    REPORT+=("  EXTRAPOLATED per-item / plain = $(awk -v a="$extra" -v b="$base" 'BEGIN { printf "%.0f", a / b }')x")
  fi
  REPORT+=("  other processes used $OTHER % of the CPUs during these runs")
  REPORT+=("  rows: merged per-item output = plain loop output for the same $PER_ITEM_ITEMS items (byte-identical)")
}

bench_protocol() {
  local n=$PROTOCOL_ITEMS name
  say "(4) protocol overhead: $n items, 1 shard, jobs 1"
  # Untimed: the worker's request lines, recorded by a generator that answers at once.
  rm -f "$WORKDIR/requests.jsonl"
  bash -c "$(clean_cmd proto-capture); $(shards_cmd proto-capture 1)" || die "the capture run failed"
  [ "$(wc -l <"$WORKDIR/requests.jsonl")" -eq "$n" ] || die "captured $(wc -l <"$WORKDIR/requests.jsonl") request lines, expected $n"
  local req names=() pin=
  req=$(q "$WORKDIR/requests.jsonl")
  # The worker and its generator exchange one request and one answer per item, so each item
  # wakes each of them once; on one CPU (taskset) no wake-up has to reach another CPU.
  if [ "$PIN" -eq 1 ] && have_cmd taskset; then
    pin=$(awk -F'[-,]' '{ print $1 }' /sys/devices/system/cpu/online)
  fi
  for name in serve minimal awk echo; do
    PREP[w-$name]=$(clean_cmd "proto-$name")
    CMD[w-$name]=$(shards_cmd "proto-$name" 1)
    # Warm-up and check: the run commits every item, one row each.
    bash -c "${PREP[w-$name]}; ${CMD[w-$name]}" || die "run proto-$name failed (see $WORKDIR/worker.stderr)"
    [ "$(wc -l <"$WORKDIR/data/proto-$name/process-0.csv")" -eq $((n + 1)) ] ||
      die "run proto-$name did not write $n rows"
    names+=("w-$name")
    if [ -n "$pin" ]; then
      PREP[p-$name]=${PREP[w-$name]}
      CMD[p-$name]="taskset -c $pin ${CMD[w-$name]}"
      names+=("p-$name")
    fi
    [ "$name" = echo ] || names+=("g-$name")
  done
  PREP[g-serve]=: PREP[g-minimal]=: PREP[g-awk]=:
  CMD[g-serve]="$(q "$PY") $(q "$WORKDIR/proto_serve.py") <$req >/dev/null"
  CMD[g-minimal]="$(q "$PY") $(q "$WORKDIR/proto_minimal.py") <$req >/dev/null"
  CMD[g-awk]="$(q "$AWK") $AWK_FLAGS '{ print \"0\"; print \"\\036\"; fflush() }' <$req >/dev/null"
  other_start
  bench "${names[@]}"
  other_end

  REPORT+=("" "(4) protocol overhead: $n items, 1 shard, jobs 1 (medians of $REPS; us/item = (worker - generator alone) / items)")
  REPORT+=("$(printf '  %-40s %7s | %7s %8s | %7s %8s | %8s | %s' generator "alone s" "worker" "us/item" \
    "1 CPU" "us/item" "CPU us" "< $OVERHEAD_TARGET_US us")")
  local label w g o met alone p op c
  for name in serve minimal awk echo; do
    case "$name" in
      serve) label="python, shardrun_gen.serve" ;;
      minimal) label="python, read line / write row + marker" ;;
      awk) label="$(basename "$AWK") $AWK_FLAGS, print row + marker" ;;
      echo) label="echo builtin (no generator process)" ;;
    esac
    w=$(med "w-$name")
    g=0 alone=-
    if [ "$name" != echo ]; then
      g=$(med "g-$name")
      alone=$(fmt3 "$g")
    fi
    o=$(per_item "$w" "$g")
    p=- op=-
    if [ -n "$pin" ]; then
      p=$(fmt3 "$(med "p-$name")")
      op=$(per_item "$p" "$g")
    fi
    # CPU per item beyond the generator's own (user + system of both processes).
    local gc=0
    [ "$name" = echo ] || gc=$(med_cpu "g-$name")
    c=$(per_item "$(med_cpu "w-$name")" "$gc")
    met=$(awk -v o="$o" -v t="$OVERHEAD_TARGET_US" 'BEGIN { print (o < t ? "yes" : "NO") }')
    [ "$name" = echo ] && met="(floor)"
    REPORT+=("$(printf '  %-40s %7s | %7.3f %8s | %7s %8s | %8s | %s' "$label" "$alone" "$w" "$o" "$p" "$op" "$c" "$met")")
  done
  REPORT+=("  worker: default scheduling; 1 CPU: worker and generator pinned to CPU ${pin:-n/a} (taskset)")
  REPORT+=("  CPU us: (user + system of the worker run - of the generator alone) / items")
  REPORT+=("  other processes used $OTHER % of the CPUs during these runs")
  REPORT+=("  individual runs (s):")
  for name in serve minimal awk echo; do
    REPORT+=("    worker $name: $(list "${WALL[w-$name]}")")
    [ -z "$pin" ] || REPORT+=("    1 CPU  $name: $(list "${WALL[p-$name]}")")
    [ "$name" = echo ] || REPORT+=("    alone  $name: $(list "${WALL[g-$name]}")")
  done
}

# per_item TOTAL BASE: (TOTAL - BASE) / PROTOCOL_ITEMS in microseconds.
per_item() {
  awk -v w="$1" -v g="$2" -v n="$PROTOCOL_ITEMS" 'BEGIN { printf "%.1f", (w - g) / n * 1e6 }'
}

report() {
  printf '\npersistent-generator benchmark, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'machine: %s CPUs (%s), %s MiB RAM, kernel %s; %s; %s; timing: %s\n' \
    "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$(awk '/MemTotal/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)" "$(uname -r)" \
    "$("$PY" -V 2>&1) ($PY)" "$("$WORKER" --version 2>/dev/null || echo shardrun)" \
    "$(hyperfine --version)"
  printf 'load average at start: %s; at end: %s\n' "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '%s\n' "${REPORT[@]}"
}

main() {
  parse_args "$@"
  use_workdir bench_persistent
  trap cleanup EXIT
  ensure_tools
  python_env
  write_files
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  if want main; then bench_main; fi
  if want per-item; then bench_per_item; fi
  if want protocol; then bench_protocol; fi
  report
}

main "$@"
