#!/usr/bin/env bash
# Stop the local one-node cluster started by slurm/local/up.sh (reverse order).
set -uo pipefail
dir=${HBT_SLURM_DIR:-/tmp/hbt-slurm}
for daemon in slurmd slurmctld; do
  pidfile=$dir/$daemon.pid
  [ -f "$pidfile" ] || continue
  kill "$(cat "$pidfile")" 2>/dev/null
  for _ in $(seq 50); do [ -f "$pidfile" ] || break; sleep 0.1; done
done
exit 0
