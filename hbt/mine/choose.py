"""Which candidates of a query's ranking become its negatives: ``hbt mine``'s settings,
the choice from a window of the ranking and the counts of what it skipped.

The rules (docs/mining.md): never a candidate the query may not get (the layout's
``excluded``), never one scoring above ``--max-score-ratio`` times the positive, ``k``
drawn from ranks ``a+1 .. b`` of ``--range a-b`` and, when fewer are there, the nearest
allowed ones below the range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hbt.errors import InputError
from hbt.eval.search import IndexKind


@dataclass(frozen=True)
class MineSettings:
    k: int = 7
    range: tuple[int, int] = (10, 100)
    languages: tuple[str, ...] | None = None
    max_score_ratio: float | None = None
    pick: str = "sample"  # sample: k at random from the window (FlagEmbedding's hn_mine); top: the k best
    seed: int = 0
    batch_size: int = 128
    index: IndexKind = "flat"

    def validate(self) -> None:
        if self.k < 1:
            raise InputError("--k", f"must be at least 1, got {self.k}")
        a, b = self.range
        if not 0 <= a < b:
            raise InputError("--range", f"expected a-b with 0 <= a < b, got {a}-{b}")
        if self.max_score_ratio is not None and not 0 < self.max_score_ratio <= 1:
            # above 1 it drops only negatives scoring above the positive: filtering nothing it is meant to
            raise InputError("--max-score-ratio", f"must be in (0, 1], got {self.max_score_ratio}")
        if self.seed < 0:  # numpy's generators take no negative seed (and would fail after the encoding)
            raise InputError("--seed", f"must be >= 0, got {self.seed}")
        if self.batch_size < 1:
            raise InputError("--batch-size", f"must be at least 1, got {self.batch_size}")
        if self.pick not in ("sample", "top"):
            raise InputError("--pick", f"expected sample or top, got {self.pick!r}")


def parse_range(text: str) -> tuple[int, int]:
    """``"10-100"`` -> (10, 100): skip the top 10 of the ranking, draw from ranks 11..100."""
    a, sep, b = text.partition("-")
    try:
        if not sep:
            raise ValueError
        lo, hi = int(a), int(b)
    except ValueError:
        raise InputError("--range", f"expected two integers a-b (e.g. 10-100), got {text!r}") from None
    if not 0 <= lo < hi:
        raise InputError("--range", f"expected a-b with 0 <= a < b, got {text!r}")
    return lo, hi


@dataclass
class Counts:
    pairs: int = 0
    written: int = 0
    dropped_no_negatives: int = 0  # pairs with no negative at all (not written)
    short: int = 0  # pairs written with fewer than k
    filled: int = 0  # pairs that needed negatives from below the range
    false_negatives_skipped: int = 0  # relevant or positive-text candidates inside the range
    ratio_dropped: int = 0  # candidates inside the range dropped by --max-score-ratio

    def add(self, other: "Counts") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def choose(ids: np.ndarray, scores: np.ndarray, excluded: np.ndarray, pos_score: np.ndarray, s: MineSettings,
           rng: np.random.Generator) -> tuple[np.ndarray, Counts]:
    """Per query, the columns of its ranking (``ids``/``scores``, best first) that become
    its negatives, in ranking order, -1 pads; and the counts of what was excluded in the range.

    Allowed: a real candidate, not excluded, at most ``max_score_ratio`` x the positive's
    score. ``k`` are drawn from the allowed ones inside the range (at random or the best
    ``k``); when fewer are there, the nearest allowed ones below the range fill up."""
    a, b = s.range
    n, depth = ids.shape
    col = np.arange(depth)[None, :]
    bad = (ids[:, :, None] == excluded[:, None, :]).any(-1) & (ids >= 0)
    too_high = np.zeros_like(bad) if s.max_score_ratio is None else scores > s.max_score_ratio * pos_score[:, None]
    allowed = (ids >= 0) & ~bad & ~too_high
    in_range = (col >= a) & (col < b)
    keys = rng.random((n, depth)) if s.pick == "sample" else np.broadcast_to(col / depth, (n, depth)).copy()
    keys = np.where(in_range, keys, 2.0 + col)  # below the range: nearest first, after any in range
    keys = np.where(allowed & (col >= a), keys, np.inf)
    chosen = np.argsort(keys, axis=1, kind="stable")[:, : s.k]
    ok = np.isfinite(np.take_along_axis(keys, chosen, 1))
    chosen = np.sort(np.where(ok, chosen, depth), axis=1)
    chosen = np.where(chosen < depth, chosen, -1)
    c = Counts(false_negatives_skipped=int((bad & in_range).sum()),
               ratio_dropped=int((too_high & ~bad & in_range & (ids >= 0)).sum()))
    return chosen, c


def tally(chosen: list[np.ndarray], s: MineSettings) -> Counts:
    """The per-pair counts of the final choice (columns, -1 pads)."""
    got = np.array([(c >= 0).sum() for c in chosen])
    return Counts(pairs=len(chosen), written=int((got > 0).sum()), dropped_no_negatives=int((got == 0).sum()),
                  short=int(((got > 0) & (got < s.k)).sum()), filled=sum(int((c >= s.range[1]).any()) for c in chosen))
