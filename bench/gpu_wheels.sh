#!/usr/bin/env bash
# The wheels bench/gpu_check.sh installs on a GPU machine that reaches no package registry,
# written into .whl/ (git-ignored) on a machine that does. The GPU image has torch, CUDA,
# numpy, pandas, pyarrow, tokenizers, huggingface-hub and sentence-transformers; this adds
# what hbt needs beyond it, at the versions hbt is tested with here, for CPython 3.12 on
# x86-64. DeepSpeed has no wheel on PyPI: it is built here, without its compiled ops (hbt
# uses torch's fused AdamW, not DeepSpeed's), which makes it pure Python.
#
#   bash bench/gpu_wheels.sh            # then carry .whl to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
mkdir -p "$out"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
binary=(pydantic-core multiprocess)
pure=(hjson pydantic annotated-types typing-inspection datasets dill transformers sentence-transformers)
for name in "${binary[@]}"; do
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
        -d "$out" "$name==$(version "$name")"
done
for name in "${pure[@]}"; do
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$out" "$name==$(version "$name")"
done
if ! ls "$out"/deepspeed-*.whl >/dev/null 2>&1; then
    DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w "$out" "deepspeed==$(version deepspeed)"
fi
ls -la "$out"
du -sh "$out"
