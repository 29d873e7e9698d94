"""README's first command, as a newcomer runs it on a fresh machine (no Slurm: local jobs,
one after another): the tiny preset learns cross-lingual retrieval on the synthetic
corpus only from cross-lingual batches, so the three strategies show the paper's
trade-off."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_hbt

pytestmark = pytest.mark.slow


def first_run_command() -> list[str]:
    """README's first command, after ``pip install ... &&``."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("pip install") and "hbt sweep" in line)
    return line.split(" && ", 1)[1].split()


def test_first_run_shows_what_hybrid_batches_do(tmp_path: Path) -> None:
    """Mono-only best within a language and at chance across, cross-only best across,
    hybrid between on both, language bias falling with alpha; the table and the heatmaps
    (as tables) printed, the PNGs written."""
    command = first_run_command()
    assert command[:2] == ["hbt", "sweep"] and "--out" in command
    out = tmp_path / "first-run"
    command[command.index("--out") + 1] = str(out)
    # options before README's trailing overrides (argparse takes no option after them)
    result = run_hbt(command[1], "--executor", "local", *command[2:], f"data.cache_dir={tmp_path}/cache", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "sweep.csv").open() as f:
        by = {r["strategy"]: {k: float(v) for k, v in r.items() if k.endswith(("map", "first"))} for r in csv.DictReader(f)}
    mono, hybrid, cross = by["mono-only"], by["hybrid"], by["cross-only"]
    assert mono["mono_map"] > hybrid["mono_map"] > cross["mono_map"] > 0.6
    assert mono["cross_map"] < 0.05 < 0.2 < hybrid["cross_map"] < cross["cross_map"]
    assert mono["own_language_first"] > hybrid["own_language_first"] > cross["own_language_first"]
    assert "| hybrid | 0.5 | 1 |" in result.stdout and result.stdout.count("mAP by query (down) and candidate") == 3
    assert (out / "sweep.png").stat().st_size > 5000 and (out / "heatmaps-tiny.png").stat().st_size > 10000
