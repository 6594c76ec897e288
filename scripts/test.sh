#!/usr/bin/env bash
# The project's one test command: installs what the tests need on a fresh machine, then runs
# formatting and lint checks, the unit and integration tests, shellcheck on every script, and an
# end-to-end smoke run of the launcher (2 shards, then merge). Ends by saying how many tests
# were skipped on this machine and why.
#
#   ./scripts/test.sh
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

ensure_tools() {
  need_cmd cargo
  local missing=()
  have_cmd shellcheck || missing+=(shellcheck)
  have_cmd python3 || missing+=(python3)
  have_cmd tmux || missing+=(tmux)
  have_cmd flock || missing+=(util-linux)
  # The dashboard's browser test (tests/serve.rs, tests/dashboard_browser.py).
  have_cmd chromium || missing+=(chromium)
  have_cmd chromedriver || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}" || true
  fi
}

# The Python readers of the Parquet interop test (tests/parquet_interop.py), in a virtual
# environment under target/ that later runs reuse. The test skips itself, and the closing lines
# say so, when the environment could not be made ready.
PY_VENV=target/py-venv
ensure_py_venv() {
  [ -f "$PY_VENV/.shardrun-ready" ] && return 0
  say "setting up $PY_VENV (pyarrow, pandas, polars, duckdb, datasets) for the Parquet interop test"
  if ! python3 -m venv "$PY_VENV" >/dev/null 2>&1; then
    apt_install python3-venv >/dev/null 2>&1 || true
    rm -rf "$PY_VENV"
    python3 -m venv "$PY_VENV" >/dev/null 2>&1 || {
      say "cannot create a Python virtual environment: the Parquet interop test will be skipped"
      rm -rf "$PY_VENV"
      return 0
    }
  fi
  local pip=("$PY_VENV/bin/pip" install --quiet --disable-pip-version-check)
  if ! "${pip[@]}" pyarrow pandas polars duckdb; then
    say "pip could not install the Parquet readers: the Parquet interop test will be skipped"
    return 0
  fi
  # The test checks datasets' reading only when it is installed (it says so).
  "${pip[@]}" datasets || say "pip could not install datasets: the interop test leaves that reader out"
  touch "$PY_VENV/.shardrun-ready"
}

# Selenium for the dashboard's browser test, in the same environment (its own mark, so an
# environment made before it gets it too). The test skips itself, and says so, without it.
ensure_selenium() {
  [ -f "$PY_VENV/.shardrun-selenium" ] && return 0
  if [ ! -x "$PY_VENV/bin/python" ]; then
    say "no Python environment at $PY_VENV: the dashboard browser test will be skipped"
    return 0
  fi
  say "installing selenium in $PY_VENV for the dashboard browser test"
  if ! "$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check selenium; then
    say "pip could not install selenium: the dashboard browser test will be skipped"
    return 0
  fi
  touch "$PY_VENV/.shardrun-selenium"
}

# The launcher end to end, as a user runs it: 2 shards of a small config, then merge.
smoke_run() {
  say "smoke run: ./scripts/run_parallel.sh --num-shards 2 --merge"
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/conf"
  cat >"$dir/conf/smoke.yaml" <<'YAML'
run: smoke
seed: 7
items: {range: {start: 0, end: 200}}
generator: {builtin: vitals, params: {hours: 4}}
YAML
  (cd "$dir" && "$SHARDRUN_ROOT/scripts/run_parallel.sh" --config conf/smoke.yaml --num-shards 2 --merge) ||
    die "the smoke run failed (files in $dir)"
  [ -s "$dir/data/smoke/combined.csv" ] || die "the smoke run wrote no combined.csv (files in $dir)"
  rm -rf "$dir"
}

main() {
  case "${1:-}" in
    -h | --help) usage 0 ;;
    -V | --version) echo "test.sh (shardrun $(shardrun_version))"; exit 0 ;;
    "") ;;
    *) usage 2 ;;
  esac
  cd "$SHARDRUN_ROOT"
  ensure_tools
  say "cargo fmt --check"
  cargo fmt --all -- --check
  say "cargo clippy"
  cargo clippy --all-targets --quiet -- -D warnings
  say "cargo build --release"
  cargo build --release --quiet
  ensure_py_venv
  ensure_selenium
  say "cargo test"
  local log
  log=$(mktemp)
  # The Slurm tests bring up their clusters themselves, as root (slurm_local.sh up, and
  # up-accounting for the sacct test: apt-get, then daemons; with CI=true they must come up).
  # Tests that cannot run here (no local Slurm cluster, no root for a small file system) say
  # `*** SKIPPED: <test>: <why>` on stderr and pass; they are counted below, not hidden.
  cargo test --release --quiet 2>&1 | tee "$log"
  SKIPPED=$(grep -o 'SKIPPED: [^*]*' "$log" | sed 's/^SKIPPED: //; s/ *$//' | sort -u || true)
  rm -f "$log"
  if have_cmd shellcheck; then
    say "shellcheck"
    shellcheck -x scripts/*.sh .ci/run
  else
    die "shellcheck is missing and could not be installed"
  fi
  smoke_run
  if [ -n "$SKIPPED" ]; then
    say "all tests that ran passed; $(grep -c . <<<"$SKIPPED") skipped here:"
    while IFS= read -r line; do printf '    %s\n' "$line" >&2; done <<<"$SKIPPED"
  else
    say "all tests passed; none skipped"
  fi
}

main "$@"
