"""One launcher-agnostic start-up for torch.distributed.

Whatever started the process (torchrun, accelerate, the DeepSpeed launcher, srun,
mpirun, or nothing) leaves its own variables; :func:`detect` reads them into one
:class:`DistEnv` and :func:`init` starts the process group from it: NCCL on GPUs, gloo
on CPU. The world size everything else uses is ``torch.distributed``'s, never a
launcher's guess (accelerate reports 1 process on CPU while the world is 2).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Mapping

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


def init(env: DistEnv | None = None) -> DistEnv:
    """Start the process group (through DeepSpeed, which the engine needs anyway)."""
    import deepspeed

    env = env or detect()
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
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


def all_mean(value: torch.Tensor) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value.item()
    t = value.detach().clone().double()
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()
