#!/usr/bin/env bash
# The device check of hbt's GPU path, in one call (at most 8.5 minutes by its parts' limits):
#   1. packed against padded encoding on CUDA: FlashAttention's varlen kernel in bf16
#      (1e-2 relative), the attention groups in fp32 (1e-5), compiled flex_attention (the
#      fallback where varlen_attn is missing) in fp32   tests/unit/test_padding.py -k cuda
#   2. the one-rank cells of the configuration matrix on CUDA, fp32 and bf16, each with
#      its gradient check and the optimizer class DeepSpeed built   tests/integration/test_matrix.py -k 1rank
#   3. training-step throughput and model FLOPs utilisation of bare / bare packed / bare
#      packed through flex_attention / hbt / hbt padded / st MNRL at contrastive batch 32, 128 and 512 on a random-weight
#      e5-small-sized encoder   bench/train_step.py --preset e5-sized
# A GPU machine may reach no package registry: what hbt needs beyond the GPU image is
# installed from the wheels in .whl/ (bench/gpu_wheels.sh writes them; carry .whl). The
# model is made there (bench/e5_sized.py), so nothing large travels. Without a CUDA GPU
# it says so and exits 0 (CI runs it that way, to check that it parses and starts).
# Each part has its own time limit; the log also goes to $OUT/gpu_check.log when $OUT is set.
#
#   bash bench/gpu_wheels.sh                 # here, once
#   bash bench/gpu_check.sh                  # there (device tool: carry .whl)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$log") 2>&1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is false): nothing to check"
    exit 0
fi
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hbt-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/hbt-site:$PWD
else
    echo "gpu_check: no .whl/ (bash bench/gpu_wheels.sh writes it): using what is installed"
    export PYTHONPATH=$PWD
fi
failed=()
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cuda PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PY'
import torch, transformers, deepspeed
from hbt import padding
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"deepspeed {deepspeed.__version__}, varlen_attn {'available' if padding.varlen_attn is not None else 'missing'}")
PY

part() {  # part NAME SECONDS COMMAND...: run one part under its own limit, say how long it took
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo; echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@" || failed+=("$name (exit $?)")
    echo "=== $name: $((SECONDS - start)) s"
}
"$PY" -c "from hbt import padding; import sys; sys.exit(padding.varlen_attn is None)" ||
    failed+=("torch.nn.attention.varlen missing: packed attention on CUDA is not one varlen call here")
part "packed vs padded on CUDA" 90 "$PY" -m pytest -q -n 0 -p no:cacheprovider tests/unit/test_padding.py -k cuda -rs
part "one-rank matrix on CUDA" 150 "$PY" -m pytest -q -n 0 -p no:cacheprovider tests/integration/test_matrix.py -k 1rank -s
# batch 128 first: the figure the targets are about; each table prints as soon as it is done
part "training step, e5-small-sized" 270 "$PY" bench/train_step.py --preset e5-sized --batch 128,512,32 --rounds 1 \
    --steps 15 --warmup 3 --contenders bare,bare-chunked,bare-flex,hbt,hbt-padded,st-mnrl --chunk-tokens packed

echo
if [ ${#failed[@]} -gt 0 ]; then
    printf 'gpu_check: failed: %s\n' "${failed[@]}"
    exit 1
fi
echo "gpu_check: all parts passed in $SECONDS s"
