"""The test environment and the fixtures several modules share. The fixtures import
tests/helpers.py only when they run: it imports torch and hbt (seconds), which must
come after the environment set-up below, and which pytest-xdist's controller (it loads
this file too) never needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test workers share the cores: every process a test starts (and this worker's own
    # torch) computes on one thread, as the multi-rank tests already do, instead of two
    # workers' OpenMP pools spinning against each other on oversubscribed cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
# A process a test starts that dies in native code (a torchrun worker's SIGSEGV) prints
# its Python stack, so a crash in CI names its frame.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")


@pytest.fixture
def xquad_r() -> Path:
    from tests.helpers import XQUAD_R, need

    return need(XQUAD_R)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """One process of ``hbt train``, 12 steps without dropout: the losses every multi-rank
    launcher (torchrun, accelerate, mpirun, two Slurm nodes) must reproduce."""
    from tests.helpers import ok, overrides, run_hbt

    tmp = tmp_path_factory.mktemp("single")
    ok(run_hbt("train", *overrides(tmp, "run", "model.dropout=0.0", "train.max_steps=12")))
    return tmp / "run"


@pytest.fixture(scope="module")
def single_eval() -> dict:
    """The evaluation of tests/helpers.py's tiny encoder in this process: the reference of
    the multi-rank evaluation and of the evaluation in tiny blocks."""
    from tests.helpers import eval_world

    return eval_world(1)
