#!/usr/bin/env bash
# Start the services envlock and its tests talk to, when they are not running (idempotent):
# - the Docker engine (envlock build / run);
# - a two-node Slurm cluster on this machine (envlock submit --slurm): munged, slurmctld and two slurmd, both on
#   this host (node names HOST and HOST-2, ports 6818 and 6819), so that multi-node jobs run for real; the
#   slurm.conf below is written to /etc/slurm when there is none. A machine with its own slurm.conf (a real
#   cluster's login node) is left as it is.
# ENVLOCK_SERVICES=docker starts only the Docker engine (scripts/setup.sh --core: the quickstart's main path).
set -euo pipefail
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
state=${ENVLOCK_SERVICES_DIR:-/var/lib/envlock-services}
"${sudo_cmd[@]}" mkdir -p "$state"

wait_for() { # seconds, command...
  local tries=$(($1 * 2))
  shift
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl start docker
  else
    "${sudo_cmd[@]}" sh -c "nohup dockerd >'$state/dockerd.log' 2>&1 </dev/null &"
  fi
  if ! wait_for 60 docker info; then
    echo "services: the Docker engine did not start; see $state/dockerd.log" >&2
    exit 1
  fi
fi
echo "services: Docker engine $(docker version --format '{{.Server.Version}}') is running"
if [ "${ENVLOCK_SERVICES:-all}" = docker ]; then exit 0; fi

if ! command -v slurmctld >/dev/null 2>&1; then
  echo "services: Slurm is not installed (bash scripts/setup.sh installs it); envlock submit --slurm needs it"
  exit 0
fi
conf=/etc/slurm/slurm.conf
marker="# written by envlock scripts/services.sh"
if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
  echo "services: $conf is this machine's own: Slurm left as configured"
  exit 0
fi
node=$(hostname -s)
nodes=("$node" "$node-2")
cpus=$(nproc)
"${sudo_cmd[@]}" mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/log/slurm /run/munge
for name in "${nodes[@]}"; do "${sudo_cmd[@]}" mkdir -p "/var/lib/slurm/slurmd-$name"; done
"${sudo_cmd[@]}" tee "$conf.new" >/dev/null <<CONF
$marker: two nodes on this machine, for envlock submit --slurm and its tests
ClusterName=envlock
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=30
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd-%n
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
MpiDefault=none
NodeName=${nodes[0]} NodeHostname=$node NodeAddr=127.0.0.1 Port=6818 CPUs=$cpus State=UNKNOWN
NodeName=${nodes[1]} NodeHostname=$node NodeAddr=127.0.0.1 Port=6819 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=${nodes[0]},${nodes[1]} Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$conf.new" "$conf" 2>/dev/null; then
  # A new configuration (first start, or another layout): the daemons read it only when they start.
  "${sudo_cmd[@]}" pkill -x slurmd || true
  "${sudo_cmd[@]}" pkill -x slurmctld || true
  wait_for 30 sh -c '! pgrep -x slurmd && ! pgrep -x slurmctld' || true
fi
"${sudo_cmd[@]}" mv "$conf.new" "$conf"

if ! sh -c "munge -n | unmunge" >/dev/null 2>&1; then
  "${sudo_cmd[@]}" chown munge:munge /run/munge
  "${sudo_cmd[@]}" su -s /bin/sh munge -c munged
fi
wait_for 20 sh -c 'munge -n | unmunge' || { echo "services: munged did not start" >&2; exit 1; }
scontrol ping >/dev/null 2>&1 || "${sudo_cmd[@]}" slurmctld
wait_for 30 scontrol ping || { echo "services: slurmctld did not start; see /var/log/slurm/slurmctld.log" >&2; exit 1; }
slurmd_alive() { [ -f "/run/slurmd-$1.pid" ] && kill -0 "$(cat "/run/slurmd-$1.pid")" 2>/dev/null; }
node_up() { sinfo -h -n "$1" -o %T | grep -qE '^(idle|mixed|allocated|completing)'; }
for name in "${nodes[@]}"; do
  slurmd_alive "$name" || "${sudo_cmd[@]}" slurmd -N "$name"
  wait_for 30 slurmd_alive "$name" || { echo "services: slurmd $name did not start; see /var/log/slurm/slurmd-$name.log" >&2; exit 1; }
  if ! wait_for 30 node_up "$name"; then
    # A node left down/drained by an earlier run (e.g. a reboot mid-job) is put back into service.
    "${sudo_cmd[@]}" scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true
    wait_for 30 node_up "$name" || { echo "services: Slurm node $name is $(sinfo -h -n "$name" -o %T); see /var/log/slurm/slurmd-$name.log" >&2; exit 1; }
  fi
done
echo "services: Slurm $(sinfo --version | cut -d' ' -f2) is running (nodes ${nodes[*]} on this host, partition debug)"
