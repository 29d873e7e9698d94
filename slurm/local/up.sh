#!/usr/bin/env bash
# A local Slurm cluster on this machine, for CI and development (docs/launching.md).
# Installs Debian's Slurm, munge and Open MPI (idempotent), writes a slurm.conf under
# $HBT_SLURM_DIR and starts munged, slurmctld and the slurmd daemons.
#   bash slurm/local/up.sh                        one node 'localhost' (dir /tmp/hbt-slurm)
#   HBT_SLURM_NODES=2 bash slurm/local/up.sh      two nodes n1, n2 on loopback addresses
#                                                 127.0.0.2/3, one CPU each (dir /tmp/hbt-slurm2,
#                                                 its own ports: runs beside the one-node cluster)
# Afterwards: export SLURM_CONF=$HBT_SLURM_DIR/slurm.conf (printed at the end).
# The slurm.conf keys below are the ones measured to matter here (../shared/notes/local-slurm.md).
set -euo pipefail
nodes=${HBT_SLURM_NODES:-1}
[ "$nodes" = 1 ] || [ "$nodes" = 2 ] || { echo "slurm/local/up.sh: HBT_SLURM_NODES must be 1 or 2" >&2; exit 2; }
if [ "$nodes" = 1 ]; then dir=${HBT_SLURM_DIR:-/tmp/hbt-slurm}; else dir=${HBT_SLURM_DIR:-/tmp/hbt-slurm2}; fi
cpus=${HBT_SLURM_CPUS:-$(nproc)}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v mpirun >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev >/dev/null
fi

if [ "$nodes" = 1 ]; then
  names=(localhost)
  node_conf="SlurmctldPort=6817
SlurmdPort=6818
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
else
  # Node names must resolve on every "node" (MASTER_ADDR is the first node's name).
  names=(n1 n2)
  for i in 1 2; do
    grep -qE "^127\.0\.0\.$((i + 1))\s+n$i\b" /etc/hosts || echo "127.0.0.$((i + 1)) n$i" >>/etc/hosts
  done
  node_conf="SlurmctldPort=6917
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.2 Port=6918 CPUs=1 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.3 Port=6919 CPUs=1 State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP"
fi

mkdir -p "$dir"/{state,log}
cat >"$dir/slurm.conf" <<CONF
ClusterName=hbt-local${nodes#1}
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=4
ReturnToService=2
MpiDefault=none
$node_conf
CONF
export SLURM_CONF=$dir/slurm.conf

install -d -o munge -g munge /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running "$dir/slurmctld.pid" || slurmctld
for name in "${names[@]}"; do
  mkdir -p "$dir/spool-$name"
  running "$dir/slurmd-$name.pid" || slurmd -N "$name"
done
for _ in $(seq 100); do
  [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cx idle)" = "${#names[@]}" ] && break
  sleep 0.2
done
[ "$(sinfo -h -N -o %T | grep -cx idle)" = "${#names[@]}" ] || { echo "slurm/local/up.sh: nodes did not become idle; see $dir/log" >&2; exit 1; }
echo "export SLURM_CONF=$dir/slurm.conf"
