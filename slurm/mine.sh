#!/bin/bash
# Mine hard negatives on a Slurm allocation, one task per GPU (docs/mining.md).
#
#   sbatch slurm/mine.sh MODEL_DIR DATA OUT [hbt mine options ...]
#   sbatch slurm/mine.sh intfloat/multilingual-e5-small ../shared/data/xquad-r runs/mined/xquad-r --query-prefix 'query: ' --passage-prefix 'passage: '
#   sbatch --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 slurm/mine.sh runs/tiny/model synthetic runs/mined/tiny   # CPU
#SBATCH --job-name=hbt-mine
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
usage="usage: sbatch slurm/mine.sh MODEL_DIR DATA OUT [hbt mine options]"
model=${1:?$usage}
data=${2:?$usage}
out=${3:?$usage}
shift 3
cd "${SLURM_SUBMIT_DIR:-.}"
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
srun "${HBT_PYTHON:-python}" -m hbt mine --model "$model" --data "$data" --out "$out" "$@" &
wait $!
