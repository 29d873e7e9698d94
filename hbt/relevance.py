"""What counts as relevant: one definition for the sampler, evaluation and mining.

**Definition.** A candidate passage is *relevant* to a query when it answers the query's
item: the item's id is among the ids the candidate answers (``Candidate.item_ids``),
whatever the query's and the candidate's languages. Where those ids come from depends on
the source: a LAReQA sentence answers the questions whose answer it holds, a retrieval
benchmark's document the queries its qrels name, and data that only has pairs (generic
JSONL, shards, synthetic) answers through its positives: the candidates of language L
are L's distinct positive texts, each answering every item whose L positive it is
(:func:`positive_pools`).

What is relevant to a query is never a negative of it, anywhere:

* evaluation ranks every relevant candidate of every query (:class:`CandidateLayout`,
  in all languages of the pool);
* mining never draws one as a negative (:meth:`CandidateLayout.relevant_in`, the
  candidates of the one pool it searches); it adds its own extra rule on top (a candidate
  whose text is the positive's, hbt.mine);
* training never puts two items into one contrastive batch when a passage of one may be
  relevant to the query of the other: items that share a passage text, in any language,
  are one *answer group* (:func:`answer_groups`), and a batch holds one item per group.

Changing what counts as relevant is an edit here, which all three see. Two functions
carry the rule: :class:`CandidateLayout` (relevance through item ids) and
:func:`answer_groups` (the sampler's groups, through passage texts); they agree while a
pair data set's candidates are its positive texts, so an edit to one is an edit to both.

Why it lives here, at the bottom of the data path (below :mod:`hbt.data`, not in it):
:mod:`hbt.data` builds its retrieval views through :func:`positive_pools`, and the
sampler, evaluation and mining all read relevance, so this module takes plain values
(strings, ids, numpy arrays, anything shaped like a candidate) and imports nothing from
hbt; every one of them can import it without a cycle.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping, Protocol, Sequence

import numpy as np


class Answering(Protocol):
    """A candidate as relevance reads it (``hbt.data.corpus.Candidate`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def item_ids(self) -> Collection[str]: ...


def positive_pools(pairs: Iterable[tuple[str, str, str, str]]) -> dict[str, list[tuple[str, str, frozenset[str]]]]:
    """The candidate pools of data that only has pairs, from each pair's ``(language, item
    id, title, positive text)``: per language (first seen first), its distinct positive
    texts in order of first appearance, each with the title of the first item it is the
    positive of and the ids of every item it is the positive of (the items it answers)."""
    pools: dict[str, dict[str, tuple[str, set[str]]]] = defaultdict(dict)
    for lang, item_id, title, text in pairs:
        _, ids = pools[lang].setdefault(text, (title, set()))
        ids.add(item_id)
    return {lang: [(text, title, frozenset(ids)) for text, (title, ids) in pool.items()] for lang, pool in pools.items()}


@dataclass
class CandidateLayout:
    """Candidates numbered globally in language order (so each language is one id range),
    and per query the ids of the candidates relevant to it, in every language of the
    layout. Evaluation ranks those; mining excludes those of the pool it searches."""

    langs: list[str]  # the pools' languages, in id order
    start: np.ndarray  # langs[i]'s candidates have ids start[i]:start[i + 1]
    lang: np.ndarray  # per candidate, the index of its language in langs
    texts: list[str]  # per candidate
    ids: list[str]  # per candidate
    relevant: np.ndarray  # (queries x R) candidate ids relevant to each query, ascending, -1 pads

    @classmethod
    def of(cls, pools: Mapping[str, Sequence[Answering]], query_items: Sequence[str],
           langs: Sequence[str] | None = None) -> "CandidateLayout":
        """The layout of the pools of ``langs`` (default: every pool, sorted), for queries
        whose items are ``query_items`` (one id per query, in query order)."""
        langs = sorted(pools) if langs is None else list(langs)
        sizes = [len(pools[lang]) for lang in langs]
        start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        texts, ids = [], []
        answers: dict[str, list[int]] = defaultdict(list)  # item id -> candidates answering it, ascending
        for lang in langs:
            for cand in pools[lang]:
                for item_id in cand.item_ids:
                    answers[item_id].append(len(texts))
                texts.append(cand.text)
                ids.append(cand.id)
        width = max([len(answers.get(item_id, ())) for item_id in query_items] + [1])
        relevant = np.full((len(query_items), width), -1, dtype=np.int64)
        for row, item_id in enumerate(query_items):
            found = answers.get(item_id, ())
            relevant[row, :len(found)] = found
        lang_of = np.repeat(np.arange(len(langs), dtype=np.int64), sizes)
        return cls(langs, start, lang_of, texts, ids, relevant)

    def relevant_in(self, lang: int, queries: slice = slice(None)) -> list[list[int]]:
        """Per query of ``queries``, its relevant candidates in the pool of ``langs[lang]``
        (the one pool a search of that language sees), ascending."""
        ids = self.relevant[queries]
        inside = np.where((ids >= self.start[lang]) & (ids < self.start[lang + 1]), ids, -1).tolist()
        return [[c for c in row if c >= 0] for row in inside]


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
