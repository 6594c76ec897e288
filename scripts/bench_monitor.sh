#!/usr/bin/env bash
# Monitor benchmark: writes 256 synthetic shard logs of ~4 MiB each, then times (a) the first
# snapshot of a fresh Monitor (warm page cache, and cold: logs evicted from the page cache) and
# (b) 10 follow refreshes, each after every log grew by 1 KiB, checking that each refresh reads
# exactly the appended bytes (benches/monitor.rs, run with `cargo bench --bench monitor`).
#
#   ./scripts/bench_monitor.sh [--quick] [--no-cold] [--reps N] [--rounds N] [--workdir DIR]
#
#   --quick        16 logs of 256 KiB instead of 256 of 4 MiB (a smoke test; targets do not apply)
#   --no-cold      skip the cold first snapshots (fsync + posix_fadvise DONTNEED of each log)
#   --reps N       first snapshots to time, each on a fresh Monitor (default 5)
#   --rounds N     follow refreshes to time (default 10)
#   --workdir DIR  where the temporary log directory goes (default ${TMPDIR:-/tmp}); removed at exit
#
# Exits 1 when a correctness check fails (bytes read by a refresh differ from the bytes appended,
# or a snapshot disagrees with the logs); missed timing targets are reported, not fatal.
# Results: docs/BENCHMARKS.md.
set -Eeuo pipefail
shopt -s inherit_errexit
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

QUICK=0
COLD=1
REPS=5
ROUNDS=10
WORKDIR=${TMPDIR:-/tmp}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      --quick)
        QUICK=1
        shift
        ;;
      --no-cold)
        COLD=0
        shift
        ;;
      --reps)
        [ $# -ge 2 ] || usage 2
        REPS=$2
        shift 2
        ;;
      --rounds)
        [ $# -ge 2 ] || usage 2
        ROUNDS=$2
        shift 2
        ;;
      --workdir)
        [ $# -ge 2 ] || usage 2
        WORKDIR=$2
        shift 2
        ;;
      *)
        printf 'unknown argument: %s\n\n' "$1" >&2
        usage 2
        ;;
    esac
  done
  DIE_CODE=2
  [[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer, not '$REPS'"
  [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, not '$ROUNDS'"
  DIE_CODE=1
}

# Free space check: the logs take shards x size, plus 10 rounds of appends.
check_space() {
  local need avail
  need=$((QUICK == 1 ? 8 << 20 : 1100 << 20))
  avail=$(df -Pk -- "$WORKDIR" | awk 'NR == 2 { printf "%.0f\n", $4 * 1024 }')
  [ "$avail" -ge "$need" ] ||
    die "not enough free space in $WORKDIR: $((avail >> 20)) MiB free, need $((need >> 20)) MiB"
}

main() {
  parse_args "$@"
  need_cmd cargo
  need_cmd df
  mkdir -p -- "$WORKDIR"
  WORKDIR=$(cd -- "$WORKDIR" && pwd)
  check_space

  local args=(--reps "$REPS" --rounds "$ROUNDS" --workdir "$WORKDIR")
  [ "$COLD" -eq 0 ] || args+=(--cold)
  [ "$QUICK" -eq 0 ] || args+=(--shards 16 --log-kib 256)

  local fs
  fs=$(df -PT -- "$WORKDIR" | awk 'NR == 2 { print $2 " on " $1 }')
  say "building and running: cargo bench --bench monitor -- ${args[*]}"
  printf 'monitor benchmark, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'work directory: %s (%s), %s\n' "$WORKDIR" "$fs" "$(rustc --version 2>/dev/null || echo 'rustc ?')"
  (cd "$SHARDRUN_ROOT" && cargo bench --quiet --bench monitor -- "${args[@]}")
}

main "$@"
