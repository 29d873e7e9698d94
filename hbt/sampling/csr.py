"""Row operations on CSR arrays (offsets per row over a flat array), without a Python loop
per row: the index, the blocks, the draw policy and the filling all store per-item and
per-pair data this way."""

from __future__ import annotations

import numpy as np


def csr_positions(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The flat positions of ``rows`` (CSR rows), concatenated in the order of ``rows``."""
    starts = offsets[rows]
    lens = offsets[rows + 1] - starts
    ends = np.cumsum(lens)
    return np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(starts - (ends - lens), lens)


def segment_argmin(values: np.ndarray, offsets: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Per CSR row, the position of its smallest value (the first on ties); rows without
    a finite value get their first position (or 0 when empty); callers mask those rows."""
    out = np.zeros(len(lens), dtype=np.int64)
    rows = np.flatnonzero(lens > 0)
    if not len(rows):
        return out
    starts = offsets[rows]
    mins = np.minimum.reduceat(values, starts)
    hit = np.flatnonzero(values == np.repeat(mins, lens[rows]))
    row_of_hit = np.repeat(np.arange(len(lens), dtype=np.int64), lens)[hit]
    first = np.ones(len(hit), dtype=bool)
    first[1:] = row_of_hit[1:] != row_of_hit[:-1]
    out[rows] = starts
    out[row_of_hit[first]] = hit[first]
    return out
