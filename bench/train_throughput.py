"""Training throughput of a config on 1 and 2 ranks (gloo on CPU, NCCL on GPUs).

Each run trains ``--steps`` optimizer steps with ``hbt train`` (torchrun for 2 ranks) and
reads samples/s from its metrics.jsonl, skipping the first ``--warmup`` steps. Runs
alternate between 1 and 2 ranks; the table gives medians over ``--rounds`` and the
2-rank / 1-rank ratio (scaling efficiency = ratio / 2).

    python bench/train_throughput.py [--config configs/tiny.yaml] [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: str, ranks: int, steps: int, warmup: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
        cmd = [*launcher, "-m", "hbt", "train", "--config", config, f"run.dir={tmp}/run", f"train.max_steps={steps}",
               "train.checkpoint_every=100000", "eval.every_epoch=false", "eval.settings=mono", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        rates = [r["samples_per_s"] for r in records][warmup:]
        return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import torch

    print(f"{os.cpu_count()} cores, torch {torch.__version__}, {args.config} {' '.join(args.overrides)}")
    results: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for ranks in results:
            results[ranks].append(run(args.config, ranks, args.steps, args.warmup, args.overrides))
    one = statistics.median(results[1])
    print("| ranks | samples/s (median) | runs | vs 1 rank | efficiency |")
    print("|---:|---:|---|---:|---:|")
    for ranks, rates in results.items():
        med = statistics.median(rates)
        print(f"| {ranks} | {med:.0f} | {', '.join(f'{r:.0f}' for r in rates)} | {med / one:.2f} | {med / one / ranks:.2f} |")


if __name__ == "__main__":
    main()
