"""A rank that dies (OOM killer, node failure) ends the whole job promptly, with one line
naming the lost rank instead of a gloo traceback, and the last checkpoint resumes. Under
each launcher users start hbt with: torchrun, ``sbatch slurm/train.sh`` (2 tasks) and
mpirun. SIGKILL is what the OOM killer sends; nothing is mocked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (ENDS_WITHIN_S, LOST, ROOT, hbt_command, kill_rank_1_mid_training, need_cluster, losses, ok, overrides, rank_pid, torchrun,
                           torchrun_command)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]  # one after another: one Slurm, timed waits


def fault_args(tmp: Path) -> list[str]:
    return overrides(tmp, "run", "train.checkpoint_every=3", "train.epochs=3")


def test_torchrun_rank_killed(tmp_path: Path) -> None:
    args = fault_args(tmp_path)
    proc = subprocess.Popen(torchrun_command(2, "train", *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    killed = kill_rank_1_mid_training(tmp_path / "run", ("RANK",), lambda: proc.poll() is None)
    _, err = proc.communicate(timeout=ENDS_WITHIN_S + 30)
    took = time.monotonic() - killed
    print(f"torchrun: rank 1 SIGKILLed, job ended after {took:.1f} s with exit {proc.returncode}")
    assert proc.returncode != 0 and took <= ENDS_WITHIN_S
    ours = [line for line in err.splitlines() if line.startswith("hbt:") or line.startswith("[rank0]: Traceback")]
    assert len(ours) == 1 and ours[0].startswith(LOST) and "is intact" in ours[0], err[-3000:]
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    ok(torchrun(2, "train", *args))  # the intact checkpoint resumes to the end
    assert f"resumed_from: {latest}" in (tmp_path / "run" / "config-history" / "001.yaml").read_text()
    assert max(losses(tmp_path / "run")) > int(latest.split("-")[1])


def test_mpirun_rank_killed(tmp_path: Path) -> None:
    need_cluster(shutil.which("mpirun") is not None, "no mpirun here", "slurm/local/up.sh installs Open MPI")
    args = fault_args(tmp_path)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "OMP_NUM_THREADS=1", *hbt_command("train", *args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = kill_rank_1_mid_training(tmp_path / "run", ("OMPI_COMM_WORLD_RANK",), lambda: proc.poll() is None)
    out, err = proc.communicate(timeout=ENDS_WITHIN_S + 30)
    took = time.monotonic() - killed
    print(f"mpirun: rank 1 SIGKILLed, job ended after {took:.1f} s with exit {proc.returncode}")
    assert proc.returncode != 0 and took <= ENDS_WITHIN_S
    # mpirun ends the other ranks at once and names the lost one itself.
    assert "process rank 1 with PID" in out + err and "exited on signal 9" in out + err
    assert "Traceback" not in err + out
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert (tmp_path / "run" / "checkpoints" / latest / "fingerprint.json").exists()


def test_a_hung_rank_ends_the_job_after_the_configured_timeout(tmp_path: Path) -> None:
    """SIGSTOP: rank 1 neither works nor closes its connections (a stuck kernel, a frozen
    node). Only ``run.dist_timeout_min`` ends the wait; rank 0 then names it."""
    args = [*fault_args(tmp_path), "run.dist_timeout_min=0.25"]
    proc = subprocess.Popen(torchrun_command(2, "train", *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    pid = rank_pid(run_dir, 1, ("RANK",))
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        os.kill(pid, signal.SIGKILL) if Path(f"/proc/{pid}").exists() else None
    took = time.monotonic() - stopped
    print(f"torchrun: rank 1 SIGSTOPped, job ended after {took:.1f} s (timeout 15 s)")
    assert proc.returncode != 0 and 15 <= took <= 15 + ENDS_WITHIN_S
    ours = [line for line in err.splitlines() if line.startswith("hbt:")]
    assert len(ours) == 1 and ours[0].startswith(LOST), err[-3000:]
