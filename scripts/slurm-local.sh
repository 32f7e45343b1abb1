#!/usr/bin/env bash
# A real single-node Slurm on this machine, for grulm's sweep tests (as root).
#
#   scripts/slurm-local.sh start DIR   # install slurm-wlm and munge if missing, write
#                                      # DIR/slurm.conf, start munged, slurmctld and slurmd,
#                                      # wait for the node; prints `export SLURM_CONF=...`
#   scripts/slurm-local.sh stop DIR    # stop the daemons started in DIR (by their pid files)
#
# The node is this machine's short hostname with its CPU count; state, spool,
# logs and pid files live in DIR. Daemons are stopped by the pids they wrote,
# never by name: other processes on the machine may have the same names.
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop_pid() { # stop the daemon whose pid is in $1, if it runs
  local f=$1
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "$cmd" in
start)
  if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    echo "slurm-local: installing slurm-wlm and munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge > "$dir/apt.log" 2>&1 \
      || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q slurm-wlm munge > "$dir/apt.log" 2>&1; } \
      || { echo "slurm-local: apt-get install slurm-wlm munge failed; see $dir/apt.log" >&2; exit 1; }
  fi
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.8) }' /proc/meminfo)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" /run/munge
  cat > "$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/ctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  if ! { [ -f "$dir/munged.pid" ] && kill -0 "$(cat "$dir/munged.pid")" 2>/dev/null; }; then
    munged --force --pid-file="$dir/munged.pid" 2> "$dir/log/munged.err" || true
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  slurmctld
  slurmd
  for _ in $(seq 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.2
  done
  echo "slurm-local: the node never came up idle; see $dir/log/" >&2
  exit 1
  ;;
stop)
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munged.pid"
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
