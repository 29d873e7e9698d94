"""Shared fixtures. ``../shared`` (data and models that cannot be fetched) sits beside the
repository on developer machines and in CI; a user's fresh clone may not have it, so
tests that need it skip with a reason instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test workers share the cores: every process a test starts (and this worker's own
    # torch) computes on one thread, as the multi-rank tests already do, instead of two
    # workers' OpenMP pools spinning against each other on oversubscribed cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
# A process a test starts that dies in native code (a torchrun worker's SIGSEGV) prints
# its Python stack, so a crash in CI names its frame.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
SHARED = ROOT.parent / "shared"
XQUAD_R = SHARED / "data" / "xquad-r"
ME5_SMALL = SHARED / "models" / "me5-small-xquad"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared beside the repository)")
    return path


@pytest.fixture
def xquad_r() -> Path:
    return need(XQUAD_R)


def run_hbt(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the ``hbt`` command line as a user would, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "hbt", *args], capture_output=True, text=True, cwd=cwd or ROOT,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
