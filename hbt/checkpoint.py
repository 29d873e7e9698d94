"""Atomic, resumable checkpoints.

DeepSpeed writes the model, optimizer and scheduler state (sharded under ZeRO); hbt
adds each rank's RNG states and a ``client_state`` (step, sampler cursor, config,
fingerprint). A checkpoint is written under ``tmp-<tag>``, flushed to disk (fsync), and
renamed to ``<tag>`` only once every rank has finished, then ``latest`` is replaced
atomically: a crash or SIGKILL at any moment leaves the previous checkpoint and pointer
intact. Every ``step-*`` directory is therefore complete, and :meth:`Checkpointer.latest`
falls back to the newest of them when the pointer is missing or names a directory that
is gone.

A checkpoint is complete or it does not count: the last file written inside the
temporary directory, before the rename, is ``manifest.json`` (every file's name and
size), and :meth:`Checkpointer.latest` picks the newest checkpoint whose manifest
verifies, so a file deleted or truncated afterwards (a full disk, a half-copied run
directory, a cleanup script) makes ``--resume auto`` fall back to the previous complete
checkpoint and say so instead of resuming inexactly or failing inside DeepSpeed. Sizes,
not hashes: hashing gigabytes of optimizer state at every checkpoint would cost more
than the truncations and deletions it is there to catch.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from hbt import fingerprint as run_fingerprint
from hbt.dist import DistEnv, barrier
from hbt.errors import InputError, writing


MANIFEST = "manifest.json"
TAG = re.compile(r"step-\d{8}")


def write_manifest(folder: Path) -> None:
    """Record every file of the checkpoint in ``folder`` with its size (written last)."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def incomplete(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be resumed from, or None when every file its
    manifest lists is there with its size."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no manifest.json (unfinished, or written by an hbt older than manifests)"
    except (OSError, ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    return None


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


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves, so that a rename
    that follows never publishes a checkpoint whose bytes are still only in the page cache."""
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        _fsync_path(path)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """The checkpoints under ``root``: ``env`` says which rank this process is (each rank
    saves its own RNG states; rank 0 renames, points and prunes)."""

    def __init__(self, root: Path, keep: int, env: DistEnv, fingerprint: dict | None = None):
        self.root = root
        self.keep = keep
        self.fingerprint = fingerprint
        self.rank = env.rank

    @property
    def pointer(self) -> Path:
        return self.root / "latest"

    def tags(self) -> list[str]:
        """Every renamed checkpoint, oldest first (``tmp-*`` ones are unfinished), complete or not."""
        return sorted(p.name for p in self.root.glob("step-*") if p.is_dir() and TAG.fullmatch(p.name))

    def complete(self) -> list[str]:
        """The checkpoints whose manifest verifies, oldest first."""
        return [t for t in self.tags() if incomplete(self.root / t) is None]

    def latest(self) -> str | None:
        """The complete checkpoint ``latest`` names, or, when it is missing, names no
        complete checkpoint (or is not a tag at all), the newest complete one; None when
        there is none."""
        complete = self.complete()
        tag = self.pointer.read_text().strip() if self.pointer.is_file() else ""
        if tag in complete:
            return tag
        return complete[-1] if complete else None

    def skipped(self, chosen: str | None) -> list[str]:
        """Each checkpoint newer than ``chosen`` that resuming passes over, with why."""
        newer = [t for t in self.tags() if chosen is None or t > chosen]
        return [f"{t} ({reason})" for t, reason in ((t, incomplete(self.root / t)) for t in newer) if reason is not None]

    def newest_before(self, step: int) -> str | None:
        """The newest complete checkpoint of an optimizer step < ``step``."""
        older = [t for t in self.complete() if int(t.split("-")[1]) < step]
        return older[-1] if older else None

    def point_to(self, tag: str) -> None:
        """Make ``tag`` what ``--resume auto`` picks (rank 0 writes)."""
        if self.rank == 0:
            _write_atomically(self.pointer, tag)

    def save(self, engine, step: int, client_state: dict) -> str:
        """Write checkpoint ``step`` on every rank (see the module's docstring). A full disk
        ends the job with one line (:func:`hbt.errors.writing`) naming the checkpoint, once
        its unfinished directory is removed (it would keep the disk full); the previous
        checkpoint and ``latest`` are untouched."""
        tag, tmp = f"step-{step:08d}", f"tmp-step-{step:08d}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.root / tmp, ignore_errors=True)
        barrier()
        with self._writing(self.root / tmp):
            engine.save_checkpoint(str(self.root), tag=tmp, client_state=client_state, save_latest=False)
            torch.save(rng_state(), self.root / tmp / f"rng-rank{self.rank}.pt")
        barrier()
        if self.rank == 0:
            with self._writing(self.root / tmp):
                if self.fingerprint is not None:
                    run_fingerprint.write(self.root / tmp, self.fingerprint)
                write_manifest(self.root / tmp)
                _fsync_tree(self.root / tmp)
            shutil.rmtree(self.root / tag, ignore_errors=True)
            os.replace(self.root / tmp, self.root / tag)
            _write_atomically(self.pointer, tag)
            self._prune(keep=tag)
        barrier()
        return tag

    @contextmanager
    def _writing(self, folder: Path) -> Iterator[None]:
        """:func:`hbt.errors.writing` for an unfinished checkpoint ``folder``: removed on a
        full disk, and the error says what is safe."""
        try:
            with writing(folder):
                yield
        except InputError as e:
            shutil.rmtree(folder, ignore_errors=True)
            latest = self.latest()
            safe = f"the last complete checkpoint, {latest}, is intact" if latest else "no checkpoint was written yet"
            raise InputError(e.where, f"{e.problem}; {safe}") from None

    def _prune(self, keep: str) -> None:
        tags = self.tags()
        for old in [t for t in tags if t != keep][: max(0, len(tags) - self.keep)]:
            shutil.rmtree(self.root / old, ignore_errors=True)
        for stale in self.root.glob("tmp-step-*"):  # left by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, engine, tag: str) -> dict:
        """The checkpoint ``tag`` (its manifest verified) into ``engine`` and this rank's RNG.
        The manifest holds sizes, not hashes (hashing gigabytes on every save would cost
        more than it guards), so a file overwritten at its own size can still fail to load:
        that is one line naming the checkpoint, not the loader's traceback."""
        try:
            _, client_state = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                     load_lr_scheduler_states=True)
            set_rng_state(torch.load(self.root / tag / f"rng-rank{self.rank}.pt", weights_only=False))
        except Exception as e:  # noqa: BLE001 (torch, pickle and DeepSpeed each raise their own kinds)
            reason = str(e).splitlines()[0] if str(e) else ""
            raise InputError(str(self.root / tag), f"cannot be loaded ({type(e).__name__}: {reason}); its files have the "
                                                   "sizes its manifest records but not their content: delete it to "
                                                   "resume from the one before") from None
        return client_state
