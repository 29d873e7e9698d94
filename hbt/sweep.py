"""Job arrays over alpha, seeds and configs with submitit, and the table and plot of
their evaluations against alpha.

On a machine with Slurm (``srun`` on PATH) submitit's AutoExecutor submits one array job;
elsewhere its LocalExecutor runs the jobs as local processes. Each job is an ordinary
``hbt train`` (multi-task jobs export torch.distributed's variables with submitit's
``TorchDistributedEnvironment``) in its own run directory, resumed with
``--resume auto`` if submitit requeues it. Waiting always has a deadline: without Slurm
accounting submitit never learns that a SIGKILLed job died.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from hbt.errors import InputError
from hbt.eval.report import latest_metrics

STRATEGIES = {"mono-only": 1.0, "cross-only": 0.0, "hybrid": 0.5}  # the paper's three, by name
COLUMNS = ["mono_map", "cross_map", "multi_map", "rank_spread", "own_language_first"]


@dataclass
class SweepSpec:
    configs: list[str]
    alphas: list[float]
    seeds: list[int]
    out: Path
    overrides: list[str] = field(default_factory=list)
    executor: str = "auto"  # auto | local | slurm
    tasks_per_node: int = 1
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    timeout_min: int = 60
    partition: str | None = None
    wait_timeout_s: float = 4 * 3600

    def runs(self) -> list[tuple[str, float, int, Path, list[str]]]:
        """(config, alpha, seed, run dir, overrides) of every job, in submission order."""
        out = []
        for config, alpha, seed in product(self.configs, self.alphas, self.seeds):
            run_dir = self.out / f"{Path(config).stem}-alpha{alpha:g}-seed{seed}"
            out.append((config, alpha, seed, run_dir,
                        [*self.overrides, f"run.dir={run_dir}", f"train.alpha={alpha}", f"run.seed={seed}"]))
        return out


def parse_alphas(alphas: str | None, strategies: str | None) -> list[float]:
    values: list[float] = []
    for name in filter(None, (strategies or "").split(",")):
        if name.strip() not in STRATEGIES:
            raise InputError("--strategies", f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
        values.append(STRATEGIES[name.strip()])
    for raw in filter(None, (alphas or "").split(",")):
        try:
            values.append(float(raw))
        except ValueError:
            raise InputError("--alphas", f"not a number: {raw!r}") from None
    if not values or any(not 0 <= a <= 1 for a in values):
        raise InputError("--alphas", "give alphas in [0, 1] (or --strategies)")
    return sorted(set(values))


class TrainJob:
    """What one array task runs: ``hbt train`` in-process. submitit pickles this object;
    ``checkpoint`` lets submitit requeue a pre-empted job, which then resumes."""

    def __call__(self, config: str, overrides: list[str]) -> str:
        import submitit

        from hbt.config import load_config
        from hbt.train import train

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return str(train(load_config(config, overrides), resume="auto"))

    def checkpoint(self, config: str, overrides: list[str]):
        import submitit

        return submitit.helpers.DelayedSubmission(self, config, overrides)


def submit(spec: SweepSpec) -> list:
    """Validate every job's config, then submit the array; returns submitit jobs."""
    import submitit

    from hbt.config import load_config

    runs = spec.runs()
    for config, _, _, _, overrides in runs:
        load_config(config, overrides)  # a bad config fails here, before anything is queued
    kind = None if spec.executor == "auto" else spec.executor
    executor = submitit.AutoExecutor(folder=spec.out / "submitit", cluster=kind)
    params = dict(timeout_min=spec.timeout_min, tasks_per_node=spec.tasks_per_node, nodes=spec.nodes,
                  cpus_per_task=spec.cpus_per_task, name="hbt-sweep")
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=len(runs), slurm_gpus_per_node=spec.gpus_per_node)
        if spec.partition:
            params["slurm_partition"] = spec.partition
    elif spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    executor.update_parameters(**params)
    return executor.map_array(TrainJob(), [r[0] for r in runs], [r[4] for r in runs])


def wait(jobs: list, timeout_s: float, poll_s: float = 2.0) -> list[str]:
    """Wait for every job, never longer than ``timeout_s``; cancel what is left then.
    Returns one line per job that failed or timed out (empty when all succeeded)."""
    logging.getLogger("submitit").setLevel(logging.ERROR)  # without accounting it warns on every poll
    deadline = time.monotonic() + timeout_s
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)
            return [f"job {job.job_id}: not done after {timeout_s:.0f} s, cancelled" for job in jobs if not job.done()]
        time.sleep(poll_s)
    problems = []
    for job in jobs:
        try:
            job.results()
        except Exception as e:  # the job's own traceback is in its submitit log
            problems.append(f"job {job.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
    return problems


def collect(spec: SweepSpec) -> list[dict]:
    """One row per job with its newest evaluation's headline numbers (missing: NaN)."""
    rows = []
    for config, alpha, seed, run_dir, _ in spec.runs():
        row = {"config": Path(config).stem, "alpha": alpha, "seed": seed, "run_dir": str(run_dir)}
        try:
            summary = json.loads(latest_metrics(run_dir).read_text())["summary"]
        except (InputError, FileNotFoundError):
            summary = {}
        rows.append(row | {k: summary.get(k, math.nan) for k in COLUMNS})
    return rows


def write_table_and_plot(rows: list[dict], out: Path) -> str:
    """Per-job CSV, a Markdown table of mean +- std over seeds per (config, alpha), and a
    plot of mean mono, cross and multilingual mAP and own-language-first share vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["config"], row["alpha"]), []).append(row)
    lines = ["| config | alpha | seeds | " + " | ".join(COLUMNS) + " |", "|---|---:|---:|" + "---:|" * len(COLUMNS)]
    for (config, alpha), group in sorted(groups.items()):
        cells = []
        for key in COLUMNS:
            values = np.array([r[key] for r in group], dtype=float)
            cells.append(f"{np.nanmean(values):.4f} ± {np.nanstd(values):.4f}" if np.isfinite(values).any() else "-")
        lines.append(f"| {config} | {alpha:g} | {len(group)} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(markdown)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for config in sorted({c for c, _ in groups}):
        alphas = sorted(a for c, a in groups if c == config)
        mean = lambda key: [np.nanmean([r[key] for r in groups[config, a]]) for a in alphas]  # noqa: E731
        for key, style in (("mono_map", "o-"), ("cross_map", "s-"), ("multi_map", "^-")):
            left.plot(alphas, mean(key), style, label=f"{config} {key}")
        right.plot(alphas, mean("own_language_first"), "o-", label=config)
    left.set_xlabel("alpha (share of monolingual batches)")
    left.set_ylabel("mAP")
    left.legend(fontsize=7)
    right.set_xlabel("alpha")
    right.set_ylabel("own-language-first share (bias)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    plt.close(fig)
    return markdown
