"""What a finished sweep leaves behind: per-job CSV, one Markdown table per config (per
config and grid cell under ``--grid``: mean and spread over seeds per strategy, with the
cell's zero-shot baseline), the alpha curves, and each group's cross-lingual heatmaps
side by side (zero-shot, mono-only, hybrid, cross-only; mean over seeds).

These are the figures of docs/REPLICATION.md; ``hbt sweep`` writes them after its jobs
end, and ``hbt sweep --report-only`` rewrites them from the run directories.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from hbt.eval.report import draw_heatmap, latest_metrics, map_matrix
from hbt.sweep import CENTERED, CENTERED_COLUMNS, COLUMNS, STRATEGIES, ZERO_SHOT, grid_settings, zero_shot_of

NAMES = {"mono_map": "mono mAP", "cross_map": "cross mAP", "multi_map": "multilingual mAP",
         "rank_spread": "rank spread", "own_language_first": "own-language first"}
CURVES = (("mono_map", "tab:blue"), ("cross_map", "tab:orange"), ("multi_map", "tab:green"))
HEATMAP_ORDER = (ZERO_SHOT, "mono-only", "hybrid", "cross-only")


def group_name(row: dict) -> str:
    """What a table, a plot panel and a heatmap file are named by: the config, and under
    a grid its cell (``tiny-lr0.001``), as the run directories are."""
    return "-".join(filter(None, (row["config"], row.get("cell", ""))))


def _heading(group: list[dict]) -> str:
    settings = grid_settings(group[0])
    return group_name(group[0]) + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")


def _groups(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """group (:func:`group_name`) -> strategy -> rows; each group with its zero-shot
    baseline (:func:`hbt.sweep.zero_shot_of`); strategies ordered zero-shot first, then
    alpha high to low."""
    out: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        if row["strategy"] != ZERO_SHOT:
            out.setdefault(group_name(row), {}).setdefault(row["strategy"], []).append(row)
    for by_strategy in out.values():
        zero = zero_shot_of(next(iter(by_strategy.values()))[0], rows)
        if zero is not None:
            by_strategy[ZERO_SHOT] = [zero]

    def order(item: tuple[str, list[dict]]) -> float:
        alpha = item[1][0]["alpha"]
        return -math.inf if alpha == "" else -alpha  # "" is the zero-shot row

    return {config: dict(sorted(by.items(), key=order)) for config, by in out.items()}


def _stats(group: list[dict], key: str) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std NaN for one seed)."""
    values = np.array([r[key] for r in group], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _cell(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_tables(rows: list[dict]) -> str:
    """One table per group: a row per strategy, mean ± std over seeds of each column; and
    where the runs evaluated with ``eval.debias=center``, the centred figures in a second
    table beside it (the baseline hybrid batches should beat)."""
    parts = []
    for by_strategy in _groups(rows).values():
        trained = next(g for s, g in by_strategy.items() if s != ZERO_SHOT)
        parts.append(_table(f"### {_heading(trained)}", by_strategy, COLUMNS))
        if any(math.isfinite(float(r.get(CENTERED_COLUMNS[0], math.nan))) for g in by_strategy.values() for r in g):
            parts.append(_table(f"#### {_heading(trained)}, centred (eval.debias=center)", by_strategy, CENTERED_COLUMNS))
    return "\n".join(parts)


def _table(heading: str, by_strategy: dict[str, list[dict]], keys: list[str]) -> str:
    lines = [heading, "", "| strategy | alpha | seeds | " + " | ".join(NAMES[k.removeprefix(CENTERED)] for k in keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for strategy, group in by_strategy.items():
        alpha = group[0]["alpha"]
        cells = [_cell(*_stats(group, key), 1 if key.endswith("rank_spread") else 4) for key in keys]
        done = sum(math.isfinite(float(r[keys[0]])) for r in group)
        lines.append(f"| {strategy} | {'-' if alpha == '' else f'{alpha:g}'} | {done} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def alpha_curves(rows: list[dict], path: Path) -> None:
    """Per group: mean mAP (mono, cross, multilingual; bars: std over seeds) and the
    own-language-first share against alpha; the zero-shot model as dashed lines. At most
    six groups a row of panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(rows)
    cols = min(6, len(groups))
    lines = -(-len(groups) // cols)
    fig, axes = plt.subplots(2 * lines, cols, figsize=(4.2 * cols, 6.4 * lines), squeeze=False, sharex=True)
    for n in range(len(groups), lines * cols):  # the last row's empty places
        axes[2 * (n // cols), n % cols].set_visible(False)
        axes[2 * (n // cols) + 1, n % cols].set_visible(False)
    for n, (group, by_strategy) in enumerate(groups.items()):
        trained = {g[0]["alpha"]: g for g in by_strategy.values() if g[0]["alpha"] != ""}
        alphas = sorted(trained)
        zero = by_strategy.get(ZERO_SHOT)
        top, bottom = axes[2 * (n // cols), n % cols], axes[2 * (n // cols) + 1, n % cols]
        for key, colour in (*CURVES, ("own_language_first", "tab:red")):
            ax = bottom if key == "own_language_first" else top
            stats = [_stats(trained[a], key) for a in alphas]
            ax.errorbar(alphas, [m for m, _ in stats], yerr=[0 if math.isnan(s) else s for _, s in stats], fmt="o-",
                        color=colour, capsize=3, label=NAMES[key])
            if zero:
                ax.axhline(_stats(zero, key)[0], color=colour, linestyle="--", linewidth=1)
        top.set_title(group, fontsize=9)
        top.set_ylabel("mAP (dashed: zero-shot)")
        bottom.set_ylabel("own-language-first share")
        bottom.set_xlabel("alpha (share of monolingual batches)")
        top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


Panel = tuple[str, int, list[str], list[str], np.ndarray]  # strategy, seeds, query and candidate languages, mAP


def _panels(by_strategy: dict[str, list[dict]]) -> list[Panel]:
    """Per strategy of HEATMAP_ORDER with results: its cross-lingual mAP matrix, the mean over seeds."""
    panels = []
    for strategy in HEATMAP_ORDER:
        matrices = []
        for row in by_strategy.get(strategy, []):
            try:
                langs_q, langs_c, matrix = map_matrix(json.loads(latest_metrics(Path(row["run_dir"])).read_text()))
            except (OSError, ValueError):
                continue
            matrices.append(matrix)
        if matrices:
            panels.append((strategy, len(matrices), langs_q, langs_c, np.nanmean(matrices, axis=0)))
    return panels


def strategy_heatmaps(group: str, by_strategy: dict[str, list[dict]], path: Path) -> bool:
    """The group's cross-lingual mAP matrices, one panel per strategy (mean over seeds),
    on one colour scale; False when no strategy of HEATMAP_ORDER has results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(by_strategy)
    if not panels:
        return False
    top = max(float(np.nanmax(m)) for *_, m in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.9), squeeze=False)
    for ax, (strategy, seeds, langs_q, langs_c, matrix) in zip(axes[0], panels):
        alpha = "" if strategy == ZERO_SHOT else f", alpha {STRATEGIES[strategy]:g}"
        image = draw_heatmap(ax, langs_q, langs_c, matrix, f"{group}: {strategy}{alpha}\nmAP, mean of {seeds} seed(s)", vmax=top)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.015, pad=0.01, label="mAP")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def markdown_heatmaps(rows: list[dict]) -> str:
    """The heatmaps as Markdown tables (query language down, candidate language across;
    the diagonal is monolingual), readable in a terminal where no picture is."""
    parts = []
    for group, by_strategy in _groups(rows).items():
        for strategy, seeds, langs_q, langs_c, matrix in _panels(by_strategy):
            lines = [f"#### {group}: {strategy}, mAP by query (down) and candidate (across) language, "
                     f"mean of {seeds} seed(s)", "", "| | " + " | ".join(langs_c) + " |", "|---|" + "---:|" * len(langs_c)]
            lines += [f"| {x} | " + " | ".join("-" if math.isnan(v) else f"{v:.2f}" for v in row) + " |"
                      for x, row in zip(langs_q, matrix)]
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_report(rows: list[dict], out: Path) -> str:
    """sweep.csv, sweep.md (the tables and the heatmaps as tables), sweep.png (alpha
    curves) and heatmaps-GROUP.png (:func:`group_name`) in ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    markdown = markdown_tables(rows) + "\n" + markdown_heatmaps(rows)
    (out / "sweep.md").write_text(markdown)
    alpha_curves(rows, out / "sweep.png")
    for group, by_strategy in _groups(rows).items():
        strategy_heatmaps(group, by_strategy, out / f"heatmaps-{group}.png")
    return markdown
