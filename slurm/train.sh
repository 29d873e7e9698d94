#!/bin/bash
# Train with hbt on a Slurm allocation: one task per GPU, started by srun.
#
#   sbatch slurm/train.sh CONFIG [section.key=value ...]
#   sbatch --nodes=4 slurm/train.sh configs/xlmr-base-hybrid.yaml train.alpha=0.5
#   sbatch --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 slurm/train.sh configs/tiny.yaml   # CPU
#
# Every #SBATCH default below can be overridden on the sbatch command line. Pre-emption:
# Slurm sends USR1 to the ranks 120 s before the time limit (--signal=USR1@120); they
# finish the step, checkpoint and exit 75; this script then requeues the job, which
# resumes from the checkpoint (--resume auto). `scontrol requeue JOB` works the same way.
# Logs: the batch log (slurm-<name>-<job>.out, appended across requeues) and one log per
# rank in RUN_DIR/logs/. srun keeps its default --kill-on-bad-exit=0: a rank that exits 75
# first must not get its peers killed while they finish the same checkpoint.
#SBATCH --job-name=hbt-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
config=${1:?usage: sbatch slurm/train.sh CONFIG [section.key=value ...]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
python=${HBT_PYTHON:-python}

run_dir=$("$python" -m hbt config --config "$config" "$@" --get run.dir) || exit 2  # bad config: stop before srun
mkdir -p "$run_dir/logs"
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "hbt: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, $SLURM_NTASKS tasks, run dir $run_dir"

srun --open-mode=append --output "$run_dir/logs/train-%j-%t.log" \
  "$python" -m hbt train --config "$config" --resume auto "$@" &
wait $!
rc=$?
if [ "$rc" -eq 75 ]; then  # pre-empted and checkpointed: come back
  echo "hbt: checkpointed after a signal; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
