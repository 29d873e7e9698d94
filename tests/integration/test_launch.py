"""The launchers users start hbt with, for real: accelerate launch (CPU 2-process config)
and mpirun with Open MPI + mpi4py. Both must run 2 ranks that share each contrastive
batch: their per-step losses equal a single process's (dropout off), which is only true
when the ranks trained on disjoint slices of the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, hbt_command, losses, need_cluster, ok, overrides

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("launch")]  # one worker: its module fixture (single_run) is built once
ARGS = ("model.dropout=0.0", "train.max_steps=12")


def check_two_ranks(run_dir: Path, launcher: str, reference: Path) -> None:
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch == {"launcher": launcher, "world_size": 2, "per_rank_batch": 8}
    got, ref = losses(run_dir), losses(reference)
    assert got.keys() == ref.keys() and max(abs(got[s] - ref[s]) for s in ref) < 1e-4


def test_accelerate_launch_two_processes(tmp_path: Path, single_run: Path) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/accelerate/cpu-2proc.yaml",
           "--main_process_port", "0", "-m", "hbt", "train", *overrides(tmp_path, "acc", *ARGS)]
    ok(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    check_two_ranks(tmp_path / "acc", "torchrun", single_run)


def test_mpirun_two_processes(tmp_path: Path, single_run: Path) -> None:
    # Checked in a child: importing mpi4py.MPI here would initialise MPI in the test
    # process, and mpirun refuses to start from inside an MPI process.
    have = shutil.which("mpirun") is not None and subprocess.run(
        [sys.executable, "-c", "from mpi4py import MPI"], capture_output=True).returncode == 0
    need_cluster(have, "mpirun or mpi4py is missing", "Debian openmpi-bin and mpi4py; slurm/local/up.sh installs both")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "OMP_NUM_THREADS=1",
           *hbt_command("train", *overrides(tmp_path, "mpi", *ARGS))]
    ok(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300))
    check_two_ranks(tmp_path / "mpi", "mpi", single_run)
