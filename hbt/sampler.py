"""The rank-aware hybrid batch sampler.

A *contrastive batch* is every pair whose embeddings meet in one loss: the per-rank
batch times the world size. The sampler plans each epoch's contrastive batches
globally, from the seed, the epoch, the contrastive batch size and the data alone,
and hands rank ``r`` slice ``r`` of each. So the sequence of global batches is the same
on 1, 2 or 64 ranks, and every contrastive batch is *pure*:

* **monolingual** (probability ``alpha``): one language X, every query and passage in X;
* **cross-lingual**: every pair has its query language != its passage language; each
  pair draws its own (X, Y) among the languages its item exists in, so one batch holds
  passages of many languages and its negatives look like a multilingual pool.

Policies (docs/sampler.md). The mono/cross mix is ``exact`` by default: an epoch of N
batches has ``round(alpha * N)`` monolingual ones, in shuffled order (``bernoulli``
draws each batch's type instead). The language of a monolingual batch, and the query
and passage languages of a cross-lingual pair, are drawn with weights from
``language_policy``: ``proportional`` to each language's item count (the paper's
"sampled based on dataset size"), ``uniform``, or ``temperature`` (count ** (1/T), T = ``language_temperature``).

An epoch is one pass over the items: an item id is used at most once as a query, in
whatever language its batch gives it. The items an epoch cannot fit into a full batch
are dropped, or with ``remainder="carry"`` put first in the next epoch.

**No false negatives.** Items that share a passage text in any language form one
*answer group* (connected components of "has the same passage text as"); a contrastive
batch holds at most one item of each group. Evaluation calls a candidate relevant to a
query when the query's item is among the candidate's items, i.e. when the item's own
passage in that language has that text; so no passage of a batch is relevant to another
pair's query of the same batch, in any language pairing (and no batch holds an item
twice or one passage text twice).

Scale. :class:`LanguageIndex` is a handful of numpy arrays (CSR offsets, a language code
and a passage id per (item, language) pair, an answer group per item); an epoch's plan is
three arrays (items, query and passage languages per slot) and batches are materialised
on access. Planning is greedy in the epoch's item order with one queue per language and
one for multilingual items; each queue entry is looked at O(1) times, so one epoch costs
O(pairs) numpy work plus O(1) numpy calls per batch (docs/sampler-benchmarks.md).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Iterator, Literal, Sequence, overload

import numpy as np

from hbt.data.corpus import Corpus
from hbt.errors import InputError

PairKey = tuple[int, str, str]  # (item index, query language, passage language)


@dataclass(frozen=True)
class SamplerConfig:
    batch_size: int  # the contrastive batch: per-rank batch x world size
    alpha: float = 0.5
    mix: Literal["exact", "bernoulli"] = "exact"
    language_policy: Literal["proportional", "uniform", "temperature"] = "proportional"
    language_temperature: float = 1.0
    remainder: Literal["drop", "carry"] = "drop"
    seed: int = 0
    same_source: bool = False  # every contrastive batch from one source of a mixture

    def validate(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError("train.batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError("train.alpha", f"must be in [0, 1], got {self.alpha}")
        if self.mix not in ("exact", "bernoulli"):
            raise InputError("train.mix", f"must be 'exact' or 'bernoulli', got {self.mix!r}")
        if self.language_policy not in ("proportional", "uniform", "temperature"):
            raise InputError("train.language_policy", f"must be proportional, uniform or temperature, got {self.language_policy!r}")
        if not self.language_temperature > 0:
            raise InputError("train.language_temperature", f"must be > 0, got {self.language_temperature}")
        if self.remainder not in ("drop", "carry"):
            raise InputError("train.remainder", f"must be 'drop' or 'carry', got {self.remainder!r}")


# -- the index ------------------------------------------------------------------------


def _csr_take(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The pair positions of ``rows`` (CSR rows), concatenated in the order of ``rows``."""
    starts = offsets[rows]
    lens = offsets[rows + 1] - starts
    ends = np.cumsum(lens)
    return np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(starts - (ends - lens), lens)


