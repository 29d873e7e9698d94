#!/usr/bin/env bash
# Stop a local cluster started by slurm/local/up.sh (reverse order); HBT_SLURM_NODES=2 for
# the two-node one.
set -uo pipefail
if [ "${HBT_SLURM_NODES:-1}" = 1 ]; then dir=${HBT_SLURM_DIR:-/tmp/hbt-slurm}; else dir=${HBT_SLURM_DIR:-/tmp/hbt-slurm2}; fi
for pidfile in "$dir"/slurmd-*.pid "$dir/slurmctld.pid"; do
  [ -f "$pidfile" ] || continue
  kill "$(cat "$pidfile")" 2>/dev/null
  for _ in $(seq 50); do [ -f "$pidfile" ] || break; sleep 0.1; done
done
exit 0
