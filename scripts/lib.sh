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

# apt_install PACKAGE...: install Debian packages when running as root; runs apt-get update once.
_apt_updated=0
apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! have_cmd apt-get; then
    say "cannot install $* (not root or no apt-get); skipping what needs it"
    return 1
  fi
  if [ "$_apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
