"""Job arrays over configs, grid cells, alphas and seeds (plus each config's zero-shot base
model) with submitit, and the rows of their evaluations (hbt.sweep_report tabulates and
plots them, hbt.sweep_select chooses a cell from them).

On a machine with Slurm (``srun`` on PATH) submitit's AutoExecutor submits one array job;
elsewhere its LocalExecutor runs the jobs as local processes. Each job is an ordinary
``hbt train`` (multi-task jobs export torch.distributed's variables with submitit's
``TorchDistributedEnvironment``) in its own run directory, resumed with
``--resume auto`` if submitit requeues it. Waiting always has a deadline: without Slurm
accounting submitit never learns that a SIGKILLed job died.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Callable

from hbt.errors import InputError
from hbt.eval.debias import PREFIX as CENTERED
from hbt.eval.report import latest_metrics
from hbt.sweep_grid import Cell, Grid

STRATEGIES = {"mono-only": 1.0, "cross-only": 0.0, "hybrid": 0.5}  # the paper's three, by name
ZERO_SHOT = "zero-shot"
COLUMNS = ["mono_map", "cross_map", "multi_map", "rank_spread", "own_language_first"]
CENTERED_COLUMNS = [CENTERED + k for k in COLUMNS]  # the same under eval.debias=center (NaN without it)


def strategy_name(alpha: float | None) -> str:
    """The paper's name for an alpha ("hybrid" for 0.5), ``alpha=A`` otherwise; None is
    the zero-shot base model."""
    if alpha is None:
        return ZERO_SHOT
    return next((name for name, a in STRATEGIES.items() if a == alpha), f"alpha={alpha:g}")


@dataclass(frozen=True)
class SweepRun:
    """One job of the array: a config trained at one alpha and seed in its own run dir."""

    config: str
    alpha: float | None  # None: the zero-shot base model (train.max_steps=0, evaluation only)
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]
    cell: Cell = Cell()  # the grid's values (a zero-shot run: those outside the train section)

    @property
    def strategy(self) -> str:
        return strategy_name(self.alpha)


@dataclass
class SweepSpec:
    configs: list[str]
    alphas: list[float]
    seeds: list[int]
    out: Path
    overrides: list[str] = field(default_factory=list)
    zero_shot: bool = False  # also evaluate each config's untrained model, once
    executor: str = "auto"  # auto | local | slurm
    tasks_per_node: int = 1
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    timeout_min: int = 60
    partition: str | None = None
    max_parallel: int | None = None  # jobs running at once (default: all on Slurm, one at a time locally)
    wait_timeout_s: float = 4 * 3600
    grid: Grid = field(default_factory=Grid)  # --grid axes: every cell is trained at every alpha and seed
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)  # config -> its validation split's overrides

    def runs(self) -> list[SweepRun]:
        """Every job, in submission order: per config its zero-shot evaluations (with
        ``zero_shot``: one per combination of the grid's keys outside the train section,
        which alone can change an untrained model), then cells x alphas x seeds. A run
        directory is named ``CONFIG-CELL-alphaA-seedS`` (``CONFIG-CELL-zero-shot``)."""
        out = []
        for config in self.configs:
            stem = Path(config).stem
            base = (*self.overrides, *self.split.get(config, ()))
            if self.zero_shot:
                for cell in self.grid.cells(self.grid.untrained_keys()):
                    run_dir = self.out / "-".join(filter(None, (stem, cell.name, ZERO_SHOT)))
                    out.append(SweepRun(config, None, self.seeds[0], run_dir, (*base, *cell.overrides(), f"run.dir={run_dir}",
                                                                               f"run.seed={self.seeds[0]}", "train.max_steps=0"), cell))
            for cell in self.grid.cells():
                for alpha, seed in product(self.alphas, self.seeds):
                    run_dir = self.out / "-".join(filter(None, (stem, cell.name, f"alpha{alpha:g}", f"seed{seed}")))
                    out.append(SweepRun(config, alpha, seed, run_dir, (*base, *cell.overrides(), f"run.dir={run_dir}",
                                                                       f"train.alpha={alpha}", f"run.seed={seed}"), cell))
        return out


def parse_alphas(alphas: str | None, strategies: str | None, option: str = "--alphas") -> list[float]:
    """``--alphas`` and ``--strategies`` (or ``option``'s alphas alone) as train.alpha
    values, ascending and each once."""
    values: list[float] = []
    for name in filter(None, (strategies or "").split(",")):
        if name.strip() not in STRATEGIES:
            raise InputError("--strategies", f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
        values.append(STRATEGIES[name.strip()])
    for raw in filter(None, (alphas or "").split(",")):
        try:
            values.append(float(raw))
        except ValueError:
            raise InputError(option, f"not a number: {raw!r}") from None
    if not values or any(not 0 <= a <= 1 for a in values):
        raise InputError(option, "give alphas in [0, 1]" + (" (or --strategies)" if option == "--alphas" else ""))
    return sorted(set(values))


def parse_seeds(seeds: str, option: str = "--seeds") -> list[int]:
    """``--seeds 0,1,2`` (or ``option``'s) as run.seed values, in the order given (the first
    also seeds the zero-shot run); their range is checked with each job's config
    (:func:`run_sweep`)."""
    values: list[int] = []
    for raw in filter(None, (part.strip() for part in seeds.split(","))):
        try:
            values.append(int(raw))
        except ValueError:
            raise InputError(option, f"not an integer: {raw!r}") from None
    if not values:
        raise InputError(option, f"give comma-separated run.seed values, got {seeds!r}")
    return values


class TrainJob:
    """What one array task runs: ``hbt train`` in-process. submitit pickles this object;
    ``checkpoint`` lets submitit requeue a pre-empted job, which then resumes.

    submitit's own time-out/pre-emption signal (USR2 on Slurm) would requeue at once and
    exit mid-step, losing everything since the last periodic checkpoint. So hbt takes
    that signal like its own: every rank finishes the step and checkpoints; then rank 0
    hands the signal back to submitit's handler, which requeues the job (``checkpoint``
    below) and exits, and the requeued job resumes from that checkpoint."""

    def __call__(self, config: str, overrides: list[str]) -> str:
        import submitit

        from hbt import signals
        from hbt.config import load_config
        from hbt.train import start, train

        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        requeue_signal = getattr(signal, "SIG" + job.USR_SIG)  # the one submitit's handler requeues on
        submitit_handler = signal.getsignal(requeue_signal)
        signals.install(extra=(requeue_signal,))
        try:
            cfg = load_config(config, overrides)
            return str(train(cfg, start(cfg), resume="auto"))
        except signals.Preempted:
            signal.signal(requeue_signal, submitit_handler)
            if job.global_rank == 0:
                os.kill(os.getpid(), requeue_signal)  # submitit: checkpoint() -> requeue -> exit
                time.sleep(5)  # the handler runs before this returns
            time.sleep(120)  # other ranks: the requeue ends this process
            raise

    def checkpoint(self, config: str, overrides: list[str]):
        import submitit

        return submitit.helpers.DelayedSubmission(self, config, overrides)


def run_sweep(spec: SweepSpec, log: Callable[[str], None] = print) -> list[str]:
    """Validate every job's config, submit, and wait for all jobs, never longer than
    ``spec.wait_timeout_s`` in total. Slurm runs at most ``max_parallel`` array tasks at
    once (default: all); submitit's LocalExecutor has no such limit, so it gets the jobs in
    waves of ``max_parallel`` (default 1: each job's torch uses every core of the machine,
    and three at once on 2 cores took 3.2x as long as one after another). Returns one line
    per job that failed, timed out or never started."""
    import submitit

    from hbt.config import load_config
    from hbt.model import resolve_model_name

    runs = spec.runs()
    stems = [Path(c).stem for c in spec.configs]
    if len(set(stems)) < len(stems):  # their jobs would share run directories
        raise InputError("--config", f"two configs are named {next(s for s in stems if stems.count(s) > 1)!r}; rename one")
    for run in runs:  # a bad config or a missing model package fails here, before anything is queued
        try:
            cfg = load_config(run.config, list(run.overrides))
        except InputError as e:  # the keys the sweep sets itself are named by the option that set them
            option = {"run.seed": "--seeds", "train.alpha": "--alphas"}.get(e.where)
            if option is None:
                raise
            raise InputError(f"{option} ({e.where})", e.problem) from None
        resolve_model_name(cfg.model.name)
    kind = None if spec.executor == "auto" else spec.executor
    executor = submitit.AutoExecutor(folder=spec.out / "submitit", cluster=kind)
    width = spec.max_parallel or (len(runs) if executor.cluster == "slurm" else 1)
    params = dict(timeout_min=spec.timeout_min, tasks_per_node=spec.tasks_per_node, nodes=spec.nodes,
                  cpus_per_task=spec.cpus_per_task, name="hbt-sweep")
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=width, slurm_gpus_per_node=spec.gpus_per_node)
        if spec.partition:
            params["slurm_partition"] = spec.partition
        width = len(runs)  # Slurm enforces the limit itself: one array
    elif spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    executor.update_parameters(**params)
    deadline = time.monotonic() + spec.wait_timeout_s
    problems: list[str] = []
    for start in range(0, len(runs), width):
        wave = runs[start:start + width]
        if time.monotonic() >= deadline:
            problems += [f"{run.run_dir.name}: not started, --wait-timeout passed" for run in wave]
            continue
        jobs = executor.map_array(TrainJob(), [r.config for r in wave], [list(r.overrides) for r in wave])
        log(f"submitted {len(jobs)} jobs ({', '.join(j.job_id for j in jobs)}); logs in {spec.out / 'submitit'}")
        problems += wait(jobs, deadline - time.monotonic(), progress=lambda wave=wave: steps_done(wave))
    return problems


def steps_done(runs: list[SweepRun]) -> str:
    """Each run's last logged step (its metrics.jsonl's last line), for the progress bar."""
    parts = []
    several = len({run.config for run in runs}) > 1
    for run in runs:
        step = "-"
        try:
            with (run.run_dir / "metrics.jsonl").open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                step = str(json.loads(f.read().splitlines()[-1])["step"])
        except (OSError, ValueError, IndexError, KeyError):
            pass
        name = "/".join(filter(None, (Path(run.config).stem if several else "", run.cell.name, run.strategy)))
        parts.append(f"{name}{'' if run.seed == 0 else f'/seed{run.seed}'}: {step}")
    return ", ".join(parts)


def wait(jobs: list, timeout_s: float, poll_s: float = 2.0, progress: Callable[[], str] | None = None) -> list[str]:
    """Wait for every job, never longer than ``timeout_s``; cancel what is left then. A
    progress bar counts the jobs done; ``progress`` gives its text (each job's step).
    Returns one line per job that failed or timed out (empty when all succeeded)."""
    from tqdm import tqdm

    logging.getLogger("submitit").setLevel(logging.ERROR)  # without accounting it warns on every poll
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(jobs), desc="jobs done", unit="job", mininterval=10) as bar:
        while not all(job.done() for job in jobs):
            if time.monotonic() > deadline:
                for job in jobs:
                    if not job.done():
                        job.cancel(check=False)
                return [f"job {job.job_id}: not done after {timeout_s:.0f} s, cancelled" for job in jobs if not job.done()]
            time.sleep(poll_s)
            if progress is not None:
                bar.set_postfix_str(f"steps {progress()}", refresh=False)
            bar.update(sum(job.done() for job in jobs) - bar.n)  # draws at most every mininterval
        bar.update(len(jobs) - bar.n)
    problems = []
    for job in jobs:
        try:
            job.results()
        except Exception as e:  # the job's own traceback is in its submitit log
            problems.append(f"job {job.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
    return problems


def collect(spec: SweepSpec) -> list[dict]:
    """One row per job with its newest evaluation's headline numbers (missing: NaN), its
    cell's name and one column per grid key (dotted, as in a config; a zero-shot row
    leaves the train section's empty)."""
    rows = []
    for run in spec.runs():
        settings = dict(run.cell.settings)
        row = {"config": Path(run.config).stem, "cell": run.cell.name, "strategy": run.strategy,
               "alpha": "" if run.alpha is None else run.alpha, "seed": run.seed, "run_dir": str(run.run_dir),
               **{key: settings.get(key, "") for key in spec.grid.keys}}
        try:
            summary = json.loads(latest_metrics(run.run_dir).read_text())["summary"]
        except (InputError, FileNotFoundError):
            summary = {}
        rows.append(row | {k: summary.get(k, math.nan) for k in COLUMNS + CENTERED_COLUMNS})
    return rows


def grid_settings(row: dict) -> dict[str, str]:
    """A row's grid values: its dotted columns that are set (:func:`collect`)."""
    return {k: v for k, v in row.items() if "." in k and v != ""}


def zero_shot_of(row: dict, rows: list[dict]) -> dict | None:
    """The zero-shot row that is ``row``'s untrained baseline: same config, and its grid
    values (those outside the train section) the row's; None without one. The tables
    and the selection's ``zero_shot`` constraints both read it from here."""
    settings = grid_settings(row)
    for other in rows:
        if other["strategy"] == ZERO_SHOT and other["config"] == row["config"] and \
                grid_settings(other).items() <= settings.items():
            return other
    return None
