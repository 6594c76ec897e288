#!/usr/bin/env bash
# slurm_local.sh: a single-node Slurm cluster on this machine, to try run_slurm.sh and to test it.
#
# Usage: ./scripts/slurm_local.sh up|down|status
#
#   up      as root: install what is missing (munge, slurmctld, slurmd, slurm-client, with
#           apt-get), create a munge key, write /etc/slurm/slurm.conf (one node named after
#           `hostname -s` with this machine's CPUs and memory, one partition), start munged,
#           slurmctld and slurmd as daemons (not through systemd) and wait until the node is
#           idle. Safe to repeat: what is already done is left as it is.
#   down    cancel the cluster's jobs, stop the daemons this script started (by their pid files)
#           and remove its configuration and state; the packages and the munge key stay
#   status  show the node and the queue; exit 0 when the cluster is up, 1 otherwise
#
# What it creates: /etc/slurm/slurm.conf (marked as written by this script; a slurm.conf it did
# not write is never touched) and /var/lib/shardrun-slurm/ (state, spool, logs, pid files).
# Exit: 0 done, 1 failed, 2 usage error or someone else's Slurm configuration, 3 cannot be set up
# here (not root, or the packages cannot be installed).
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONF=/etc/slurm/slurm.conf
STATE=/var/lib/shardrun-slurm
MARKER='# Written by shardrun scripts/slurm_local.sh'
MUNGE_PID=/run/munge/munged.pid
PARTITION=local
HOST=$(hostname -s)

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# cannot MESSAGE: this machine cannot host the cluster (exit 3, so tests can tell it apart).
cannot() { DIE_CODE=3 die "$*"; }

need_root() {
  [ "$(id -u)" -eq 0 ] || cannot "slurm_local.sh $1 needs root (it installs packages and starts daemons)"
}

# ---- packages ------------------------------------------------------------------------------

