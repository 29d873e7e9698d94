"""Pre-emption signals, caught from the first moment of a run.

Slurm (``--signal=USR1@120``), ``scancel --signal`` and most schedulers announce the end
of a job with SIGUSR1 or SIGTERM. :func:`install` is called before any slow start-up
work (loading data, tokenising, planning, starting DeepSpeed), so a signal that arrives
then is remembered instead of killing the process; the run checks :func:`received` at
safe points (every rank the same ones, agreeing through an all-reduce) and exits with
status 75 so that the job is requeued.
"""

from __future__ import annotations

import signal

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; slurm/train.sh requeues on it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[int] = []


def _remember(signum: int, _frame) -> None:
    _received.append(signum)


def install(extra: tuple[int, ...] = ()) -> None:
    """Catch the stop signals (and ``extra`` ones, e.g. submitit's) from now on; a signal
    already received stays received."""
    for sig in (*SIGNALS, *extra):
        signal.signal(sig, _remember)


def received() -> bool:
    """Whether this process got a stop signal since :func:`install`."""
    return bool(_received)


def stop_requested() -> bool:
    """Whether any rank got a stop signal; a collective, so every rank calls it at the same point."""
    from hbt.dist import all_max  # imports torch: not at module level, so install() comes first

    return bool(all_max([float(received())])[0])


class Preempted(Exception):
    """A stop signal arrived: the run checkpointed (the tag is the message) or had not
    started training and had nothing to save (no message); exit 75 to be requeued."""


def ignore_in_worker(_worker_id: int = 0) -> None:
    """For helper processes (DataLoader workers): leave stop signals to the training
    process. A launcher that signals every process of a job (torchrun's SIGTERM after a
    lost rank, Slurm's ``scancel --signal``) would otherwise kill a worker, and its rank
    would fail with "DataLoader worker is killed" instead of handling the signal; the
    worker ends with its rank either way."""
    for sig in (*SIGNALS, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
