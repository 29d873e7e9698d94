"""Atomic, resumable checkpoints.

DeepSpeed writes the model, optimizer and scheduler state (sharded under ZeRO); hbt
adds each rank's RNG states and a ``client_state`` (step, sampler cursor, config). A
checkpoint is written under ``tmp-<tag>`` and renamed to ``<tag>`` only once every
rank has finished, then ``latest`` is replaced atomically: a crash or SIGKILL at any
moment leaves the previous checkpoint and pointer intact.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hbt.dist import barrier


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Checkpointer:
    def __init__(self, root: Path, keep: int):
        self.root = root
        self.keep = keep
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    @property
    def pointer(self) -> Path:
        return self.root / "latest"

    def latest(self) -> str | None:
        """The tag of the newest complete checkpoint, or None."""
        if not self.pointer.exists():
            return None
        tag = self.pointer.read_text().strip()
        return tag if (self.root / tag).is_dir() else None

    def save(self, engine, step: int, client_state: dict) -> str:
        tag, tmp = f"step-{step:08d}", f"tmp-step-{step:08d}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.root / tmp, ignore_errors=True)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tmp, client_state=client_state, save_latest=False)
        torch.save(rng_state(), self.root / tmp / f"rng-rank{self.rank}.pt")
        barrier()
        if self.rank == 0:
            shutil.rmtree(self.root / tag, ignore_errors=True)
            os.replace(self.root / tmp, self.root / tag)
            _write_atomically(self.pointer, tag)
            self._prune(keep=tag)
        barrier()
        return tag

    def _prune(self, keep: str) -> None:
        tags = sorted(p.name for p in self.root.glob("step-*") if p.is_dir())
        for old in [t for t in tags if t != keep][: max(0, len(tags) - self.keep)]:
            shutil.rmtree(self.root / old, ignore_errors=True)
        for stale in self.root.glob("tmp-step-*"):  # left by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, engine, tag: str) -> dict:
        _, client_state = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                 load_lr_scheduler_states=True)
        rng_file = self.root / tag / f"rng-rank{self.rank}.pt"
        if rng_file.exists():  # absent when resuming with more ranks than saved
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state
