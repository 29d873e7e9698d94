"""Choosing a sweep's cell on its validation split (``hbt sweep --select CRITERION``): the
criterion read, every cell scored from the rows of :func:`hbt.sweep.collect`, the best
written as ``best.yaml`` (a config that reproduces it) beside the table that chose it,
and the sweep that retrains it on all the training titles (``--final``).

A criterion is ``SCORE[:CONSTRAINT,...]``: SCORE is ``mono``, ``cross``, ``multi`` (the
mAP of each setting) or ``mean(...)`` of them, maximised; a CONSTRAINT such as
``mono>=zero_shot`` (or ``own_language_first<0.6``) keeps only the cells where it holds,
``zero_shot`` being the same metric of the cell's untrained baseline on the same
validation titles. A cell is a config, a grid cell and an alpha (``--pool-alphas``: a
config and a grid cell, averaged over its alphas, so the choice favours no strategy);
its metrics are the mean over its seeds. Ties (scores within 1e-9) go to the cell that
comes first in the sweep's order (configs and grid values as given, alphas ascending),
so the same runs always choose the same cell and the user decides which goes first.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hbt.errors import InputError
from hbt.sweep import COLUMNS, ZERO_SHOT, SweepRun, SweepSpec, zero_shot_of
from hbt.sweep_grid import Grid

METRICS = {"mono": "mono_map", "cross": "cross_map", "multi": "multi_map", "rank_spread": "rank_spread",
           "own_language_first": "own_language_first"}
SCORES = ("mono", "cross", "multi")  # higher is better: what a criterion may maximise
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
TIE = 1e-9


@dataclass(frozen=True)
class Constraint:
    metric: str  # a name of METRICS
    op: str  # a key of OPS
    bound: float | None  # None: the zero-shot baseline's value of the same metric

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{'zero_shot' if self.bound is None else f'{self.bound:g}'}"


@dataclass(frozen=True)
class Criterion:
    text: str
    terms: tuple[str, ...]  # names of SCORES, averaged
    constraints: tuple[Constraint, ...] = ()

    @property
    def needs_zero_shot(self) -> bool:
        return any(c.bound is None for c in self.constraints)

    def score(self, metrics: dict[str, float]) -> float:
        return sum(metrics[METRICS[t]] for t in self.terms) / len(self.terms)


def parse_criterion(text: str) -> Criterion:
    """``multi``, ``mean(mono,cross,multi)``, ``multi:mono>=zero_shot,cross>0.4``."""
    head, colon, tail = text.partition(":")
    head = head.strip()
    inner = re.fullmatch(r"mean\((.*)\)", head)
    terms = tuple(t.strip() for t in inner.group(1).split(",")) if inner else (head,)
    for term in terms:
        if term not in SCORES:
            raise InputError("--select", f"{term!r} is not a score: choose {', '.join(SCORES)}, or mean(...) of them "
                                         f"(e.g. mean(mono,cross,multi)), then :CONSTRAINT,... if any")
    constraints = []
    for part in (p.strip() for p in tail.split(",")) if colon else ():
        match = re.fullmatch(r"(\w+)\s*(>=|<=|>|<)\s*(\S+)", part)
        if not match:
            raise InputError("--select", f"constraint {part!r} should look like METRIC>=zero_shot or METRIC<0.6")
        metric, op, bound = match.groups()
        if metric not in METRICS:
            raise InputError("--select", f"constraint {part!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
        try:
            value = None if bound == "zero_shot" else float(bound)
        except ValueError:
            raise InputError("--select", f"constraint {part!r}: compare with zero_shot or a number, not {bound!r}") from None
        constraints.append(Constraint(metric, op, value))
    return Criterion(text, terms, tuple(constraints))


@dataclass
class Candidate:
    """One cell's validation result."""

    config: str
    cell: str
    alpha: float | None  # None: averaged over alphas (--pool-alphas)
    rows: list[dict]
    metrics: dict[str, float] = field(default_factory=dict)
    score: float = math.nan
    problems: list[str] = field(default_factory=list)  # why it cannot be chosen (a constraint, missing runs)

    @property
    def eligible(self) -> bool:
        return not self.problems and math.isfinite(self.score)


def _mean(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if math.isfinite(float(r[key]))]
    return sum(values) / len(values) if values else math.nan


