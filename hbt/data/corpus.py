"""The parallel corpus every loader produces, and its retrieval (evaluation) view.

An *item* is one question-answer unit that exists in one or more languages, with the
same id in each: the query of one language and the passage of another are a
cross-lingual positive pair exactly because they share the item id. Training reads
``Corpus.items``; evaluation reads ``Corpus.retrieval`` (queries, a candidate pool per
language, relevance through item ids, as :mod:`hbt.relevance` defines it), so one
loader serves both.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from hbt.relevance import positive_pools


@dataclass(frozen=True)
class Pair:
    """One language version of an item: the query, its positive passage, hard negatives."""

    query: str
    passage: str
    negatives: tuple[str, ...] = ()


@dataclass
class Item:
    id: str
    title: str
    pairs: dict[str, Pair]  # language -> pair


@dataclass(frozen=True)
class Query:
    id: str
    item_id: str
    text: str


@dataclass(frozen=True)
class Candidate:
    """A passage in the retrieval pool; relevant to the queries of every item it answers."""

    id: str
    text: str
    title: str
    item_ids: frozenset[str]


@dataclass
class RetrievalSet:
    """Per-language queries and candidate pools. Relevance: a candidate is relevant to a
    query when the query's item id is in ``candidate.item_ids``, whatever the languages."""

    queries: dict[str, list[Query]]
    candidates: dict[str, list[Candidate]]


@dataclass
class Corpus:
    name: str
    items: list[Item]
    retrieval: RetrievalSet
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def languages(self) -> list[str]:
        langs = set(self.retrieval.queries) | set(self.retrieval.candidates)
        for item in self.items:
            langs.update(item.pairs)
        return sorted(langs)

    @property
    def titles(self) -> list[str]:
        return sorted({item.title for item in self.items})

    def fingerprint(self) -> str:
        """A content hash: equal corpora share cached indexes, changed ones never do (and a resume notices)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for item in self.items:
                h.update(item.id.encode())
                for lang in sorted(item.pairs):
                    pair = item.pairs[lang]
                    for text in (lang, pair.query, pair.passage, *pair.negatives):
                        h.update(b"\0" + text.encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def subset(self, titles: Iterable[str], name: str) -> "Corpus":
        """The items, queries and candidates of the given article titles only."""
        keep = set(titles)
        items = [item for item in self.items if item.title in keep]
        item_ids = {item.id for item in items}
        queries = {
            lang: [q for q in qs if q.item_id in item_ids] for lang, qs in self.retrieval.queries.items()
        }
        candidates = {
            lang: [c for c in cs if c.title in keep] for lang, cs in self.retrieval.candidates.items()
        }
        return Corpus(
            name=name,
            items=items,
            retrieval=RetrievalSet(
                queries={k: v for k, v in queries.items() if v},
                candidates={k: v for k, v in candidates.items() if v},
            ),
        )


def retrieval_from_pairs(items: list[Item]) -> RetrievalSet:
    """The retrieval view of a corpus that only has pairs: every item's query, and per
    language the pool that :func:`hbt.relevance.positive_pools` defines (a passage shared
    by several items is one candidate relevant to all of them)."""
    queries: dict[str, list[Query]] = defaultdict(list)
    for item in items:
        for lang, pair in item.pairs.items():
            queries[lang].append(Query(id=f"{item.id}/{lang}", item_id=item.id, text=pair.query))
    pools = positive_pools((lang, item.id, item.title, pair.passage) for item in items for lang, pair in item.pairs.items())
    candidates = {
        lang: [Candidate(id=f"{lang}/{n}", text=text, title=title, item_ids=ids) for n, (text, title, ids) in enumerate(pool)]
        for lang, pool in pools.items()
    }
    return RetrievalSet(queries=dict(queries), candidates=candidates)
