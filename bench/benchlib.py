"""What every benchmark here shares: the machine line, contenders run alternately for
several rounds (so drift and noise hit all of them alike), fresh child processes, and
the Markdown table of medians with ratios against a baseline."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

# The hbt of this checkout, not an installed copy (an editable install may point at another worktree).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> str:
    """The line printed above every table: what the figures were measured on."""
    import torch

    try:
        import deepspeed

        ds = f", deepspeed {deepspeed.__version__}"
    except ImportError:
        ds = ""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores, {gpu}, torch {torch.__version__}{ds}, Python {platform.python_version()}"


def alternate(contenders: dict[str, Callable[[], dict]], rounds: int) -> dict[str, list[dict]]:
    """Each round runs every contender once, in order; returns every run's result."""
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            results[name].append(run())
    return results


def child(cmd: Sequence[str], env: dict | None = None) -> dict:
    """Run a measurement in a fresh process (its own peak memory, no warm caches) and
    return the JSON object on its last stdout line; exit with its stderr if it failed."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_table(results: dict[str, list[dict]], columns: dict[str, str], ratios: Sequence[str], label: str,
                 runs_of: str | None = None, digits: int = 2) -> str:
    """Markdown: one row per contender with the median of each column over its runs, and
    for each column in ``ratios`` its median divided by the first contender's; ``runs_of``
    also lists every run's value of one column (the spread)."""
    names = list(results)
    med = {n: {k: statistics.median(r[k] for r in results[n]) for k in columns} for n in names}
    header = [label, *columns.values()] + (["runs"] if runs_of else []) + [f"{columns[k]} vs {names[0]}" for k in ratios]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for n in names:
        cells = [f"{med[n][k]:,.{digits}f}" for k in columns]
        if runs_of:
            cells.append(", ".join(f"{r[runs_of]:,.{digits}f}" for r in results[n]))
        cells += [f"{med[n][k] / med[names[0]][k]:.2f}" for k in ratios]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