def candidates(rows: list[dict], criterion: Criterion, pool_alphas: bool = False) -> list[Candidate]:
    """Every cell in the sweep's order, scored; a cell missing a run's evaluation, or one
    its constraints (or a missing baseline) rule out, says why in ``problems``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["strategy"] != ZERO_SHOT:
            key = (row["config"], row["cell"]) + (() if pool_alphas else (row["alpha"],))
            groups.setdefault(key, []).append(row)
    out = []
    for key, group in groups.items():
        cand = Candidate(key[0], key[1], None if pool_alphas else key[2], group)
        cand.metrics = {k: _mean(group, k) for k in COLUMNS}
        cand.score = criterion.score(cand.metrics)
        missing = sum(not math.isfinite(criterion.score({k: float(r[k]) for k in COLUMNS})) for r in group)
        if missing:
            cand.problems.append(f"{missing} of {len(group)} runs without the criterion's metrics")
        zero = zero_shot_of(group[0], rows)
        for c in criterion.constraints:
            value = cand.metrics[METRICS[c.metric]]
            bound = c.bound if c.bound is not None else float(zero[METRICS[c.metric]]) if zero else math.nan
            if math.isnan(bound):
                cand.problems.append(f"{c.text}: no zero-shot result")
            elif not OPS[c.op](value, bound):
                cand.problems.append(f"{c.text} fails ({value:.4f} vs {bound:.4f})")
        out.append(cand)
    return out


def choose(cands: list[Candidate]) -> Candidate | None:
    """The eligible cell of the highest score; of tied ones (within :data:`TIE`) the first."""
    best = None
    for cand in cands:
        if cand.eligible and (best is None or cand.score > best.score + TIE):
            best = cand
    return best


def selection_markdown(cands: list[Candidate], chosen: Candidate | None, criterion: Criterion, rows: list[dict]) -> str:
    """The table that chose: one row per cell, then the zero-shot baselines."""
    names = [t for t in METRICS if t != "rank_spread"]
    lines = [f"### Selection on the validation titles: `{criterion.text}`", "",
             "Maximised over the cells below (metrics: mean over seeds); ties go to the first cell in the sweep's order.", "",
             "| chosen | config | cell | alpha | runs | " + " | ".join(names) + " | criterion | ruled out by |",
             "|---|---|---|---:|---:|" + "---:|" * (len(names) + 1) + "---|"]
    fmt = lambda v: "-" if math.isnan(v) else f"{v:.4f}"  # noqa: E731
    for cand in cands:
        alpha = "all" if cand.alpha is None else f"{cand.alpha:g}"
        lines.append(f"| {'**yes**' if cand is chosen else ''} | {cand.config} | {cand.cell or '-'} | {alpha} | {len(cand.rows)} | "
                     + " | ".join(fmt(cand.metrics[METRICS[n]]) for n in names)
                     + f" | {fmt(cand.score)} | {'; '.join(cand.problems)} |")
    for row in rows:
        if row["strategy"] == ZERO_SHOT:
            lines.append(f"| | {row['config']} | {row['cell'] or '-'} | zero-shot | 1 | "
                         + " | ".join(fmt(float(row[METRICS[n]])) for n in names) + " | | |")
    if chosen is None:
        lines += ["", "No cell meets the criterion: nothing is chosen."]
    return "\n".join(lines) + "\n"


def _chosen_run(spec: SweepSpec, chosen: Candidate, alpha: float) -> SweepRun:
    """The chosen cell's validation job at ``alpha`` (its first seed)."""
    return next(run for run in spec.runs() if run.alpha == alpha and Path(run.config).stem == chosen.config
                and run.cell.name == chosen.cell)


def final_spec(spec: SweepSpec, chosen: Candidate, seeds: list[int] | None = None,
               extra_alphas: list[float] | None = None) -> SweepSpec:
    """The sweep of ``--final``: ``OUT/best.yaml`` (every setting in it) at the chosen alpha
    (every alpha with ``--pool-alphas``), then ``extra_alphas`` (``--final-alphas``: e.g.
    the mono-only and cross-only baselines at the settings a hybrid chose), at ``seeds``
    (default: the sweep's), trained on all the training titles and evaluated on the test
    set, in ``OUT/final``. The chosen alpha comes first: best.yaml is written at it."""
    alphas = spec.alphas if chosen.alpha is None else [chosen.alpha]
    alphas = alphas + [a for a in extra_alphas or () if a not in alphas]
    return dataclasses.replace(spec, configs=[str(spec.out / "best.yaml")], alphas=alphas, seeds=seeds or spec.seeds,
                               out=spec.out / "final", overrides=[], grid=Grid(), split={})


def write_best(spec: SweepSpec, chosen: Candidate, criterion: Criterion, final_seeds: list[int] | None = None,
               final_alphas: list[float] | None = None) -> Path:
    """``OUT/best.yaml``: the chosen cell's resolved config, exactly as the first job of
    :func:`final_spec` runs it (at its alpha: the chosen one, the first with
    ``--pool-alphas``); with the split's overrides it is that alpha's validation job."""
    from hbt.config import load_config

    first = next(r for r in final_spec(spec, chosen, final_seeds, final_alphas).runs() if r.alpha is not None)
    run = _chosen_run(spec, chosen, first.alpha)
    overrides = [*spec.overrides, *run.cell.overrides(), f"train.alpha={first.alpha}", f"run.dir={first.run_dir}",
                 f"run.seed={first.seed}"]
    tree = load_config(run.config, overrides).to_dict()
    path = spec.out / "best.yaml"
    again = shlex.join([*spec.split.get(run.config, ()), f"run.dir={run.run_dir}", f"run.seed={run.seed}"])
    pooled = f" (the cell was scored over alphas {', '.join(f'{a:g}' for a in spec.alphas)}; train.alpha=A for another)"
    header = [f"# Chosen by hbt sweep --select '{criterion.text}' (table: selection.md): {run.config}",
              f"#   cell: {run.cell.label() or 'no grid'}; alpha {first.alpha:g}{pooled if chosen.alpha is None else ''}",
              f"#   validation score {chosen.score:.4f}, mean of {len(chosen.rows)} run(s)",
              "# On all the training titles, evaluated on the test titles (what --final runs first):",
              f"#   hbt train --config {shlex.quote(str(path))}",
              "# Its validation run again:",
              f"#   hbt train --config {shlex.quote(str(path))} {again}", ""]
    path.write_text("\n".join(header) + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def select(spec: SweepSpec, rows: list[dict], criterion: Criterion, pool_alphas: bool = False,
           final_seeds: list[int] | None = None, final_alphas: list[float] | None = None) -> tuple[Candidate | None, str]:
    """Score every cell of ``rows`` (the validation sweep's), write ``OUT/selection.md``
    and, when a cell is chosen, ``OUT/best.yaml``; returns the cell and the table."""
    cands = candidates(rows, criterion, pool_alphas)
    chosen = choose(cands)
    table = selection_markdown(cands, chosen, criterion, rows)
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / "selection.md").write_text(table)
    if chosen is not None:
        write_best(spec, chosen, criterion, final_seeds, final_alphas)
    return chosen, table
