#!/usr/bin/env bash
# slurm_local.sh: single-node Slurm clusters on this machine, to try run_slurm.sh and to test it.
#
# Usage: ./scripts/slurm_local.sh up|up-accounting|down|down-accounting|status
#
#   up               as root: install what is missing (munge, slurmctld, slurmd, slurm-client,
#                    with apt-get), create a munge key, write /etc/slurm/slurm.conf (one node named
#                    after `hostname -s` with this machine's CPUs and memory, one partition), start
#                    munged, slurmctld and slurmd as daemons (not through systemd) and wait until
#                    the node is idle. Safe to repeat: what is already done is left as it is.
#   up-accounting    as root: a second cluster beside the first, with job accounting, to test what
#                    reads sacct: the same, plus slurmdbd and mariadb-server; a MariaDB server of
#                    its own (127.0.0.1:6930, started by hand) holds the accounting database.
#                    Its own configuration, /etc/slurm-accounting/ (use it with
#                    SLURM_CONF=/etc/slurm-accounting/slurm.conf), its own ports (slurmctld 6927,
#                    slurmd 6928, slurmdbd 6929), job ids from 1000000, and MinJobAge=2: the
#                    controller forgets a finished job within seconds, and sacct still knows
#                    it. munged is shared by both clusters.
#                    Safe to repeat, like up.
#   down             stop both clusters: cancel their jobs, stop the daemons this script started
#                    (by their pid files; munged last, and only if this script started it) and
#                    remove their configuration and state (the accounting database too); the
#                    packages and the munge key stay
#   down-accounting  the same for the accounting cluster alone (munged stays while the other
#                    cluster is up)
#   status           show the node and the queue of each cluster that is set up; exit 0 when every
#                    cluster set up is up (and there is one), 1 otherwise
#
# What it creates: /etc/slurm/slurm.conf and /etc/slurm-accounting/{slurm,slurmdbd}.conf (marked
# as written by this script; a file it did not write is never touched), /var/lib/shardrun-slurm/
# and /var/lib/shardrun-slurm-accounting/ (state, spool, logs, pid files; the MariaDB data).
# Exit: 0 done, 1 failed, 2 usage error or someone else's Slurm configuration, 3 cannot be set up
# here (not root, or the packages cannot be installed).
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MARKER='# Written by shardrun scripts/slurm_local.sh'
MUNGE_PID=/run/munge/munged.pid
PARTITION=local
HOST=$(hostname -s)
PLAIN_CONF=/etc/slurm/slurm.conf
PLAIN_STATE=/var/lib/shardrun-slurm
ACCT_CONF=/etc/slurm-accounting/slurm.conf
ACCT_STATE=/var/lib/shardrun-slurm-accounting
# The accounting cluster's ports: slurmctld, slurmd, slurmdbd, MariaDB.
ACCT_CTLD_PORT=6927
ACCT_SLURMD_PORT=6928
ACCT_DBD_PORT=6929
ACCT_DB_PORT=6930
ACCT_DB_NAME=slurm_acct_db
ACCT_DB_USER=slurm

# use_cluster plain|accounting: CLUSTER, CONF, STATE and DBD_CONF of that cluster; its clients and
# daemons read CONF (SLURM_CONF, also when the caller's environment names another).
use_cluster() {
  CLUSTER=$1
  case "$1" in
    plain) CONF=$PLAIN_CONF STATE=$PLAIN_STATE DBD_CONF='' ;;
    accounting) CONF=$ACCT_CONF STATE=$ACCT_STATE DBD_CONF=$(dirname "$ACCT_CONF")/slurmdbd.conf ;;
  esac
  export SLURM_CONF=$CONF
}

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
  if [ "$CLUSTER" = accounting ]; then
    [ -x /usr/sbin/slurmdbd ] || missing+=(slurmdbd)
    [ -x /usr/sbin/mariadbd ] && have_cmd mariadb-install-db && have_cmd mariadb || missing+=(mariadb-server)
  fi
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
# is 90% of MemTotal: slurmd drains a node configured with more than it detects. The accounting
# cluster differs in its name, ports, first job id, accounting and MinJobAge.
render_conf() {
  local cpus mem_mb name=shardrun accounting='AccountingStorageType=accounting_storage/none'
  cpus=$(nproc)
  mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024))
  if [ "$CLUSTER" = accounting ]; then
    name=shardrunacct
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$ACCT_DBD_PORT
# Its own ports and job ids (beside the cluster of \`slurm_local.sh up\`, whose ids start at 1).
SlurmctldPort=$ACCT_CTLD_PORT
SlurmdPort=$ACCT_SLURMD_PORT
FirstJobId=1000000
# The controller forgets a job a few seconds after its end (2 s is Slurm's smallest recommended
# MinJobAge): then only sacct knows it.
MinJobAge=2"
  fi
  cat <<EOC
