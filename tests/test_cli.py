"""The command line lists its subcommands, and every subcommand has --help."""

from __future__ import annotations

import pytest

from tests.conftest import run_hbt

SUBCOMMANDS = [["data"], ["data", "stats"], ["data", "sample"], ["config"], ["train"], ["eval"], ["report"], ["sweep"]]


def test_top_level_help_lists_subcommands() -> None:
    out = run_hbt("--help")
    assert out.returncode == 0
    for name in ("data", "config", "train", "eval", "report", "sweep"):
        assert name in out.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c))
def test_every_subcommand_has_help(command: list[str]) -> None:
    out = run_hbt(*command, "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: hbt " + " ".join(command))


def test_data_sample_prints_the_mix() -> None:
    out = run_hbt("data", "sample", "synthetic:items=400,languages=3", "--batch-size", "16", "--alpha", "0.25")
    assert out.returncode == 0, out.stderr
    assert "epoch 0: 25 contrastive batches of 16, 6 mono (0.24), 19 cross" in out.stdout
