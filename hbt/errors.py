"""The one exception type for bad input.

Anything a user can get wrong (a file, a field, an option) raises :class:`InputError`
with a message that names it. The CLI prints the message on one line and exits with
status 2; no traceback, because the traceback would point at hbt, not at the input.
A full disk is the user's to fix too (:func:`writing`).
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

EXIT_BAD_INPUT = 2
FULL_BELOW = 1 << 20  # bytes free on a filesystem a write just failed on: it is full


class InputError(ValueError):
    """Bad user input: a malformed file, a missing field, an out-of-range option."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = printable(where)
        self.problem = printable(problem)
        super().__init__(f"{self.where}: {self.problem}")


def printable(text: str) -> str:
    """``text`` with every character that does not print (a line break, a NUL, a form
    feed) written as its Python escape: a message repeats keys, paths and values as the
    user gave them, and a line break in one must not split the one-line error."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def at_least(minimum: int, values: dict[str, float]) -> None:
    """Refuse the first of ``values`` (the setting or option that holds it: its value)
    below ``minimum``, naming it."""
    for where, value in values.items():
        if value < minimum:
            raise InputError(where, f"must be >= {minimum}, got {value}")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Write to ``path`` (a file, or a directory being filled) inside this block: when the
    disk or quota is full, the job ends with one line naming ``path``, not two tracebacks
    from inside torch. torch's writer reports a full disk as a RuntimeError without an
    errno, so any write error counts as one when the filesystem has next to no room left."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        free = _free_bytes(path)
        if not (full or (free is not None and free < FULL_BELOW)):
            raise
        left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        raise InputError(str(path), f"cannot write: no space left on its filesystem{left}") from None


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None
