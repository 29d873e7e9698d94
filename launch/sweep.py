"""The paper's comparison as a submitit job array, from Python.

    python launch/sweep.py configs/tiny.yaml --out runs/sweep-tiny          # anywhere (local or Slurm)
    python launch/sweep.py configs/xlmr-base-hybrid.yaml --gpus 8 --seeds 0 1 2

The same as ``hbt sweep --config CONFIG --alphas 0,0.25,0.5,0.75,1 --seeds ...``; this file
shows the Python API (hbt.sweep) for notebooks and custom grids.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hbt.sweep import SweepSpec, collect, run_sweep
from hbt.sweep_report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node = ranks per node (0: one CPU rank)")
    parser.add_argument("--zero-shot", action="store_true", help="also evaluate the untrained model")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--wait-hours", type=float, default=24)
    args, overrides = parser.parse_known_args()
    spec = SweepSpec(configs=[args.config], alphas=args.alphas, seeds=args.seeds, out=Path(args.out), overrides=overrides,
                     zero_shot=args.zero_shot, tasks_per_node=max(1, args.gpus), gpus_per_node=args.gpus,
                     cpus_per_task=8 if args.gpus else 1,
                     timeout_min=24 * 60 if args.gpus else 60, wait_timeout_s=args.wait_hours * 3600)
    for problem in run_sweep(spec):
        print(problem)
    print(write_report(collect(spec), spec.out))


if __name__ == "__main__":
    main()
