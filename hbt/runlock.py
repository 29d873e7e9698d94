"""One writer per run directory.

Two jobs writing one ``run.dir`` interleave their checkpoints, metrics and exported model
without either noticing, so rank 0 of ``hbt train`` holds an exclusive ``flock`` on
``run.dir/.lock`` for the life of the job. The kernel releases it when the process dies
(SIGKILL, OOM, a lost node's NFS lease), so a crashed or requeued run never needs a
manual unlock; the file's content only says who holds it, for the error message. A
second writer gets one line naming the holder's host and pid. A Slurm requeue may start
before the pre-empted job's processes have exited: with ``SLURM_RESTART_COUNT`` set the
new job waits a bounded time for the old holder to go.

A ``flock`` belongs to the open file, which a fork shares: a DataLoader worker forked
while rank 0 holds the lock would keep it after rank 0 is killed, until the worker
noticed its parent was gone (seconds). Every forked child therefore closes its copy at
once (:func:`os.register_at_fork`), and only the holder's own death frees the lock.
A job refused after it took the lock puts the file back as it found it (content and
times), so that a refusal writes nothing into an existing run directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from hbt.errors import InputError

REQUEUE_WAIT_S = 300.0  # a pre-empted job's ranks exit within Slurm's KillWait (30 s by default)
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_held_in_child() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """An exclusive lock on ``run_dir/.lock``; use as a context manager or :meth:`acquire`
    once and keep the object alive (closing the file releases the lock)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        self._before: tuple[bytes, os.stat_result] | None = None  # the file as this lock found it

    def holder(self) -> str:
        """Who holds the lock, as its file says (best effort: it may be mid-write)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process"
        job = f", Slurm job {info['slurm_job']}" if info.get("slurm_job") else ""
        return f"pid {info.get('pid')} on {info.get('host')}{job} (since {info.get('started_utc')})"

    def acquire(self, wait_s: float | None = None) -> None:
        """Take the lock or raise :class:`InputError` naming its holder. ``wait_s``: how long
        to wait for a holder to go (default: :data:`REQUEUE_WAIT_S` in a requeued Slurm job,
        else 0)."""
        if wait_s is None:
            wait_s = REQUEUE_WAIT_S if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 else 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # not inherited by exec'd children
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    waited = f" after waiting {wait_s:.0f} s" if wait_s else ""
                    raise InputError("run.dir", f"{self.path.parent} is in use by {holder}{waited}; wait for that job "
                                                "to end, or choose another run.dir") from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        info = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
                "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        stat = os.fstat(fd)
        self._before = (os.pread(fd, stat.st_size, 0), stat)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        _HELD.add(fd)

    def release(self, restore: bool = False) -> None:
        """Let the lock go; with ``restore`` (a refused job) the file is put back as it was
        found: its content, and its access and modification times."""
        if self._fd is None:
            return
        if restore and self._before is not None:
            content, stat = self._before
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, content, 0)
            os.utime(self._fd, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        _HELD.discard(self._fd)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
