"""One epoch's plan: the planner that orders, fills and mends an epoch's contrastive
batches (each source alone with ``same_source``, then interleaved), the plan as arrays,
and the one view of it a rank reads (:meth:`EpochPlan.for_rank`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence, overload

import numpy as np

from hbt.config import SamplerConfig
from hbt.sampling.blocking import SlotLanguages
from hbt.sampling.fill import FilledBatches, fill_batches
from hbt.sampling.index import LanguageIndex
from hbt.sampling.policy import Draw, batch_kinds, cross_languages, draws, epoch_order, language_weights, source_alpha

PairKey = tuple[int, str, str]  # (item index, query language, passage language)


def _pair_keys(languages: list[str], items: np.ndarray, qlang: np.ndarray, plang: np.ndarray) -> list[PairKey]:
    return [(int(i), languages[q], languages[p]) for i, q, p in zip(items.tolist(), qlang.tolist(), plang.tolist())]


@dataclass(frozen=True)
class ContrastiveBatch:
    kind: Literal["mono", "cross"]
    pairs: tuple[PairKey, ...]

    @property
    def label(self) -> str:
        """The batch type as logged: ``mono/<lang>`` or ``cross``."""
        return self.kind if self.kind == "cross" else f"mono/{self.pairs[0][1]}"


@dataclass(frozen=True)
class RankPlan:
    """What one rank reads of an epoch's plan: its slots ``lo:hi`` of every contrastive
    batch (``items``, ``qlang``, ``plang``: batches x per-rank batch)."""

    languages: list[str]
    items: np.ndarray
    qlang: np.ndarray
    plang: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def pairs(self, b: int) -> list[PairKey]:
        """This rank's pairs of batch ``b``."""
        return _pair_keys(self.languages, self.items[b], self.qlang[b], self.plang[b])


class EpochPlan(Sequence[ContrastiveBatch]):
    """One epoch's global contrastive batches, stored as arrays (``items``, ``qlang``,
    ``plang``: batches x batch size; ``mono``: per batch) and materialised as
    :class:`ContrastiveBatch` on access. ``leftover``: the items no batch used, in the
    epoch's item order (what ``remainder="carry"`` carries)."""

    def __init__(self, languages: list[str], mono: np.ndarray, items: np.ndarray, qlang: np.ndarray,
                 plang: np.ndarray, leftover: np.ndarray):
        self.languages, self.mono, self.items, self.qlang, self.plang, self.leftover = languages, mono, items, qlang, plang, leftover

    def __len__(self) -> int:
        return len(self.mono)

    def pairs(self, b: int) -> list[PairKey]:
        """Every pair of batch ``b``."""
        return _pair_keys(self.languages, self.items[b], self.qlang[b], self.plang[b])

    def for_rank(self, lo: int, hi: int) -> RankPlan:
        """The slots ``lo:hi`` of every batch: a rank's share (``HybridBatchSampler.rank_slice``)."""
        return RankPlan(self.languages, self.items[:, lo:hi], self.qlang[:, lo:hi], self.plang[:, lo:hi])

    @overload
    def __getitem__(self, b: int) -> ContrastiveBatch: ...
    @overload
    def __getitem__(self, b: slice) -> list[ContrastiveBatch]: ...
    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(len(self)))]
        if b < 0:
            b += len(self)
        if not 0 <= b < len(self):
            raise IndexError(b)
        return ContrastiveBatch("mono" if self.mono[b] else "cross", tuple(self.pairs(b)))

    def __iter__(self) -> Iterator[ContrastiveBatch]:
        return (self[b] for b in range(len(self)))

    def mix(self) -> Counter[str]:
        """Batch-type counts: ``mono/<lang>`` per language, and ``cross``."""
        mix: Counter[str] = Counter()
        if len(self):
            langs, n = np.unique(self.qlang[self.mono, 0], return_counts=True)
            mix.update({f"mono/{self.languages[int(l)]}": int(c) for l, c in zip(langs, n)})
            if (~self.mono).any():
                mix["cross"] = int((~self.mono).sum())
        return mix


def _slot_languages(index: LanguageIndex, same_source: bool, mono: np.ndarray, qlang: np.ndarray, items: np.ndarray,
                    cross: tuple[np.ndarray, np.ndarray] | None) -> SlotLanguages:
    """The planner's rule for where an item may sit, for the hard-negative swaps: the
    (query, passage) languages ``item`` would have in batch ``b`` (a monolingual batch's
    language, or the item's cross pair of the epoch), or None when it cannot be there (a
    language it lacks, a cross batch without two, another source)."""

    def fits(item: int, b: int) -> tuple[int, int] | None:
        if same_source and index.source[item] != index.source[items[b, 0]]:
            return None
        if mono[b]:
            lang = int(qlang[b, 0])
            own = index.langs[index.offsets[item]:index.offsets[item + 1]]
            return (lang, lang) if (own == lang).any() else None
        if cross is None or index.n_langs[item] < 2:
            return None
        return int(cross[0][item]), int(cross[1][item])

    return fits


class EpochPlanner:
    """Builds one epoch's contrastive batches; a pure function of the index, the settings,
    the epoch and the items carried into it."""

    def __init__(self, index: LanguageIndex, cfg: SamplerConfig):
        self.index = index
        self.cfg = cfg
        self.weights = language_weights(index.counts, cfg.language_policy, cfg.language_temperature)

    def plan(self, epoch: int, carried: np.ndarray) -> EpochPlan:
        """The epoch's batches. With ``same_source`` each source is planned on its own (its
        own exact mix) and the sources' batches are interleaved in a seeded order."""
        idx, cfg = self.index, self.cfg
        order = epoch_order(idx, cfg.seed, epoch, np.asarray(carried, dtype=np.int64))
        cross = cross_languages(idx, self.weights, cfg.seed, epoch) if cfg.alpha < 1 else None
        if not cfg.same_source or len(idx.sources) == 1:
            parts = [self._fill(order, epoch, (), cross, cfg.alpha)]
        else:
            parts = []
            for s in range(len(idx.sources)):
                members = order[idx.source[order] == s]
                can_cross = int((idx.n_langs[members] >= 2).sum()) >= cfg.batch_size
                parts.append(self._fill(members, epoch, (s,), cross, source_alpha(cfg.alpha, can_cross)))
        mono, items, qlang, plang = (np.concatenate([p[k] for p in parts]) for k in range(4))
        if len(parts) > 1:
            shuffle = draws(cfg.seed, epoch, Draw.SOURCE_INTERLEAVE).permutation(len(mono))
            mono, items, qlang, plang = mono[shuffle], items[shuffle], qlang[shuffle], plang[shuffle]
        if len(idx.blocks):
            idx.blocks.separate(items, qlang, plang, _slot_languages(idx, cfg.same_source, mono, qlang, items, cross))
        in_plan = np.zeros(idx.n_items, dtype=bool)
        in_plan[items.ravel()] = True
        return EpochPlan(idx.languages, mono, items, qlang, plang, order[~in_plan[order]])

    def _fill(self, members: np.ndarray, epoch: int, stream: tuple[int, ...],
              cross: tuple[np.ndarray, np.ndarray] | None, alpha: float) -> FilledBatches:
        """The batches of ``members`` (one source's with ``same_source``, named by ``stream``)."""
        cfg = self.cfg
        kinds = batch_kinds(cfg.seed, epoch, len(members) // cfg.batch_size, stream, alpha, cfg.mix)
        return fill_batches(self.index, members, cfg.batch_size, kinds, alpha, cfg.mix, self.weights, cross,
                            draws(cfg.seed, epoch, Draw.MONO_LANGUAGE, *stream))
