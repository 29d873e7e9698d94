"""Builders the tests share: the data structures hbt's data layer builds from files,
made here from plain Python values."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hbt.data.corpus import Corpus
from hbt.sampling import LanguageIndex


def index_of_lists(languages: Sequence[str], item_langs: Sequence[Sequence[int]], passage_ids: Sequence[dict[int, int]],
                   negative_ids: Sequence[dict[int, Sequence[int]]] | None = None) -> LanguageIndex:
    """The sampler's index of items given as lists: per item its language codes (any
    order), a ``{language code: passage id}`` dict and, optionally, a ``{language code:
    [negative passage ids]}`` dict. Each item's pairs are sorted by language, as the
    training data's are."""
    sorted_langs = [sorted(langs) for langs in item_langs]
    offsets = np.concatenate([[0], np.cumsum([len(langs) for langs in sorted_langs])]).astype(np.int64)
    langs = np.array([lang for ls in sorted_langs for lang in ls], dtype=np.int64)
    passages = np.array([ids[lang] for ls, ids in zip(sorted_langs, passage_ids) for lang in ls], dtype=np.int64)
    negatives = None
    if negative_ids is not None:
        lists = [list(negs.get(lang, ())) for ls, negs in zip(sorted_langs, negative_ids) for lang in ls]
        neg_offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        negatives = (neg_offsets, np.array([n for x in lists for n in x], dtype=np.int64))
    return LanguageIndex.from_arrays(list(languages), offsets, langs, passages, negatives=negatives)


def index_of_corpus(corpus: Corpus, hard_negatives: int = 0) -> LanguageIndex:
    """The sampler's index of a parsed corpus (texts numbered in order of appearance), with
    the first ``hard_negatives`` negatives of each pair, as training would see them."""
    code = {lang: i for i, lang in enumerate(corpus.languages)}
    text_ids: dict[str, int] = {}
    offsets, langs, passages, neg_offsets, negatives = [0], [], [], [0], []
    for item in corpus.items:
        for lang in sorted(item.pairs, key=code.__getitem__):
            langs.append(code[lang])
            passages.append(text_ids.setdefault(item.pairs[lang].passage, len(text_ids)))
            negatives += [text_ids.setdefault(n, len(text_ids)) for n in item.pairs[lang].negatives[:hard_negatives]]
            neg_offsets.append(len(negatives))
        offsets.append(len(langs))
    return LanguageIndex.from_arrays(corpus.languages, np.array(offsets, dtype=np.int64), np.array(langs, dtype=np.int64),
                                     np.array(passages, dtype=np.int64),
                                     negatives=(np.array(neg_offsets, dtype=np.int64), np.array(negatives, dtype=np.int64))
                                     if hard_negatives else None)
