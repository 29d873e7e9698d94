#!/bin/bash
# Evaluate an encoder on a Slurm allocation, one task per GPU (docs/metrics.md).
#
#   sbatch slurm/eval.sh MODEL_DIR DATA [hbt eval options ...]
#   sbatch slurm/eval.sh runs/xlmr-base-hybrid/model ../shared/data/xquad-r --out runs/xlmr-base-hybrid/eval-xquad
#   sbatch --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 slurm/eval.sh runs/tiny/model ../shared/data/xquad-r   # CPU
#SBATCH --job-name=hbt-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
model=${1:?usage: sbatch slurm/eval.sh MODEL_DIR DATA [hbt eval options]}
data=${2:?usage: sbatch slurm/eval.sh MODEL_DIR DATA [hbt eval options]}
shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
srun "${HBT_PYTHON:-python}" -m hbt eval --model "$model" --data "$data" "$@" &
wait $!
