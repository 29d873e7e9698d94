"""Data layer: parallel corpora (LAReQA, generic JSONL, synthetic), title splits, tokenisation."""

from hbt.data.corpus import Candidate, Corpus, Item, Pair, Query, RetrievalSet
from hbt.data.load import load_corpus
from hbt.data.split import holdout_titles, split_by_title, split_corpus

__all__ = [
    "Candidate", "Corpus", "Item", "Pair", "Query", "RetrievalSet",
    "load_corpus", "holdout_titles", "split_by_title", "split_corpus",
]
