#!/usr/bin/env bash
# The project's one test command: installs what the tests need on a fresh machine, then runs
# formatting and lint checks, the unit and integration tests, and shellcheck on every script.
#
#   ./scripts/test.sh
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

ensure_tools() {
  need_cmd cargo
  local missing=()
  have_cmd shellcheck || missing+=(shellcheck)
  have_cmd python3 || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}" || true
  fi
}

main() {
  case "${1:-}" in
    -h | --help) usage 0 ;;
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
  say "cargo test"
  cargo test --release --quiet
  if have_cmd shellcheck; then
    say "shellcheck"
    shellcheck -x scripts/*.sh .ci/run
  else
    die "shellcheck is missing and could not be installed"
  fi
  say "all tests passed"
}

main "$@"