$MARKER (do not edit: \`slurm_local.sh down\` removes it).
ClusterName=$name
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
$accounting
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
EOC
}

# slurmdbd.conf of the accounting cluster, with the database password PASS.
render_dbd_conf() {
  cat <<EOC
$MARKER (do not edit: \`slurm_local.sh down\` removes it).
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$ACCT_DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$ACCT_DB_PORT
StorageUser=$ACCT_DB_USER
StoragePass=$1
StorageLoc=$ACCT_DB_NAME
EOC
}

# ours FILE: true when this script wrote FILE.
ours() { [ -f "$1" ] && head -n 1 "$1" | grep -qF "$MARKER"; }

refuse_foreign_conf() {
  local f
  for f in "$CONF" ${DBD_CONF:+"$DBD_CONF"}; do
    if [ -e "$f" ] && ! ours "$f"; then
      DIE_CODE=2 die "$f exists and was not written by this script; not touching it (use that cluster, or move the file away)"
    fi
  done
}

# write_file FILE MODE TEXT: writes FILE when it is missing or differs; WROTE=1 when it did.
write_file() {
  WROTE=0
  [ -f "$1" ] && [ "$(cat "$1")" = "$3" ] && return 0
  mkdir -p "$(dirname "$1")"
  (umask 077 && printf '%s\n' "$3" >"$1.tmp.$$")
  chmod "$2" "$1.tmp.$$"
  mv -f "$1.tmp.$$" "$1"
  WROTE=1
  say "wrote $1"
}

# Writes slurm.conf when it is missing or differs; CONF_CHANGED=1 when it did.
write_conf() {
  write_file "$CONF" 644 "$(render_conf)"
  CONF_CHANGED=$WROTE
}

# Writes slurmdbd.conf with the database password PASS (only root may read it);
# DBD_CHANGED=1 when it did.
write_dbd_conf() {
  write_file "$DBD_CONF" 600 "$(render_dbd_conf "$1")"
  DBD_CHANGED=$WROTE
}

# ---- daemons -------------------------------------------------------------------------------

# pid_of PIDFILE NAME: the pid in PIDFILE when that process is alive and is NAME ('' otherwise).
pid_of() {
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && alive "$pid" && echo "$pid"
  return 0
}

# alive PID: the process exists and has not exited (a daemon that died stays a zombie until
# init reaps it, which in a container can take a second or more).
alive() {
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || true)
  case "${st%% *}" in
    '' | Z | X | x) return 1 ;;
  esac
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

# munged is shared by both clusters: started by the first that needs it (which keeps a mark in
# its state directory), stopped by the `down` that leaves neither cluster up.
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

# start_daemon NAME CHANGED: starts /usr/sbin/NAME (it daemonizes) unless it runs; restarts it
# when its configuration CHANGED (1).
start_daemon() {
  local name=$1 pid
  pid=$(pid_of "$STATE/$name.pid" "$name")
  if [ -n "$pid" ] && (($2)); then
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
  while alive "$pid" && ((t < 100)); do
    sleep 0.1
    t=$((t + 1))
  done
  if alive "$pid"; then
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

# ---- the accounting cluster's database ------------------------------------------------------

# MariaDB runs as the mysql user: its data, socket, pid file and log under $STATE/mysql*.
db_sock() { echo "$STATE/mysql-run/mariadbd.sock"; }
db_pid_file() { echo "$STATE/mysql-run/mariadbd.pid"; }
db_up() { mariadb-admin --no-defaults --socket="$(db_sock)" -u root ping; }

# Starts a MariaDB server of the cluster's own (not the system's, not through systemd) on
# 127.0.0.1:$ACCT_DB_PORT, creating its data directory the first time.
start_mariadb() {
  local data=$STATE/mysql run=$STATE/mysql-run
  mkdir -p "$run"
  chown mysql:mysql "$run"
  if [ ! -d "$data/mysql" ]; then
    say "creating the MariaDB data directory $data"
    rm -rf "$data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$data" --skip-test-db \
      >"$STATE/log/mariadb-install-db.log" 2>&1 ||
      die "mariadb-install-db failed (see $STATE/log/mariadb-install-db.log)"
  fi
  [ -n "$(pid_of "$(db_pid_file)" mariadbd)" ] && db_up >/dev/null 2>&1 && return 0
  say "starting mariadbd (127.0.0.1:$ACCT_DB_PORT)"
  # Its own session, and none of this script's file descriptors (a caller waits for their end).
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$(db_sock)" \
    --pid-file="$(db_pid_file)" --port="$ACCT_DB_PORT" --bind-address=127.0.0.1 \
    --skip-name-resolve --log-error="$run/mariadbd.log" --innodb-buffer-pool-size=64M \
    --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  wait_until 60 db_up || {
    tail -n 20 "$run/mariadbd.log" >&2 2>/dev/null || true
    die "mariadbd does not answer (log above)"
  }
}

# The database password: the one slurmdbd.conf has, else a new random one.
db_password() {
  local pass=''
  ours "$DBD_CONF" && pass=$(sed -n 's/^StoragePass=//p' "$DBD_CONF")
  [ -n "$pass" ] || pass=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$pass"
}

# setup_db PASS: the accounting database and its user, whose password goes through stdin (never
# on a command line).
setup_db() {
  mariadb --no-defaults --socket="$(db_sock)" -u root <<SQL || die "could not set up the accounting database"
CREATE DATABASE IF NOT EXISTS $ACCT_DB_NAME;
CREATE USER IF NOT EXISTS '$ACCT_DB_USER'@'127.0.0.1';
ALTER USER '$ACCT_DB_USER'@'127.0.0.1' IDENTIFIED BY '$1';
GRANT ALL ON $ACCT_DB_NAME.* TO '$ACCT_DB_USER'@'127.0.0.1';
SQL
}

dbd_up() { sacctmgr -n -P list cluster format=cluster; }

# Registers the cluster with slurmdbd (sacctmgr) unless it is there.
register_cluster() {
  local name
  name=$(awk -F= '$1 == "ClusterName" {print $2}' "$CONF")
  sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$name" && return 0
  say "registering cluster $name with slurmdbd"
  sacctmgr -i add cluster "$name" >/dev/null || die "sacctmgr add cluster $name failed"
}

# ---- commands ------------------------------------------------------------------------------

up() {
  use_cluster plain
  need_root up
  refuse_foreign_conf
  install_packages
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  write_conf
  start_munge
  start_cluster
  say "Slurm is up: node $HOST ($(nproc) CPUs), partition $PARTITION; stop it with: $0 down"
}

up-accounting() {
  local pass
  use_cluster accounting
  need_root up-accounting
  refuse_foreign_conf
  install_packages
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  write_conf
  start_munge
  start_mariadb
  pass=$(db_password)
  setup_db "$pass"
  write_dbd_conf "$pass"
  start_daemon slurmdbd "$DBD_CHANGED"
  # The first start creates the tables.
  wait_until 60 dbd_up || {
    tail -n 20 "$STATE/log/slurmdbd.log" >&2 2>/dev/null || true
    die "slurmdbd does not answer (log above)"
  }
  register_cluster
  start_cluster
  say "Slurm with accounting is up: node $HOST ($(nproc) CPUs), partition $PARTITION, job ids from 1000000; use it with SLURM_CONF=$CONF; stop it with: $0 down-accounting"
}

# slurmctld, then slurmd, then the node taking jobs.
start_cluster() {
  start_daemon slurmctld "$CONF_CHANGED"
  wait_until 20 ctld_up || {
    tail -n 20 "$STATE/log/slurmctld.log" >&2 2>/dev/null || true
    die "slurmctld does not answer (log above)"
  }
  start_daemon slurmd "$CONF_CHANGED"
  wait_for_node
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

# refuse_foreign_down CLUSTER: exit 2 when that cluster's configuration is not this script's.
refuse_foreign_down() {
  use_cluster "$1"
  if [ -e "$CONF" ] && ! ours "$CONF"; then
    DIE_CODE=2 die "$CONF was not written by this script; not stopping that cluster"
  fi
}

# cluster_running STATE: true when a slurmctld or slurmd of the cluster in STATE is alive.
cluster_running() {
  [ -n "$(pid_of "$1/slurmctld.pid" slurmctld)$(pid_of "$1/slurmd.pid" slurmd)" ]
}

# Stops the current cluster and removes its configuration and state; munged goes too when this
# script started it and no other cluster of it is up (else the other keeps the mark).
down_cluster() {
  local other=$PLAIN_STATE
  [ "$CLUSTER" = plain ] && other=$ACCT_STATE
  if ours "$CONF" && ctld_up; then cancel_jobs; fi
  stop_daemon slurmd
  stop_daemon slurmctld
  if [ "$CLUSTER" = accounting ]; then
    stop_daemon slurmdbd
    stop_daemon mariadbd "$(db_pid_file)"
    if ours "$DBD_CONF"; then rm -f "$DBD_CONF"; fi
  fi
  if ours "$CONF"; then rm -f "$CONF"; fi
  if [ "$CLUSTER" = accounting ]; then rmdir "$(dirname "$CONF")" 2>/dev/null || true; fi
  if [ -e "$STATE/munged.ours" ]; then
    if cluster_running "$other"; then
      touch "$other/munged.ours"
    else
      stop_daemon munged "$MUNGE_PID"
    fi
  fi
  rm -rf "$STATE"
}

down() {
  need_root down
  refuse_foreign_down plain
  refuse_foreign_down accounting
  use_cluster accounting
  down_cluster
  use_cluster plain
  down_cluster
  say "Slurm is down, both clusters (the packages and /etc/munge/munge.key are kept)"
}

down-accounting() {
  need_root down-accounting
  refuse_foreign_down accounting
  down_cluster
  say "the accounting cluster is down (the packages and /etc/munge/munge.key are kept)"
}

# Shows the current cluster; 0 up, 1 not up, 2 not set up.
status_cluster() {
  [ -f "$CONF" ] || return 2
  echo "cluster $(awk -F= '$1 == "ClusterName" {print $2}' "$CONF") (SLURM_CONF=$CONF):"
  if ! ctld_up; then
    echo "slurmctld is not running (run: $0 $1)"
    return 1
  fi
  sinfo
  squeue
  node_ready
}

status() {
  local rc seen=0 down=0
  if ! have_cmd sinfo; then
    echo "no local cluster (run: $0 up)"
    return 1
  fi
  use_cluster plain
  rc=0
  status_cluster up || rc=$?
  ((rc == 2)) || seen=$((seen + 1))
  if ((rc == 1)); then down=1; fi
  use_cluster accounting
  rc=0
  status_cluster up-accounting || rc=$?
  ((rc == 2)) || seen=$((seen + 1))
  if ((rc == 1)); then down=1; fi
  if ((seen == 0)); then
    echo "no local cluster (run: $0 up, or $0 up-accounting)"
    return 1
  fi
  ((!down))
}

main() {
  case "${1:-}" in
    -h | --help) usage 0 ;;
    up | up-accounting | down | down-accounting | status) [ $# -eq 1 ] || usage 2 ;;
    *) usage 2 ;;
  esac
  "$1"
}

main "$@"
