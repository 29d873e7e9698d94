"""Greedy filling of one epoch's batches in the epoch's item order: one queue per
language and one of the multilingual items, each batch taking the first unused items its
kind (and language) can use, one per answer group. Each queue entry is looked at O(1)
times, so an epoch costs O(pairs) numpy work plus O(1) numpy calls per batch."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from hbt.sampling.csr import csr_positions
from hbt.sampling.index import LanguageIndex
from hbt.sampling.policy import exact_mix_keep, live_kind_target, mono_language


class FilledBatches(NamedTuple):
    """Batches as arrays: ``mono`` per batch, ``items``/``qlang``/``plang`` batches x size."""

    mono: np.ndarray
    items: np.ndarray
    qlang: np.ndarray
    plang: np.ndarray


class _Queue:
    """The items one kind of batch can use (one language's, or the multilingual ones), in
    the epoch's item order. :meth:`take` returns the first ``size`` unused items of
    distinct answer groups, exactly as a scan from the start would, but looks at each
    entry O(1) times: used entries are passed once, and an entry skipped because its
    group is already in the batch waits in a per-group backlog (``heads``: the earliest
    waiting item of each such group, in item order; all of them precede ``cursor``)."""

    def __init__(self, items: np.ndarray, size: int):
        self.items = items
        self.cursor = 0
        self.heads = np.empty(0, dtype=np.int64)
        self.backlog: dict[int, deque[int]] = {}
        self.window = 2 * size
        self.dead = False

    def _next_of(self, group: int, used: np.ndarray) -> int | None:
        waiting = self.backlog.get(group)
        while waiting:
            item = waiting.popleft()
            if not used[item]:
                if not waiting:
                    del self.backlog[group]
                return item
        self.backlog.pop(group, None)
        return None

    def _successors(self, taken: np.ndarray, group: np.ndarray, used: np.ndarray) -> list[int]:
        """For each taken item, the next waiting item of its group (which steps up to head)."""
        out = []
        for item in taken.tolist():
            nxt = self._next_of(int(group[item]), used)
            if nxt is not None:
                out.append(nxt)
        return out

    def _set_heads(self, heads: list[int] | np.ndarray, pos: np.ndarray) -> None:
        heads = np.asarray(heads, dtype=np.int64)
        self.heads = heads[np.argsort(pos[heads], kind="stable")] if len(heads) > 1 else heads

    def _refresh_heads(self, used: np.ndarray, group: np.ndarray, pos: np.ndarray) -> None:
        """Heads another queue has used since: the group's next waiting item steps up."""
        heads = self.heads
        if len(heads):
            gone = used[heads]
            if gone.any():
                keep = heads[~gone].tolist()
                for item in heads[gone].tolist():
                    nxt = self._next_of(int(group[item]), used)
                    if nxt is not None:
                        keep.append(nxt)
                self._set_heads(keep, pos)

    def take(self, size: int, used: np.ndarray, group: np.ndarray, pos: np.ndarray, mark: np.ndarray, seen: np.ndarray,
             stamp: int) -> np.ndarray | None:
        """``size`` items or None when fewer than ``size`` groups have an unused item here
        (then none ever will again this epoch). Leaves ``used`` to the caller. ``mark`` and
        ``seen`` are scratch arrays over groups; ``stamp`` is new on every call."""
        self._refresh_heads(used, group, pos)
        heads = self.heads
        if len(heads) >= size:
            taken = heads[:size]
            self._set_heads(heads[size:].tolist() + self._successors(taken, group, used), pos)
            return taken
        need = size - len(heads)
        if len(heads):
            seen[group[heads]] = stamp
        items, start = self.items, self.cursor
        while True:  # a window of the queue, doubled until it holds ``need`` new groups
            window = items[start:start + self.window]
            alive = np.flatnonzero(~used[window])
            cand = window[alive]
            g = group[cand]
            at = np.arange(len(cand))
            mark[g] = at  # where no group repeats, every entry reads back its own place
            if (mark[g] == at).all():
                first = np.ones(len(cand), dtype=bool)
            else:
                first = np.zeros(len(cand), dtype=bool)
                first[np.unique(g, return_index=True)[1]] = True
            if len(heads):
                first &= seen[g] != stamp
            pick = np.flatnonzero(first)
            if len(pick) >= need:
                break
            if start + len(window) >= len(items):
                return None
            self.window *= 2
        last = pick[need - 1]
        taken_main = cand[pick[:need]]
        self.cursor = start + int(alive[last]) + 1
        self.window = max(2 * size, int(1.25 * (alive[last] + 1)))
        skipped = cand[:last + 1][~first[:last + 1]]  # their group is in this batch: they wait
        for item in skipped.tolist():
            self.backlog.setdefault(int(group[item]), deque()).append(item)
        taken = np.concatenate([heads, taken_main]) if len(heads) else taken_main
        self._set_heads(self._successors(taken, group, used) if self.backlog else [], pos)
        return taken


def _kind_queues(index: LanguageIndex, order: np.ndarray, size: int) -> tuple[list[_Queue], _Queue]:
    """One queue per language and one of the multilingual items, in ``order``."""
    at = csr_positions(index.offsets, order)
    langs = index.langs[at]
    items = np.repeat(order, index.n_langs[order])
    del at
    by_lang = np.argsort(langs, kind="stable")  # a radix sort: small integer codes
    bounds = np.concatenate([[0], np.cumsum(np.bincount(langs, minlength=len(index.languages)))])
    items = items[by_lang]
    del by_lang, langs
    mono = [_Queue(items[bounds[x]:bounds[x + 1]], size) for x in range(len(index.languages))]
    return mono, _Queue(order[index.n_langs[order] >= 2], size)


class _Pools:
    """What is left of an epoch's items while its batches are filled: the queues, which
    items are used, the unused items per language and among the multilingual ones."""

    def __init__(self, index: LanguageIndex, order: np.ndarray, size: int, weights: np.ndarray,
                 cross: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator):
        self.index, self.size, self.weights, self.cross, self.rng = index, size, weights, cross, rng
        self.pos = np.empty(index.n_items, dtype=np.int64)
        self.pos[order] = np.arange(len(order))
        self.mono_queues, self.multi = _kind_queues(index, order, size)
        self.used = np.zeros(index.n_items, dtype=bool)
        self.mark = np.zeros(index.n_items, dtype=np.int64)
        self.seen = np.full(index.n_items, -1, dtype=np.int64)
        self.remaining = np.bincount(index.langs[csr_positions(index.offsets, order)], minlength=len(index.languages))
        self.remaining_multi = int((index.n_langs[order] >= 2).sum())
        self.stamp = 0  # a fresh stamp per take() (for ``seen``)

    def _take(self, queue: _Queue) -> np.ndarray | None:
        self.stamp += 1
        return queue.take(self.size, self.used, self.index.group, self.pos, self.mark, self.seen, self.stamp)

    def mono(self) -> tuple[np.ndarray, int] | None:
        """A monolingual batch and its language, drawn among the languages that can still
        fill one (a language whose queue comes up short is out for the epoch)."""
        while True:
            dead = np.array([q.dead for q in self.mono_queues])
            lang = mono_language(self.rng, self.weights, (self.remaining >= self.size) & (self.weights > 0) & ~dead)
            if lang is None:
                return None
            taken = self._take(self.mono_queues[lang])
            if taken is not None:
                return taken, lang
            self.mono_queues[lang].dead = True

    def cross_batch(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None:
        """A cross-lingual batch and its pairs' (query, passage) languages."""
        if self.remaining_multi < self.size:
            return None
        taken = self._take(self.multi)
        return None if taken is None else (taken, (self.cross[0][taken], self.cross[1][taken]))

    def use(self, taken: np.ndarray) -> None:
        self.used[taken] = True
        self.remaining -= np.bincount(self.index.langs[csr_positions(self.index.offsets, taken)], minlength=len(self.index.languages))
        self.remaining_multi -= int((self.index.n_langs[taken] >= 2).sum())


def fill_batches(index: LanguageIndex, order: np.ndarray, size: int, kinds: np.ndarray, alpha: float, mix: str,
                 weights: np.ndarray, cross: tuple[np.ndarray, np.ndarray] | None,
                 rng: np.random.Generator) -> FilledBatches:
    """Batches of ``size`` from the items of ``order``, of the ``kinds`` drawn (True:
    monolingual; one per possible batch), ``alpha`` of them monolingual. When a kind
    can no longer be filled, ``exact`` keeps making the other kind while the longest
    exact epoch still has room for it, then drops the surplus; ``bernoulli`` stops.
    ``rng`` draws the monolingual languages; ``cross`` holds every item's cross pair."""
    n_max = len(order) // size
    out = FilledBatches(np.zeros(n_max, dtype=bool), np.zeros((n_max, size), dtype=np.int64),
                        np.zeros((n_max, size), dtype=index.langs.dtype), np.zeros((n_max, size), dtype=index.langs.dtype))
    rows = _fill_rows(_Pools(index, order, size, weights, cross, rng), out, kinds, alpha, mix) if n_max else 0
    kept = np.flatnonzero(exact_mix_keep(out.mono[:rows], alpha) if mix == "exact" else np.ones(rows, dtype=bool))
    return FilledBatches(*(array[kept] for array in out))


def _fill_rows(pools: _Pools, out: FilledBatches, kinds: np.ndarray, alpha: float, mix: str) -> int:
    """Fill ``out``'s rows in order, batch ``b`` of kind ``kinds[b]``; the rows filled."""
    dead = {True: alpha == 0, False: alpha == 1}
    made = {True: 0, False: 0}
    target: int | None = None  # exact mix: batches of the live kind still worth making
    rows = 0
    for kind in (bool(k) for k in kinds):
        if dead[kind]:
            if mix == "bernoulli":
                break
            continue
        got = pools.mono() if kind else pools.cross_batch()
        if got is None:
            if mix == "bernoulli":
                break
            dead[kind] = True
            if dead[not kind]:
                break
            target = live_kind_target(alpha, kind, made[True], made[False], len(kinds))
            if made[not kind] >= target:
                break
            continue
        taken, langs = got
        pools.use(taken)
        out.items[rows], out.mono[rows] = taken, kind
        out.qlang[rows], out.plang[rows] = (langs, langs) if kind else langs
        rows += 1
        made[kind] += 1
        if target is not None and made[kind] >= target:
            break
    return rows
