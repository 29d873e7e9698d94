"""One launcher-agnostic start-up for torch.distributed.

Whatever started the process (torchrun, accelerate, the DeepSpeed launcher, srun,
mpirun, or nothing) leaves its own variables; :func:`detect` reads them into one
:class:`DistEnv` and :func:`init` starts the process group from it: NCCL on GPUs, gloo
on CPU. The world size everything else uses is ``torch.distributed``'s, never a
launcher's guess (accelerate reports 1 process on CPU while the world is 2).

This is the only module that reads the launcher's variables or asks torch.distributed
for a rank or world size: everything else is handed the :class:`DistEnv` (or its rank
and world size), as torchtitan passes its ``ParallelDims`` and OpenCLIP's ``ClipLoss``
takes ``rank`` and ``world_size``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, TypeVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | mpi | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (``node[03-05,9],gpu1`` -> ``node03``)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    m = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    return (m.group(1) + (m.group(2) or "")) if m else nodelist


def _mpi_master(env: Mapping[str, str]) -> tuple[str, int]:
    """Rank 0's host and a free port of it, broadcast over MPI (mpirun sets no master)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    mine = (socket.gethostname(), free_port()) if comm.Get_rank() == 0 else None
    host, port = comm.bcast(mine, root=0)
    return env.get("MASTER_ADDR", host), int(env.get("MASTER_PORT", port))


def detect(env: Mapping[str, str] = os.environ) -> DistEnv:
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, accelerate, deepspeed launcher
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # srun (a batch script alone is not a step)
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")),
                       int(env.get("MASTER_PORT", 20000 + job % 20000)), "slurm")
    for prefix in ("OMPI_COMM_WORLD_", "PMIX_", "PMI_"):
        if prefix + "RANK" in env and prefix + "SIZE" in env:
            addr, port = _mpi_master(env)
            local = env.get("OMPI_COMM_WORLD_LOCAL_RANK", env.get("MPI_LOCALRANKID", "0"))
            return DistEnv(int(env[prefix + "RANK"]), int(env[prefix + "SIZE"]), int(local), addr, port, "mpi")
    return DistEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def init(env: DistEnv | None = None, timeout_min: float = 30.0) -> DistEnv:
    """Start the process group (through DeepSpeed, which the engine needs anyway).
    ``timeout_min`` bounds every collective, NCCL and gloo alike: a rank that hangs (a
    dead node without a closed connection, a stuck NCCL kernel) ends the job after it
    instead of holding the allocation. It must cover the longest wait of a healthy run
    (rank 0 tokenising or exporting while the others wait at a barrier)."""
    import deepspeed

    env = env or detect()
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(minutes=timeout_min)
        # DeepSpeed makes its own groups (data parallel, ZeRO) with new_group(), which takes
        # torch's module default, not the world group's: set that default too, or the
        # gradient all-reduce of a job with a hung rank waits 30 minutes (tests/integration/test_faults.py).
        from torch.distributed import distributed_c10d

        distributed_c10d.default_pg_timeout = timeout
        if isinstance(getattr(distributed_c10d, "default_pg_nccl_timeout", None), timedelta):
            distributed_c10d.default_pg_nccl_timeout = timeout
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    assert dist.get_world_size() == env.world_size, (dist.get_world_size(), env)
    return env


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_max(values: list[float]) -> list[float]:
    """The element-wise largest ``values`` over ranks: one collective through which every
    rank learns of a stop signal or a non-finite loss that only some ranks saw."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


T = TypeVar("T")


def gather_objects(obj: T, env: DistEnv) -> list[T]:
    """Every rank's ``obj`` (any picklable object), in rank order; on one rank, ``[obj]``."""
    if env.world_size == 1:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_mean(value: float) -> float:
    """The mean of ``value`` over ranks (the value itself on one rank, with no tensor made)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


# How the process group reports a peer that is gone (gloo: the TCP pair; NCCL: the
# watchdog or a remote error); anything else is a bug to show with its traceback.
_PEER_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                  "timed out", "NCCL communicator was aborted", "remote process exited", "DistNetworkError")


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank died or hung."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return isinstance(error, dist.DistError) or any(text in str(error) for text in _PEER_FAILURES)


def lost_ranks(env: DistEnv, wait_s: float = 3.0) -> list[int] | None:
    """The ranks that are gone, found through the rendezvous store after a collective
    failed: every survivor checks in and waits ``wait_s`` for the others. None when the
    store itself is unreachable (it lives with rank 0 under srun and mpirun)."""
    rank, world = env.rank, env.world_size
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"hbt/alive/{rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            alive = [r for r in range(world) if store.check([f"hbt/alive/{r}"])]
            if len(alive) == world or time.monotonic() > deadline:
                return [r for r in range(world) if r not in alive]
            time.sleep(0.1)
    except Exception:  # the store went with its host
        return None
