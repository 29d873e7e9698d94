"""The seeded draw policy, as pure functions of (seed, epoch, the index and the settings):
the epoch's item order, which sources' items sit an epoch out, each batch's kind, the
languages of monolingual batches and of cross-lingual pairs, and the exact mix's
arithmetic. Every draw has its own random stream (``Draw``), so a change to one draw
never shifts another."""

from __future__ import annotations

import math
from enum import IntEnum

import numpy as np

from hbt.sampling.csr import segment_argmin
from hbt.sampling.index import LanguageIndex


class Draw(IntEnum):
    """The random streams of an epoch: ``np.random.default_rng([seed, epoch, draw, ...])``."""

    ORDER = 0  # the item order
    KINDS = 1  # mono or cross, per batch (per source with same_source)
    MONO_LANGUAGE = 2  # the language of each monolingual batch (per source with same_source)
    CROSS_LANGUAGES = 3  # the (query, passage) languages of every item's cross pair
    SOURCE_SHARE = 4  # the items a source of weight < 1 uses
    SOURCE_INTERLEAVE = 5  # the order of the sources' batches with same_source


def draws(seed: int, epoch: int, draw: Draw, *stream: int) -> np.random.Generator:
    """The generator of one draw of one epoch (``stream``: the source, with same_source)."""
    return np.random.default_rng([seed, epoch, int(draw), *stream])


def language_weights(counts: np.ndarray, policy: str, temperature: float) -> np.ndarray:
    """Unnormalised sampling weight of each language under ``policy``."""
    counts = counts.astype(np.float64)
    if policy == "uniform":
        return (counts > 0).astype(np.float64)
    exponent = 1.0 if policy == "proportional" else 1.0 / temperature
    return np.where(counts > 0, counts**exponent, 0.0)


def mono_count(alpha: float, n: int) -> int:
    """Monolingual batches in an exact-mix epoch of ``n`` batches (half-up rounding)."""
    return math.floor(alpha * n + 0.5)


def longest_exact_epoch(alpha: float, mono: int, cross: int) -> int:
    """The most batches ``n`` with ``mono_count(alpha, n) <= mono`` and
    ``n - mono_count(alpha, n) <= cross`` (both counts grow with ``n``, by 0 or 1)."""
    n = mono + cross
    while n > 0 and (mono_count(alpha, n) > mono or n - mono_count(alpha, n) > cross):
        n -= 1
    return n


def epoch_order(index: LanguageIndex, seed: int, epoch: int, carried: np.ndarray) -> np.ndarray:
    """The epoch's item order: carried items first, then a shuffle in which the items of
    one answer group are spread evenly (systematic sampling: the j-th of a group's g
    items, in random order, sits at (j + u) / g of the epoch for one uniform u per
    group). Every item's place is still uniform, but group mates rarely meet near the
    end of an epoch, where they would leave batches unfillable."""
    n, group = index.n_items, index.group
    rng = draws(seed, epoch, Draw.ORDER)
    key = rng.random(n)[group]  # u of the item's group (groups are named by an item)
    size = np.bincount(group, minlength=n)[group]
    shared = np.flatnonzero(size > 1)
    if len(shared):
        by = shared[np.lexsort((rng.random(len(shared)), group[shared]))]  # a random order within each group
        g = group[by]
        start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        rank = np.arange(len(by)) - np.repeat(start, np.diff(np.r_[start, len(by)]))
        key[by] = (rank + key[by]) / size[by]
    perm = _source_shares(index, np.argsort(key, kind="stable"), seed, epoch)
    if not len(carried):
        return perm
    fresh = np.ones(n, dtype=bool)
    fresh[carried] = False
    return np.concatenate([carried, perm[fresh[perm]]])


def _source_shares(index: LanguageIndex, perm: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``perm`` without the items a source of weight w < 1 sits out this epoch: it uses
    ``round(w * items)`` of them, a fresh seeded choice every epoch."""
    if (index.weights >= 1).all():
        return perm
    rng = draws(seed, epoch, Draw.SOURCE_SHARE)
    keep = np.ones(index.n_items, dtype=bool)
    for s, w in enumerate(index.weights):
        if w < 1:
            members = np.flatnonzero(index.source == s)
            drop = rng.permutation(members)[math.floor(w * len(members) + 0.5):]
            keep[drop] = False
    return perm[keep[perm]]


def batch_kinds(seed: int, epoch: int, n: int, stream: tuple[int, ...], alpha: float, mix: str) -> np.ndarray:
    """True for monolingual: a shuffled exact mix, or a Bernoulli draw per batch."""
    rng = draws(seed, epoch, Draw.KINDS, *stream)
    if mix == "bernoulli":
        return rng.random(n) < alpha
    return rng.permutation(np.arange(n) < mono_count(alpha, n))


def source_alpha(alpha: float, can_cross: bool) -> float:
    """The mono share of one source planned alone (same_source): a source that cannot fill
    a cross-lingual batch (e.g. English only) makes monolingual batches only, where an
    exact mix would cut it to round(alpha * 1)."""
    return alpha if can_cross or alpha == 0 else 1.0


def cross_languages(index: LanguageIndex, weights: np.ndarray, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the query language (a draw with ``weights`` among its languages) and the
    passage language (a draw among the others): the first two of an exponential race
    (Efraimidis-Spirakis), for all items at once."""
    race = draws(seed, epoch, Draw.CROSS_LANGUAGES).standard_exponential(len(index.langs))
    with np.errstate(divide="ignore"):
        race /= weights[index.langs]
    query = segment_argmin(race, index.offsets, index.n_langs)
    race[query[index.n_langs >= 1]] = np.inf
    passage = segment_argmin(race, index.offsets, index.n_langs)
    return index.langs[query], index.langs[passage]


def mono_language(rng: np.random.Generator, weights: np.ndarray, feasible: np.ndarray) -> int | None:
    """A monolingual batch's language: a draw with ``weights`` among the ``feasible``
    languages (those that can still fill a batch), None when there is none."""
    w = np.where(feasible, weights, 0.0)
    if not w.sum() > 0:
        return None
    return min(int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right")), len(w) - 1)


def live_kind_target(alpha: float, dead_is_mono: bool, mono: int, cross: int, n_max: int) -> int:
    """Once one kind of batch can no longer be filled (``dead_is_mono``, after ``mono`` and
    ``cross`` batches of an epoch of at most ``n_max``), how many batches of the other kind
    the longest exact epoch still has."""
    n_best = longest_exact_epoch(alpha, *((mono, n_max) if dead_is_mono else (n_max, cross)))
    return n_best - mono_count(alpha, n_best) if dead_is_mono else mono_count(alpha, n_best)


def exact_mix_keep(mono: np.ndarray, alpha: float) -> np.ndarray:
    """Per batch (``mono``: its kind), whether the exact mix keeps it: the last batches of
    the kind in surplus are dropped, so that the N kept have round(alpha * N) monolingual."""
    keep = np.ones(len(mono), dtype=bool)
    if not len(mono):
        return keep
    n = longest_exact_epoch(alpha, int(mono.sum()), int((~mono).sum()))
    for kind, surplus in ((True, int(mono.sum()) - mono_count(alpha, n)),
                          (False, int((~mono).sum()) - (n - mono_count(alpha, n)))):
        if surplus > 0:  # drop the last batches of the kind in surplus
            keep[np.flatnonzero(mono == kind)[-surplus:]] = False
    return keep
