"""One writer per run directory (hbt/runlock.py), with real processes: a second writer is
refused with the holder's host and pid, the kernel frees the lock of a killed holder, and
a requeued job waits for the old holder to go."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbt.errors import InputError
from hbt.runlock import RunLock
from tests.helpers import hold

def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = hold(tmp_path, 60)
    try:
        with pytest.raises(InputError) as e:
            RunLock(tmp_path).acquire(wait_s=0)
        assert e.value.where == "run.dir"
        assert f"pid {holder.pid} on {socket.gethostname()}" in e.value.problem
    finally:
        holder.kill()
        holder.wait()


def test_the_kernel_frees_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    holder = hold(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path) as lock:  # no manual unlock needed
        assert str(os.getpid()) in lock.path.read_text()


def test_a_requeued_job_waits_for_the_old_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = hold(tmp_path, 2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    tick = time.monotonic()
    lock = RunLock(tmp_path)
    lock.acquire()  # waits up to REQUEUE_WAIT_S, which the holder's 2 s are well inside
    assert time.monotonic() - tick > 0.5
    lock.release()
    holder.wait()


def test_release_lets_the_next_writer_in(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(InputError):
        RunLock(tmp_path).acquire(wait_s=0.2)
    first.release()
    RunLock(tmp_path).acquire(wait_s=0)