def answer_groups(n_items: int, item_of_pair: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """Connected components of "items share a passage id": per item, the smallest item
    index of its component. Hook-the-larger-root union with full path compression, all
    in numpy; each round is O(pairs) and the rounds are few (about log of the largest
    component's diameter)."""
    parent = np.arange(n_items, dtype=np.int64)
    if len(passages) < 2:
        return parent
    by_passage = np.argsort(passages, kind="stable")
    same = passages[by_passage[1:]] == passages[by_passage[:-1]]
    u = item_of_pair[by_passage[:-1][same]].astype(np.int64)
    v = item_of_pair[by_passage[1:][same]].astype(np.int64)
    del by_passage, same
    while u.size:
        ru, rv = parent[u], parent[v]  # roots: parent is fully compressed here
        differ = ru != rv
        u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
        if not u.size:
            break
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:  # pointer jumping until every item points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


class LanguageIndex:
    """What the sampler needs to know of a corpus, as arrays:

    * ``offsets`` (items + 1): item ``i``'s pairs are ``offsets[i]:offsets[i + 1]``;
    * ``langs`` (pairs): the language code of each (item, language) pair, ascending per item;
    * ``passages`` (pairs): an id per passage *text*: equal ids are equal texts, in any
      language (``from_corpus`` numbers the distinct texts of the whole corpus);
    * ``group`` (items): the item's answer group, the smallest item index among the items
      it is connected to by sharing a passage id. A contrastive batch holds at most one
      item per group, which rules out every false negative (docs/sampler.md);
    * ``counts`` (languages): items per language;
    * ``block_offsets`` / ``blocks`` (CSR over pairs): with hard negatives, the answer
      groups other than its own that one of the pair's negatives is a positive of. A
      batch never holds a pair and a member of a group it blocks, so no hard negative is
      relevant to another query of its batch (docs/sampler.md).

    ``LanguageIndex(languages, item_langs, passage_ids, negative_ids)`` takes Python lists
    (per item a tuple of language codes, a ``{language code: passage id}`` dict and,
    optionally, a ``{language code: [negative passage ids]}`` dict); :meth:`from_arrays`
    takes the arrays directly (no Python object per item).
    """

    languages: list[str]
    offsets: np.ndarray
    langs: np.ndarray
    passages: np.ndarray
    group: np.ndarray
    counts: np.ndarray

    def __init__(self, languages: list[str], item_langs: Sequence[Sequence[int]], passage_ids: Sequence[dict[int, int]],
                 negative_ids: Sequence[dict[int, Sequence[int]]] | None = None):
        if len(item_langs) != len(passage_ids):
            raise InputError("LanguageIndex", f"{len(item_langs)} items' languages but {len(passage_ids)} items' passage ids")
        lens = np.fromiter((len(langs) for langs in item_langs), dtype=np.int64, count=len(item_langs))
        offsets = np.zeros(len(item_langs) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        langs = np.fromiter((lang for ls in item_langs for lang in ls), dtype=np.int64, count=int(offsets[-1]))
        try:
            passages = np.fromiter((ids[lang] for ls, ids in zip(item_langs, passage_ids) for lang in ls),
                                   dtype=np.int64, count=int(offsets[-1]))
        except KeyError as e:
            raise InputError("LanguageIndex", f"an item has no passage id for its language {e.args[0]}") from None
        self._setup(list(languages), offsets, langs, passages)  # negatives below follow the sorted self.langs
        self._set_sources(None, ("data",), None)
        negatives = None
        if negative_ids is not None:  # per pair in the sorted order _setup keeps
            lists = [list(negative_ids[i].get(int(lang), ())) for i in range(self.n_items)
                     for lang in self.langs[self.offsets[i]:self.offsets[i + 1]]]
            neg_offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
            negatives = (neg_offsets, np.array([n for x in lists for n in x], dtype=np.int64))
        self._set_negatives(negatives)

    @classmethod
    def from_arrays(cls, languages: Sequence[str], offsets: np.ndarray, langs: np.ndarray, passages: np.ndarray,
                    source: np.ndarray | None = None, sources: Sequence[str] = ("data",),
                    weights: Sequence[float] | None = None,
                    negatives: tuple[np.ndarray, np.ndarray] | None = None) -> "LanguageIndex":
        """The index of CSR arrays: item ``i`` exists in languages ``langs[offsets[i]:offsets[i+1]]``
        with passage ids ``passages[...]`` (ids name texts; equal id = equal text). A mixture
        adds ``source`` (per item, an index into ``sources``) and per-source ``weights``:
        the share of a source's items an epoch uses, in (0, 1]. ``negatives``: per pair
        (CSR offsets over the pairs, in the order given, and ids) the hard negatives the run
        trains with, as text ids like ``passages``."""
        self = cls.__new__(cls)
        langs, passages = np.asarray(langs), np.asarray(passages)
        if negatives is not None and (len(negatives[0]) != len(langs) + 1 or negatives[0][0] != 0
                                      or negatives[0][-1] != len(negatives[1]) or (np.diff(negatives[0]) < 0).any()):
            raise InputError("LanguageIndex", "negatives need CSR offsets over the pairs: pairs + 1 non-decreasing entries from 0 to the ids")
        order = self._setup(list(languages), np.asarray(offsets), langs, passages)
        self._set_sources(source, sources, weights)
        if negatives is not None and order is not None:  # _setup sorted the pairs: follow
            neg_offsets, neg_ids = negatives
            lens = np.diff(neg_offsets)[order]
            negatives = (np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), neg_ids[_csr_take(neg_offsets, order)])
        self._set_negatives(negatives)
        return self

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

    def _set_negatives(self, negatives: tuple[np.ndarray, np.ndarray] | None) -> None:
        """``blocks``: per (item, language) pair, the answer groups (not its own) that hold
        one of that pair's negatives as a positive: a negative equal to item B's passage, in
        any language, is relevant to B's query, and B's group is every item sharing a
        passage with B. Per pair, not per item: a pair trains with the negatives of the
        passage language it is given, so only those can meet another query of its batch
        (per item, an 11-language item blocked every group any of its languages' negatives
        answer, which left a small pool unplannable)."""
        n = self.n_items
        self.block_offsets, self.blocks = np.zeros(len(self.langs) + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
        self._pair_keys: np.ndarray | None = None  # built by blocked_by, which only a plan with blocks calls
        if negatives is None or not len(negatives[1]) or not len(self.passages):
            return
        neg_offsets, neg_ids = negatives
        item_of_pair = np.repeat(np.arange(n, dtype=np.int64), self.n_langs)
        pair_of_neg = np.repeat(np.arange(len(self.langs), dtype=np.int64), np.diff(neg_offsets))
        by_text = np.argsort(self.passages, kind="stable")
        texts = self.passages[by_text]
        at = np.minimum(np.searchsorted(texts, neg_ids), len(texts) - 1)
        hit = texts[at] == neg_ids
        pair, group = pair_of_neg[hit], self.group[item_of_pair[by_text[at[hit]]]]
        other = group != self.group[item_of_pair[pair]]  # its own group's text: nothing a batch can change
        key = np.unique(pair[other] * n + group[other])
        np.cumsum(np.bincount(key // n, minlength=len(self.langs)), out=self.block_offsets[1:])
        self.blocks = key % n

    def blocked_by(self, items: np.ndarray, langs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The answer groups that ``items`` block when they train with passages in
        ``langs`` (each item must have its language: the planner only asks for those), as
        (position in the input, group)."""
        if self._pair_keys is None:  # (item, language) of every pair, ascending as the pairs are
            self._pair_keys = np.repeat(np.arange(self.n_items, dtype=np.int64), self.n_langs) * len(self.languages) + self.langs
        keys = np.asarray(items) * len(self.languages) + np.asarray(langs)
        pairs = np.searchsorted(self._pair_keys, keys)
        if len(pairs) and (pairs.max() >= len(self._pair_keys) or (self._pair_keys[pairs] != keys).any()):
            raise ValueError("blocked_by: an item asked for in a language it does not have")
        owner = np.repeat(np.arange(len(pairs)), self.block_offsets[pairs + 1] - self.block_offsets[pairs])
        return owner, self.blocks[_csr_take(self.block_offsets, pairs)]

    @classmethod
    def from_corpus(cls, corpus: Corpus, hard_negatives: int = 0) -> "LanguageIndex":
        """The index of a parsed corpus (texts numbered in order of appearance), with the
        first ``hard_negatives`` negatives of each pair as :meth:`from_arrays` takes them."""
        languages = corpus.languages
        code = {lang: i for i, lang in enumerate(languages)}
        text_ids: dict[str, int] = {}
        offsets, langs, passages, neg_offsets, negatives = [0], [], [], [0], []
        for item in corpus.items:
            for lang in sorted(item.pairs, key=code.__getitem__):
                langs.append(code[lang])
                passages.append(text_ids.setdefault(item.pairs[lang].passage, len(text_ids)))
                negatives += [text_ids.setdefault(n, len(text_ids)) for n in item.pairs[lang].negatives[:hard_negatives]]
                neg_offsets.append(len(negatives))
            offsets.append(len(langs))
        return cls.from_arrays(languages, np.array(offsets, dtype=np.int64), np.array(langs, dtype=np.int64),
                               np.array(passages, dtype=np.int64),
                               negatives=(np.array(neg_offsets, dtype=np.int64), np.array(negatives, dtype=np.int64))
                               if hard_negatives else None)

    def _setup(self, languages: list[str], offsets: np.ndarray, langs: np.ndarray, passages: np.ndarray) -> np.ndarray | None:
        """Check and store the arrays; returns the order it sorted the pairs into (None
        when they came sorted), which pair-aligned arrays given beside them must follow."""
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
        passages = passages.astype(np.int64, copy=False)
        order = None
        if len(langs) > 1:
            step = np.diff(langs.astype(np.int64))
            inside = item_of_pair[1:] == item_of_pair[:-1]
            if (step[inside] <= 0).any():  # sort each item's languages, then refuse repeats
                by = np.lexsort((langs, item_of_pair))
                langs, passages = langs[by], passages[by]
                order = by
                if ((np.diff(langs.astype(np.int64)) == 0) & inside).any():
                    raise InputError(where, "an item lists a language twice")
        self.languages = languages
        self.offsets = offsets.astype(np.int64, copy=False)
        self.langs = langs
        self.passages = passages
        self.n_langs = lens
        self.counts = np.bincount(langs, minlength=len(languages)).astype(np.int64)
        self.group = answer_groups(n, item_of_pair, passages)
        self._group_pools: tuple[np.ndarray, int] | None = None
        return order

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

    def distinct_passages(self, lang: int) -> int:
        return len(np.unique(self.passages[self.langs == lang]))

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


# -- plans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastiveBatch:
    kind: Literal["mono", "cross"]
    pairs: tuple[PairKey, ...]

    @property
    def label(self) -> str:
        """The batch type as logged: ``mono/<lang>`` or ``cross``."""
        return self.kind if self.kind == "cross" else f"mono/{self.pairs[0][1]}"


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

    def pairs(self, b: int, lo: int = 0, hi: int | None = None) -> list[PairKey]:
        """Pairs ``lo:hi`` of batch ``b`` (a rank's slice)."""
        names = self.languages
        return [(int(i), names[q], names[p]) for i, q, p in zip(self.items[b, lo:hi].tolist(), self.qlang[b, lo:hi].tolist(), self.plang[b, lo:hi].tolist())]

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

    def take(self, size: int, used: np.ndarray, group: np.ndarray, pos: np.ndarray, mark: np.ndarray, seen: np.ndarray,
             stamp: int) -> np.ndarray | None:
        """``size`` items or None when fewer than ``size`` groups have an unused item here
        (then none ever will again this epoch). Leaves ``used`` to the caller. ``mark`` and
        ``seen`` are scratch arrays over groups; ``stamp`` is new on every call."""
        heads = self.heads
        if len(heads):
            gone = used[heads]
            if gone.any():  # used by another queue: the group's next waiting item steps up
                keep = heads[~gone].tolist()
                for item in heads[gone].tolist():
                    nxt = self._next_of(int(group[item]), used)
                    if nxt is not None:
                        keep.append(nxt)
                self._set_heads(keep, pos)
                heads = self.heads
        if len(heads) >= size:
            taken = heads[:size]
            self._set_heads(heads[size:].tolist() + self._successors(taken, group, used), pos)
            return taken
        need = size - len(heads)
        if len(heads):
            seen[group[heads]] = stamp
        items, start = self.items, self.cursor
        while True:
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


class _Planner:
    """Builds one epoch's contrastive batches; pure function of its inputs."""

    def __init__(self, index: LanguageIndex, cfg: SamplerConfig):
        self.index = index
        self.cfg = cfg
        self.weights = language_weights(index.counts, cfg.language_policy, cfg.language_temperature)

    def _order(self, epoch: int, carried: np.ndarray) -> np.ndarray:
        """The epoch's item order: carried items first, then a shuffle in which the items of
        one answer group are spread evenly (systematic sampling: the j-th of a group's g
        items, in random order, sits at (j + u) / g of the epoch for one uniform u per
        group). Every item's place is still uniform, but group mates rarely meet near the
        end of an epoch, where they would leave batches unfillable."""
        n, group = self.index.n_items, self.index.group
        rng = np.random.default_rng([self.cfg.seed, epoch, 0])
        key = rng.random(n)[group]  # u of the item's group (groups are named by an item)
        size = np.bincount(group, minlength=n)[group]
        shared = np.flatnonzero(size > 1)
        if len(shared):
            by = shared[np.lexsort((rng.random(len(shared)), group[shared]))]  # a random order within each group
            g = group[by]
            start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            rank = np.arange(len(by)) - np.repeat(start, np.diff(np.r_[start, len(by)]))
            key[by] = (rank + key[by]) / size[by]
        perm = np.argsort(key, kind="stable")
        perm = self._weighted(perm, epoch)
        if not len(carried):
            return perm
        fresh = np.ones(self.index.n_items, dtype=bool)
        fresh[carried] = False
        return np.concatenate([carried, perm[fresh[perm]]])

    def _weighted(self, perm: np.ndarray, epoch: int) -> np.ndarray:
        """``perm`` without the items a source of weight w < 1 sits out this epoch: it uses
        ``round(w * items)`` of them, a fresh seeded choice every epoch."""
        idx = self.index
        if (idx.weights >= 1).all():
            return perm
        rng = np.random.default_rng([self.cfg.seed, epoch, 4])
        keep = np.ones(idx.n_items, dtype=bool)
        for s, w in enumerate(idx.weights):
            if w < 1:
                members = np.flatnonzero(idx.source == s)
                drop = rng.permutation(members)[math.floor(w * len(members) + 0.5):]
                keep[drop] = False
        return perm[keep[perm]]

    def _kinds(self, epoch: int, n: int, stream: tuple[int, ...], alpha: float) -> np.ndarray:
        """True for monolingual: a shuffled exact mix, or a Bernoulli draw per batch."""
        rng = np.random.default_rng([self.cfg.seed, epoch, 1, *stream])
        if self.cfg.mix == "bernoulli":
            return rng.random(n) < alpha
        return rng.permutation(np.arange(n) < mono_count(alpha, n))

    def _cross_languages(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Per item, the query language (a draw with the policy's weights among its
        languages) and the passage language (a draw among the others): the first two of an
        exponential race (Efraimidis-Spirakis), for all items at once."""
        idx = self.index
        race = np.random.default_rng([self.cfg.seed, epoch, 3]).standard_exponential(len(idx.langs))
        with np.errstate(divide="ignore"):
            race /= self.weights[idx.langs]
        query = _segment_argmin(race, idx.offsets, idx.n_langs)
        race[query[idx.n_langs >= 1]] = np.inf
        passage = _segment_argmin(race, idx.offsets, idx.n_langs)
        return idx.langs[query], idx.langs[passage]

    def _queues(self, order: np.ndarray) -> tuple[list[_Queue], _Queue]:
        """One queue per language and one of the multilingual items, in ``order``."""
        idx, size = self.index, self.cfg.batch_size
        at = _csr_take(idx.offsets, order)
        langs = idx.langs[at]
        items = np.repeat(order, idx.n_langs[order])
        del at
        by_lang = np.argsort(langs, kind="stable")  # a radix sort: small integer codes
        bounds = np.concatenate([[0], np.cumsum(np.bincount(langs, minlength=len(idx.languages)))])
        items = items[by_lang]
        del by_lang, langs
        mono = [_Queue(items[bounds[x]:bounds[x + 1]], size) for x in range(len(idx.languages))]
        return mono, _Queue(order[idx.n_langs[order] >= 2], size)

    def plan(self, epoch: int, carried: np.ndarray) -> EpochPlan:
        """The epoch's batches. With ``same_source`` each source is planned on its own (its
        own exact mix) and the sources' batches are interleaved in a seeded order."""
        idx = self.index
        order = self._order(epoch, np.asarray(carried, dtype=np.int64))
        cross = self._cross_languages(epoch) if self.cfg.alpha < 1 else (None, None)
        if not self.cfg.same_source or len(idx.sources) == 1:
            parts = [self._fill(order, epoch, (), cross, self.cfg.alpha)]
        else:
            parts = []
            for s in range(len(idx.sources)):
                members = order[idx.source[order] == s]
                # A source that cannot fill a cross-lingual batch (e.g. English only) makes
                # monolingual batches only; an exact mix would cut it to round(alpha * 1).
                can_cross = int((idx.n_langs[members] >= 2).sum()) >= self.cfg.batch_size
                alpha = self.cfg.alpha if can_cross or self.cfg.alpha == 0 else 1.0
                parts.append(self._fill(members, epoch, (s,), cross, alpha))
        mono, items, qlang, plang = (np.concatenate([p[k] for p in parts]) for k in range(4))
        if len(parts) > 1:
            shuffle = np.random.default_rng([self.cfg.seed, epoch, 5]).permutation(len(mono))
            mono, items, qlang, plang = mono[shuffle], items[shuffle], qlang[shuffle], plang[shuffle]
        if len(idx.blocks):
            self._separate(mono, items, qlang, plang, cross)
        in_plan = np.zeros(idx.n_items, dtype=bool)
        in_plan[items.ravel()] = True
        return EpochPlan(idx.languages, mono, items, qlang, plang, order[~in_plan[order]])

    def _conflicts(self, items: np.ndarray, plang: np.ndarray) -> np.ndarray:
        """Per batch (rows of ``items``, passage languages ``plang``), the slots whose pair
        blocks the group of another item of the batch, or whose group another pair blocks;
        all batches at once."""
        idx, n = self.index, self.index.n_items
        batch_of = np.repeat(np.arange(len(items), dtype=np.int64), items.shape[1])
        flat = items.ravel()
        owner, groups = idx.blocked_by(flat, plang.ravel())
        present = batch_of * n + idx.group[flat]  # (batch, group) of every slot
        blocked = batch_of[owner] * n + groups  # (batch, group) every slot blocks
        bad = np.zeros(len(flat), dtype=bool)
        bad[owner[np.isin(blocked, present)]] = True  # it blocks someone here
        bad[np.isin(present, blocked)] = True  # someone here blocks it
        return bad.reshape(items.shape)

    def _separate(self, mono: np.ndarray, items: np.ndarray, qlang: np.ndarray, plang: np.ndarray,
                  cross: tuple[np.ndarray | None, np.ndarray | None]) -> None:
        """Swap items between batches until no batch holds a pair together with an item
        of a group it blocks. A moved item takes its new batch's language (monolingual) or
        its epoch's cross-lingual language pair, so batches keep their kind, language,
        size and source (``same_source``), and the epoch keeps its items. In place and a
        pure function of the plan (so rank-count invariant and resumable). Conflicts are
        rare in a large pool; each is mended by the first admissible swap, looked for in the
        following batches."""
        todo = np.flatnonzero(self._conflicts(items, plang).any(axis=1))
        for b in todo.tolist():
            while True:
                bad = np.flatnonzero(self._conflicts(items[b:b + 1], plang[b:b + 1])[0])
                if not len(bad):
                    break
                if not self._swap_out(b, int(bad[0]), mono, items, qlang, plang, cross):
                    item = int(items[b, bad[0]])
                    raise InputError("train.hard_negatives", f"cannot plan a batch for item {item} without one of its hard "
                                     f"negatives being another pair's positive: its negatives answer too many of the "
                                     f"{len(items)} batches' items (check the negatives, or lower train.batch_size)")

    def _fits(self, item: int, b: int, mono: np.ndarray, qlang: np.ndarray, items: np.ndarray,
              cross: tuple[np.ndarray | None, np.ndarray | None]) -> tuple[int, int] | None:
        """The (query, passage) languages ``item`` would have in batch ``b``, or None when it
        cannot be there (a language it lacks, a cross batch without two, another source)."""
        idx = self.index
        if self.cfg.same_source and idx.source[item] != idx.source[items[b, 0]]:
            return None
        if mono[b]:
            lang = int(qlang[b, 0])
            own = idx.langs[idx.offsets[item]:idx.offsets[item + 1]]
            return (lang, lang) if (own == lang).any() else None
        if cross[0] is None or idx.n_langs[item] < 2:
            return None
        return int(cross[0][item]), int(cross[1][item])

    def _swap_out(self, b: int, j: int, mono: np.ndarray, items: np.ndarray, qlang: np.ndarray, plang: np.ndarray,
                  cross: tuple[np.ndarray | None, np.ndarray | None]) -> bool:
        """Swap slot ``j`` of batch ``b`` with the first slot of a later (then earlier)
        batch where both items fit and then sit without conflict; False if none."""
        idx = self.index
        group = idx.group
        mine = int(items[b, j])
        keep = np.arange(items.shape[1]) != j
        g_rest_b = group[items[b, keep]]
        blocked_by_rest_b = idx.blocked_by(items[b, keep], plang[b, keep])[1]
        n = len(items)
        for b2 in ((b + step) % n for step in range(1, n)):
            there = self._fits(mine, b2, mono, qlang, items, cross)
            if there is None:
                continue
            my_blocks = idx.blocked_by(np.array([mine]), np.array([there[1]]))[1]
            cand = items[b2]
            owners, blocked_in_b2 = idx.blocked_by(cand, plang[b2])
            # a candidate must fit batch b without ``mine``: its group not there, nor blocked there
            for j2 in np.flatnonzero(~np.isin(group[cand], g_rest_b) & ~np.isin(group[cand], blocked_by_rest_b)).tolist():
                here = self._fits(int(cand[j2]), b, mono, qlang, items, cross)
                if here is None or np.isin(idx.blocked_by(cand[j2:j2 + 1], np.array([here[1]]))[1], g_rest_b).any():
                    continue
                rest_b2 = np.delete(cand, j2)
                if group[mine] in group[rest_b2] or np.isin(group[rest_b2], my_blocks).any() \
                        or group[mine] in blocked_in_b2[owners != j2]:
                    continue
                items[b, j], items[b2, j2] = cand[j2], mine
                (qlang[b, j], plang[b, j]), (qlang[b2, j2], plang[b2, j2]) = here, there
                return True
        return False

    def _fill(self, order: np.ndarray, epoch: int, stream: tuple[int, ...],
              cross: tuple[np.ndarray | None, np.ndarray | None], alpha: float) -> tuple[np.ndarray, ...]:
        """Batches from the items of ``order`` (``mono``, ``items``, ``qlang``, ``plang``),
        ``alpha`` of them monolingual."""
        cfg, idx, size = self.cfg, self.index, self.cfg.batch_size
        n_max = len(order) // size
        kinds = self._kinds(epoch, n_max, stream, alpha)
        n_lang = len(idx.languages)
        items = np.zeros((n_max, size), dtype=np.int64)
        qlang = np.zeros((n_max, size), dtype=idx.langs.dtype)
        plang = np.zeros((n_max, size), dtype=idx.langs.dtype)
        mono = np.zeros(n_max, dtype=bool)
        rows = 0
        if n_max:
            pos = np.empty(idx.n_items, dtype=np.int64)
            pos[order] = np.arange(len(order))
            mono_queues, multi = self._queues(order)
            cross_q, cross_p = cross
            used = np.zeros(idx.n_items, dtype=bool)
            mark = np.zeros(idx.n_items, dtype=np.int64)
            seen = np.full(idx.n_items, -1, dtype=np.int64)
            remaining = np.bincount(idx.langs[_csr_take(idx.offsets, order)], minlength=n_lang)  # unused, per language
            remaining_multi = int((idx.n_langs[order] >= 2).sum())
            lang_rng = np.random.default_rng([cfg.seed, epoch, 2, *stream])
            calls = 0  # a fresh stamp per take() (for ``seen``)
            dead = {True: alpha == 0, False: alpha == 1}
            made = {True: 0, False: 0}
            target: int | None = None  # exact mix: batches of the live kind still worth making
            for b in range(n_max):
                kind = bool(kinds[b])
                if dead[kind]:
                    if cfg.mix == "bernoulli":
                        break
                    continue
                taken = None
                if kind:
                    while taken is None:
                        feasible = (remaining >= size) & (self.weights > 0) & ~np.array([q.dead for q in mono_queues])
                        w = np.where(feasible, self.weights, 0.0)
                        if not w.sum() > 0:
                            break
                        lang = min(int(np.searchsorted(np.cumsum(w), lang_rng.random() * w.sum(), side="right")), n_lang - 1)
                        calls += 1
                        taken = mono_queues[lang].take(size, used, idx.group, pos, mark, seen, calls)
                        if taken is None:
                            mono_queues[lang].dead = True
                    if taken is not None:
                        qlang[rows] = plang[rows] = lang
                elif remaining_multi >= size:
                    calls += 1
                    taken = multi.take(size, used, idx.group, pos, mark, seen, calls)
                    if taken is not None:
                        qlang[rows], plang[rows] = cross_q[taken], cross_p[taken]
                if taken is None:
                    if cfg.mix == "bernoulli":
                        break
                    dead[kind] = True
                    if dead[not kind]:
                        break
                    # the longest exact epoch now has at most this many of the other kind
                    n_best = longest_exact_epoch(alpha, *((made[True], n_max) if kind else (n_max, made[False])))
                    target = n_best - mono_count(alpha, n_best) if kind else mono_count(alpha, n_best)
                    if made[not kind] >= target:
                        break
                    continue
                used[taken] = True
                remaining -= np.bincount(idx.langs[_csr_take(idx.offsets, taken)], minlength=n_lang)
                remaining_multi -= int((idx.n_langs[taken] >= 2).sum())
                items[rows], mono[rows] = taken, kind
                rows += 1
                made[kind] += 1
                if target is not None and made[kind] >= target:
                    break
        keep = np.ones(rows, dtype=bool)
        if cfg.mix == "exact" and rows:
            n = longest_exact_epoch(alpha, int(mono[:rows].sum()), int((~mono[:rows]).sum()))
            for kind, surplus in ((True, int(mono[:rows].sum()) - mono_count(alpha, n)),
                                  (False, int((~mono[:rows]).sum()) - (n - mono_count(alpha, n)))):
                if surplus > 0:  # drop the last batches of the kind in surplus
                    keep[np.flatnonzero(mono[:rows] == kind)[-surplus:]] = False
        kept = np.flatnonzero(keep)
        return mono[kept], items[kept], qlang[kept], plang[kept]


def _segment_argmin(values: np.ndarray, offsets: np.ndarray, lens: np.ndarray) -> np.ndarray:
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


class HybridBatchSampler:
    """The epoch plans and this rank's place in them (:mod:`hbt.batches` turns batch ``b``
    into token ids); iterating yields this rank's slice of every contrastive batch as
    ``(item index, query language, passage language)`` keys.

    Call :meth:`set_epoch` before each epoch; :meth:`state_dict` /
    :meth:`load_state_dict` resume mid-epoch (the cursor counts contrastive batches).
    """

    def __init__(self, index: LanguageIndex, cfg: SamplerConfig, world_size: int = 1, rank: int = 0):
        cfg.validate()
        if cfg.batch_size % world_size:
            raise InputError("train.batch_size", f"{cfg.batch_size} is not divisible by the world size {world_size}")
        self._check_pools(index, cfg)
        self.index, self.cfg = index, cfg
        self.world_size, self.rank = world_size, rank
        self.per_rank = cfg.batch_size // world_size
        self._planner = _Planner(index, cfg)
        self._plans: dict[int, EpochPlan] = {}
        self.epoch = 0
        self.cursor = 0
        if not len(self.plan()):
            raise InputError("train.batch_size", f"no contrastive batch of {cfg.batch_size} can be formed from this data")

    @staticmethod
    def _check_pools(index: LanguageIndex, cfg: SamplerConfig) -> None:
        if cfg.alpha > 0:
            for lang, name in enumerate(index.languages):
                pool = index.distinct_groups(lang)
                if pool < cfg.batch_size:
                    raise InputError("train.batch_size", f"contrastive batch {cfg.batch_size} is larger than language '{name}''s pool of {pool} items with distinct passages (items that share a passage text in any language count once)")
        if cfg.alpha < 1:
            multilingual = index.multilingual_groups()
            if multilingual < cfg.batch_size:
                raise InputError("train.batch_size", f"contrastive batch {cfg.batch_size} is larger than the {multilingual} items that exist in two or more languages, counting items that share a passage text once (cross-lingual batches need them; train.alpha=1 trains monolingual only)")

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The global contrastive batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            carried = self._plans_of(epoch - 1).leftover if self.cfg.remainder == "carry" and epoch > 0 else np.empty(0, np.int64)
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # keep memory flat
            self._plans[epoch] = self._planner.plan(epoch, carried)
        return self._plans[epoch]

    def _plans_of(self, epoch: int) -> EpochPlan:
        return self.plan(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.cursor = epoch, 0

    def __len__(self) -> int:
        return len(self.plan())

    def rank_slice(self) -> tuple[int, int]:
        """This rank's positions in every contrastive batch."""
        return self.rank * self.per_rank, (self.rank + 1) * self.per_rank

    def __iter__(self) -> Iterator[list[PairKey]]:
        lo, hi = self.rank_slice()
        plan = self.plan()
        while self.cursor < len(plan):
            b = self.cursor
            self.cursor += 1
            yield plan.pairs(b, lo, hi)

    def mix(self, epoch: int | None = None) -> Counter[str]:
        """Batch-type counts of an epoch: ``mono/<lang>`` per language, and ``cross``."""
        return self.plan(epoch).mix()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, **asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state[k] for k in asdict(self.cfg) if k in state}
        if saved != asdict(self.cfg):
            changed = sorted(k for k in saved if saved[k] != asdict(self.cfg)[k])
            raise InputError("resume", f"the checkpoint's sampler settings differ from this run's ({', '.join(changed)})")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
