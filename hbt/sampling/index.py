"""What the sampler knows of the training data: CSR arrays per item and per (item,
language) pair, the answer groups, the sources of a mixture and each pair's hard-negative
blocks, built without a Python object per item."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hbt.errors import InputError
from hbt.relevance import answer_groups
from hbt.sampling.blocking import PairBlocks


class LanguageIndex:
    """The training data as the planner reads it:

    * ``offsets`` (items + 1): item ``i``'s pairs are ``offsets[i]:offsets[i + 1]``;
    * ``langs`` (pairs): the language code of each (item, language) pair, ascending per item;
    * ``passages`` (pairs): an id per passage *text*: equal ids are equal texts, in any
      language (the training data hashes the texts);
    * ``group`` (items): the item's answer group, the smallest item index among the items
      it is connected to by sharing a passage id. A contrastive batch holds at most one
      item per group, which rules out every false negative (docs/sampler.md);
    * ``counts`` (languages): items per language;
    * ``source`` (items), ``sources``, ``weights``: a mixture's source of each item, the
      sources' names and the share of a source's items an epoch uses;
    * ``blocks``: with hard negatives, each pair's :class:`PairBlocks`.
    """

    languages: list[str]
    offsets: np.ndarray
    langs: np.ndarray
    passages: np.ndarray
    n_langs: np.ndarray
    group: np.ndarray
    counts: np.ndarray
    sources: list[str]
    source: np.ndarray
    weights: np.ndarray
    blocks: PairBlocks

    @classmethod
    def from_arrays(cls, languages: Sequence[str], offsets: np.ndarray, langs: np.ndarray, passages: np.ndarray,
                    source: np.ndarray | None = None, sources: Sequence[str] = ("data",),
                    weights: Sequence[float] | None = None,
                    negatives: tuple[np.ndarray, np.ndarray] | None = None) -> "LanguageIndex":
        """The index of CSR arrays: item ``i`` exists in languages ``langs[offsets[i]:offsets[i+1]]``
        (strictly ascending codes, as :mod:`hbt.data.training` builds them) with passage
        ids ``passages[...]`` (ids name texts; equal id = equal text). A mixture adds
        ``source`` (per item, an index into ``sources``) and per-source ``weights``: the
        share of a source's items an epoch uses, in (0, 1]. ``negatives``: per pair (CSR
        offsets over the pairs and ids) the hard negatives the run trains with, as text
        ids like ``passages``."""
        self = cls.__new__(cls)
        langs, passages = np.asarray(langs), np.asarray(passages)
        if negatives is not None and (len(negatives[0]) != len(langs) + 1 or negatives[0][0] != 0
                                      or negatives[0][-1] != len(negatives[1]) or (np.diff(negatives[0]) < 0).any()):
            raise InputError("LanguageIndex", "negatives need CSR offsets over the pairs: pairs + 1 non-decreasing entries from 0 to the ids")
        self._set_pairs(list(languages), np.asarray(offsets), langs, passages)
        self._set_sources(source, sources, weights)
        self.blocks = PairBlocks.of_negatives(self.group, self.n_langs, self.langs, len(self.languages), self.passages, negatives)
        return self

    def _set_pairs(self, languages: list[str], offsets: np.ndarray, langs: np.ndarray, passages: np.ndarray) -> None:
        """Check and store the pair arrays, the per-language counts and the answer groups."""
        where = "LanguageIndex"
        if len(set(languages)) != len(languages):
            raise InputError(where, f"languages repeat: {languages}")
        if offsets.ndim != 1 or len(offsets) < 1 or not np.issubdtype(offsets.dtype, np.integer):
            raise InputError(where, "offsets must be a 1-D integer array of items + 1 entries")
        if langs.shape != passages.shape or langs.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(langs):
            raise InputError(where, f"offsets must run from 0 to the {len(langs)} pairs, and langs and passages have one entry per pair")
        lens = np.diff(offsets)
        if (lens < 0).any():
            raise InputError(where, "offsets must be non-decreasing")
        if not (np.issubdtype(langs.dtype, np.integer) and np.issubdtype(passages.dtype, np.integer)):
            raise InputError(where, "langs and passages must be integer arrays")
        if len(langs) and (langs.min() < 0 or langs.max() >= len(languages)):
            raise InputError(where, f"a language code outside 0..{len(languages) - 1}")
        n = len(lens)
        item_of_pair = np.repeat(np.arange(n, dtype=np.int64), lens)
        langs = langs.astype(np.min_scalar_type(max(len(languages) - 1, 0)))
        if len(langs) > 1:
            step = np.diff(langs.astype(np.int64))
            inside = item_of_pair[1:] == item_of_pair[:-1]
            if ((step == 0) & inside).any():
                raise InputError(where, "an item lists a language twice")
            if ((step < 0) & inside).any():
                raise InputError(where, "each item's pairs must be sorted by language code (as hbt.data.training builds them)")
        self.languages = languages
        self.offsets = offsets.astype(np.int64, copy=False)
        self.langs = langs
        self.passages = passages.astype(np.int64, copy=False)
        self.n_langs = lens
        self.counts = np.bincount(langs, minlength=len(languages)).astype(np.int64)
        self.group = answer_groups(n, item_of_pair, self.passages)
        self._group_pools: tuple[np.ndarray, int] | None = None

    def _set_sources(self, source: np.ndarray | None, sources: Sequence[str], weights: Sequence[float] | None) -> None:
        self.sources = list(sources)
        self.source = np.zeros(self.n_items, dtype=np.int16) if source is None else np.asarray(source)
        self.weights = np.ones(len(self.sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.source.shape != (self.n_items,) or len(self.weights) != len(self.sources):
            raise InputError("LanguageIndex", "source needs one entry per item and weights one per source")
        if len(self.source) and (self.source.min() < 0 or self.source.max() >= len(self.sources)):
            raise InputError("LanguageIndex", f"a source code outside 0..{len(self.sources) - 1}")
        if not ((self.weights > 0) & (self.weights <= 1)).all():
            raise InputError("data.sources", f"weights must be in (0, 1], got {self.weights.tolist()}")

    # -- queries (tests, checks and tools; the planner reads the arrays) ----------------
    @property
    def n_items(self) -> int:
        return len(self.n_langs)

    def langs_of(self, item: int) -> tuple[int, ...]:
        return tuple(int(x) for x in self.langs[self.offsets[item]:self.offsets[item + 1]])

    def passage_of(self, item: int, lang: int) -> int | None:
        """The passage id of ``item`` in language code ``lang`` (None where it is missing)."""
        lo, hi = int(self.offsets[item]), int(self.offsets[item + 1])
        at = lo + int(np.searchsorted(self.langs[lo:hi], lang))
        return int(self.passages[at]) if at < hi and self.langs[at] == lang else None

    def _pools(self) -> tuple[np.ndarray, int]:
        """Distinct answer groups per language, and among the multilingual items."""
        if self._group_pools is None:
            item_of_pair = np.repeat(np.arange(self.n_items, dtype=np.int64), self.n_langs)
            groups = self.group[item_of_pair]
            per_lang = np.zeros(len(self.languages), dtype=np.int64)
            if len(groups):
                key = np.unique(self.langs.astype(np.int64) * self.n_items + groups)
                per_lang = np.bincount(key // max(self.n_items, 1), minlength=len(self.languages)).astype(np.int64)
            multi = len(np.unique(self.group[self.n_langs >= 2]))
            self._group_pools = (per_lang, multi)
        return self._group_pools

    def distinct_groups(self, lang: int) -> int:
        """How many items of language ``lang`` can share a batch: one per answer group."""
        return int(self._pools()[0][lang])

    def multilingual_groups(self) -> int:
        """How many items in two or more languages can share a (cross-lingual) batch."""
        return self._pools()[1]
