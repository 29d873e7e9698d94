"""What is mined: the pairs of a corpus as queries, their pools and the candidates each
query may never get as a negative."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from hbt.data.corpus import Corpus
from hbt.data.languages import check_language
from hbt.errors import InputError
from hbt.relevance import CandidateLayout


@dataclass
class MineLayout:
    """The pairs to mine for (queries, in language then item order) on top of the shared
    :class:`hbt.relevance.CandidateLayout` of the mined languages' pools (global candidate
    ids in language order, so each language is one id range).

    ``excluded`` holds, per query, the candidates it may never get: those relevant to its
    item in its own pool (the evaluation's rule; no other pool is searched) and, mining's
    own rule on top, those whose text is its positive's; ``positive`` the candidate that is
    its positive (its score is the reference of ``--max-score-ratio``)."""

    pairs: list[tuple[int, str]]  # (item index, language) per query
    query_texts: list[str]
    q_start: np.ndarray  # queries of candidates.langs[i]: q_start[i]:q_start[i+1]
    excluded: np.ndarray  # (queries x E) global candidate ids, -1 pads
    positive: np.ndarray  # (queries,) global candidate id
    candidates: CandidateLayout

    @classmethod
    def of(cls, corpus: Corpus, languages: tuple[str, ...] | None, source: str) -> "MineLayout":
        langs = _mined_languages(corpus, languages, source)
        pairs = [(i, lang) for lang in langs for i, item in enumerate(corpus.items) if lang in item.pairs]
        cands = CandidateLayout.of(corpus.retrieval.candidates, [corpus.items[i].id for i, _ in pairs], langs)
        q_start = np.searchsorted([langs.index(lang) for _, lang in pairs], np.arange(len(langs) + 1))
        excluded, positive = [], []
        for li, lang in enumerate(langs):
            by_text: dict[str, list[int]] = defaultdict(list)
            for gid in range(int(cands.start[li]), int(cands.start[li + 1])):
                by_text[cands.texts[gid].strip()].append(gid)
            rows = slice(int(q_start[li]), int(q_start[li + 1]))
            for (i, _), relevant in zip(pairs[rows], cands.relevant_in(li, rows)):
                item = corpus.items[i]
                same_text = by_text.get(item.pairs[lang].passage.strip(), [])
                pos = [c for c in same_text if c in relevant] or same_text
                if not pos:
                    raise InputError(source, f"item '{item.id}': its '{lang}' positive is not in the '{lang}' candidate pool")
                excluded.append(sorted(set(relevant) | set(same_text)))
                positive.append(pos[0])
        width = max(map(len, excluded), default=1)
        ex = np.full((len(excluded), width), -1, dtype=np.int64)
        for row, ids in enumerate(excluded):
            ex[row, :len(ids)] = ids
        return cls(pairs, [corpus.items[i].pairs[lang].query for i, lang in pairs], q_start, ex,
                   np.array(positive, dtype=np.int64), cands)


def _mined_languages(corpus: Corpus, languages: tuple[str, ...] | None, source: str) -> list[str]:
    """The pool languages to mine for: ``--languages`` (each checked), else every language
    that has both pairs and a candidate pool."""
    if not corpus.items:
        raise InputError(source, "has no training pairs (query and positive) to mine negatives for")
    have = sorted({lang for item in corpus.items for lang in item.pairs} & set(corpus.retrieval.candidates))
    if not languages:
        return have
    for lang in languages:
        check_language(lang, "--languages")
        if lang not in have:
            raise InputError("--languages", f"no '{lang}' pairs in {source} (it has: {', '.join(have)})")
    return sorted(set(languages))
