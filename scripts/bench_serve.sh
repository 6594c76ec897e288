#!/usr/bin/env bash
# Dashboard benchmark: writes the logs of a synthetic run of N shards (half running, half done,
# on another host so /proc is not looked at), starts `monitor --serve` on it, and measures the
# server's CPU time and resident memory over a window with no client, then with C clients on
# the event stream (curl), and the size of one event.
#
#   ./scripts/bench_serve.sh [--shards N] [--clients C] [--seconds S] [--interval I]
#
#   --shards N    shards of the synthetic run (default 10000)
#   --clients C   event-stream clients of the second window (default 20)
#   --seconds S   length of each window (default 30)
#   --interval I  the server's --interval (default 2)
# Results: docs/BENCHMARKS.md.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SHARDS=10000
CLIENTS=20
SECONDS_=30
INTERVAL=2
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --shards) SHARDS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --seconds) SECONDS_=$2; shift ;;
    --interval) INTERVAL=$2; shift ;;
    *) DIE_CODE=2 die "unknown option: $1 (see --help)" ;;
  esac
  shift
done
need_cmd curl
need_cmd python3
(cd "$SHARDRUN_ROOT" && cargo build --release --quiet)
MONITOR=$SHARDRUN_ROOT/target/release/monitor
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

say "writing $SHARDS shard logs"
python3 - "$DIR" "$SHARDS" <<'PY'
import datetime, os, sys
root, n = sys.argv[1], int(sys.argv[2])
logs = os.path.join(root, "logs", "bench")
os.makedirs(logs)
now = datetime.datetime.now(datetime.timezone.utc)
ts = lambda s: (now - datetime.timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
for i in range(n):
    lines = [f"{ts(60)} start run=bench shard={i} num_shards={n} name=process-{i} pid=999999 "
             f"pid_start=1 host=bench-host items=40 committed=0 rows=0 jobs=1 version=0.1.0 "
             f"revision=000000000000 stale=0"]
    done = 40 if i % 2 else 20
    for d in range(1, done + 1):
        lines.append(f"{ts(60 - d)} item done={d} total=40 rows={d} key=k{i}-{d} index={d - 1} "
                     f"status=generated item_rows=1 ms=1000")
    if i % 2:
        lines.append(f"{ts(19)} finish status=ok done=40 total=40 failed=0 cached=0 generated=40 "
                     f"rows=40 elapsed_s=41 exit=0")
    with open(os.path.join(logs, f"shard_{i}_of_{n}.log"), "w") as f:
        f.write("\n".join(lines) + "\n")
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

"$MONITOR" --root "$DIR" --run bench --num-shards "$SHARDS" --serve 0 --interval "$INTERVAL" 2>"$DIR/serve.err" &
SERVER=$!
PIDS+=("$SERVER")
start=$(date +%s.%N)
until grep -qs 'serving run' "$DIR/serve.err"; do sleep 0.05; done
ready=$(date +%s.%N)
PORT=$(grep -o '127.0.0.1:[0-9]*' "$DIR/serve.err" | cut -d: -f2)
say "first snapshot and start: $(echo "$ready - $start" | bc) s; RSS $(rss_kib "$SERVER") KiB"
EVENT=$(curl -s -N --max-time "$((INTERVAL * 2 + 1))" "http://127.0.0.1:$PORT/events" | awk '/^data: / {print length($0); exit}' || true)
STATUS=$(curl -s "http://127.0.0.1:$PORT/api/status" | wc -c || true)
say "one event: $EVENT bytes; /api/status: $STATUS bytes"

window() {
  local t0 t1
  t0=$(cpu_ticks "$SERVER")
  sleep "$SECONDS_"
  t1=$(cpu_ticks "$SERVER")
  echo "$(echo "scale=3; ($t1 - $t0) * 100 / $HZ / $SECONDS_" | bc)% of one CPU, $(echo "scale=1; ($t1 - $t0) * 1000 * $INTERVAL / $HZ / $SECONDS_" | bc) ms of CPU per refresh; RSS $(rss_kib "$SERVER") KiB"
}
say "no client, ${SECONDS_} s: $(window)"
for ((c = 0; c < CLIENTS; c++)); do
  curl -s -N "http://127.0.0.1:$PORT/events" >/dev/null &
  PIDS+=("$!")
done
sleep 1
say "$CLIENTS event-stream clients, ${SECONDS_} s: $(window)"
