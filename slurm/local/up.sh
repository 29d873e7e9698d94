#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for CI and development (docs/launching.md).
# Installs Debian's Slurm, munge and Open MPI (idempotent), writes a slurm.conf under
# $HBT_SLURM_DIR (default /tmp/hbt-slurm) and starts munged, slurmctld and slurmd.
# Afterwards: export SLURM_CONF=$HBT_SLURM_DIR/slurm.conf (printed at the end).
# The slurm.conf keys below are the ones measured to matter here (../shared/notes/local-slurm.md).
set -euo pipefail
dir=${HBT_SLURM_DIR:-/tmp/hbt-slurm}
cpus=${HBT_SLURM_CPUS:-$(nproc)}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v mpirun >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev >/dev/null
fi

mkdir -p "$dir"/{state,spool,log}
cat >"$dir/slurm.conf" <<CONF
ClusterName=hbt-local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=4
ReturnToService=2
MpiDefault=none
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

install -d -o munge -g munge /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged
[ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null || slurmctld
[ -f "$dir/slurmd.pid" ] && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null || slurmd
for _ in $(seq 50); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && break
  sleep 0.2
done
sinfo -h -o %T | grep -qx idle || { echo "slurm/local/up.sh: node did not become idle; see $dir/log" >&2; exit 1; }
echo "export SLURM_CONF=$dir/slurm.conf"