# Installs the missing packages. A policy-rc.d that refuses service starts keeps the packages'
# init scripts from starting daemons (with no configuration yet) during the installation; one
# already in place (as in most containers) is left alone.
install_packages() {
  local missing=() policy=/usr/sbin/policy-rc.d added=0 rc=0
  [ -x /usr/sbin/munged ] || missing+=(munge)
  [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
  [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
  have_cmd sbatch && have_cmd scontrol || missing+=(slurm-client)
  ((${#missing[@]} == 0)) && return 0
  say "installing ${missing[*]}"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Temporary, from shardrun slurm_local.sh: no service starts during apt-get.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added=1
  fi
  apt_install "${missing[@]}" || rc=$?
  ((added)) && rm -f "$policy"
  ((rc == 0)) || cannot "could not install ${missing[*]} with apt-get"
}

# ---- configuration -------------------------------------------------------------------------

# The configuration for this machine. CPUs are those this process may use (nproc), and memory
# is 90% of MemTotal: slurmd drains a node configured with more than it detects.
render_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024))
  cat <<EOF
$MARKER (do not edit: \`slurm_local.sh down\` removes it).
ClusterName=shardrun
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits this long before it starts again (slurmd refuses to relaunch a job id it
# killed while that job's credential may still be in use); Slurm's default is 120 s.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
# No cgroups (none in containers, and no systemd to delegate them): track processes through
# /proc and leave task placement alone.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# A small cluster can afford to look at pending jobs every second.
SchedulerParameters=sched_interval=1,bf_interval=1
# Between the SIGTERM and the SIGKILL of a cancelled or timed-out task (shard workers need ~2 s).
KillWait=30
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

ours() { [ -f "$CONF" ] && head -n 1 "$CONF" | grep -qF "$MARKER"; }

refuse_foreign_conf() {
  if [ -e "$CONF" ] && ! ours; then
    DIE_CODE=2 die "$CONF exists and was not written by this script; not touching it (use that cluster, or move the file away)"
  fi
}

# Writes slurm.conf when it is missing or differs; CONF_CHANGED=1 when it did.
write_conf() {
  local want
  CONF_CHANGED=0
  want=$(render_conf)
  [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$want" ] && return 0
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$want" >"$CONF.tmp.$$"
  mv -f "$CONF.tmp.$$" "$CONF"
  CONF_CHANGED=1
  say "wrote $CONF"
}

# ---- daemons -------------------------------------------------------------------------------

# pid_of PIDFILE NAME: the pid in PIDFILE when that process is alive and is NAME ('' otherwise).
pid_of() {
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
  return 0
}

# wait_until SECONDS COMMAND...: polls COMMAND until it succeeds; false when time runs out.
wait_until() {
  local limit=$1 t=0
  shift
  until "$@" >/dev/null 2>&1; do
    ((t >= limit * 5)) && return 1
    sleep 0.2
    t=$((t + 1))
  done
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mkdir -p /etc/munge
    chown munge:munge /etc/munge
    runuser -u munge -- /usr/sbin/mungekey --create
  fi
  munge_works && return 0
  # /run is empty after a reboot of a container: munged needs its socket directory.
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/munged.ours"
  wait_until 10 munge_works || die "munged did not come up (see /var/log/munge/munged.log)"
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_daemon() {
  local name=$1 pid
  pid=$(pid_of "$STATE/$name.pid" "$name")
  if [ -n "$pid" ] && ((CONF_CHANGED)); then
    say "configuration changed: restarting $name"
    stop_daemon "$name"
    pid=''
  fi
  [ -n "$pid" ] && return 0
  say "starting $name"
  "/usr/sbin/$name" || die "$name did not start (see $STATE/log/$name.log)"
}

stop_daemon() {
  local name=$1 pidfile=${2:-$STATE/$1.pid} pid t=0
  pid=$(pid_of "$pidfile" "$name")
  [ -n "$pid" ] || return 0
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while [ -e "/proc/$pid" ] && ((t < 100)); do
    sleep 0.1
    t=$((t + 1))
  done
  if [ -e "/proc/$pid" ]; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

node_state() { sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n 1; }

node_ready() {
  case "$(node_state)" in
    idle | mix | mixed | alloc | allocated) return 0 ;;
    *) return 1 ;;
  esac
}

# Waits until the node takes jobs, resuming it once if it came back down or drained (as after a
# configuration change or a restart of slurmd).
wait_for_node() {
  local state
  wait_until 20 node_ready && return 0
  state=$(node_state)
  case "$state" in
    down* | drain* | drng* | fail*)
      say "node $HOST is $state: resuming it"
      scontrol update nodename="$HOST" state=resume 2>/dev/null || true
      wait_until 20 node_ready && return 0
      ;;
  esac
  tail -n 20 "$STATE/log/slurmd.log" "$STATE/log/slurmctld.log" >&2 2>/dev/null || true
  die "node $HOST is not ready (state: ${state:-unknown}); logs above"
}

# ---- commands ------------------------------------------------------------------------------

up() {
  need_root up
  refuse_foreign_conf
  install_packages
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  write_conf
  start_munge
  start_daemon slurmctld
  wait_until 20 ctld_up || {
    tail -n 20 "$STATE/log/slurmctld.log" >&2 2>/dev/null || true
    die "slurmctld does not answer (log above)"
  }
  start_daemon slurmd
  wait_for_node
  say "Slurm is up: node $HOST ($(nproc) CPUs), partition $PARTITION; stop it with: $0 down"
}

cancel_jobs() {
  local ids
  ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' | sed 's/ $//')
  [ -n "${ids// /}" ] || return 0
  say "cancelling the cluster's jobs: $ids"
  # shellcheck disable=SC2086  # one argument per job id
  scancel $ids 2>/dev/null || true
  wait_until 40 queue_empty || say "some jobs did not end within 40 s"
}

queue_empty() { [ -z "$(squeue -h -o %A 2>/dev/null)" ]; }

down() {
  need_root down
  if ours; then
    ctld_up && cancel_jobs
  elif [ -e "$CONF" ]; then
    DIE_CODE=2 die "$CONF was not written by this script; not stopping that cluster"
  fi
  stop_daemon slurmd
  stop_daemon slurmctld
  if [ -e "$STATE/munged.ours" ]; then
    stop_daemon munged "$MUNGE_PID"
  fi
  ours && rm -f "$CONF"
  rm -rf "$STATE"
  say "Slurm is down (the packages and /etc/munge/munge.key are kept)"
}

status() {
  if ! have_cmd sinfo || ! [ -f "$CONF" ]; then
    echo "no local cluster (run: $0 up)"
    return 1
  fi
  if ! ctld_up; then
    echo "slurmctld is not running (run: $0 up)"
    return 1
  fi
  sinfo
  squeue
  node_ready
}

main() {
  case "${1:-}" in
    -h | --help) usage 0 ;;
    up | down | status) [ $# -eq 1 ] || usage 2 ;;
    *) usage 2 ;;
  esac
  "$1"
}

main "$@"
