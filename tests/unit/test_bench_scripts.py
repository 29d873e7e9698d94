"""The device check (bench/gpu_check.sh) runs where CI does: without a GPU it parses,
says so in one line and exits 0; on a GPU it is run by hand (docs/BENCHMARKS.md §1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for real (minutes): run it by hand")
def test_the_device_check_without_a_gpu_says_so_and_exits_0(tmp_path) -> None:
    assert subprocess.run(["bash", "-n", "bench/gpu_check.sh"], cwd=ROOT).returncode == 0  # the whole script parses
    out = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "gpu_check: no CUDA GPU here (torch.cuda.is_available() is false): nothing to check"
    assert (tmp_path / "gpu_check.log").read_text().strip() == out.stdout.strip()
