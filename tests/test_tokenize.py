"""Tokenisation goes through a ``datasets`` Arrow cache: a second build reads the file."""

from __future__ import annotations

from pathlib import Path

from hbt.data import load_corpus
from hbt.data.tokenize import PairCollator, TextSpec, TokenizedCorpus
from hbt.model import train_tokenizer


class Refusing:
    """The same tokenizer (same fingerprint), except that calling it fails."""

    def __init__(self, inner) -> None:
        self.backend_tokenizer = inner.backend_tokenizer

    def __call__(self, *args, **kwargs):
        raise AssertionError("re-tokenised instead of reading the cache")


def test_second_build_reads_the_cache(tmp_path: Path) -> None:
    corpus = load_corpus("synthetic:items=200,languages=3")
    tokenizer = train_tokenizer((p.query for i in corpus.items for p in i.pairs.values()), 500, 64)
    spec = TextSpec(query_prefix="query: ", max_query_length=8, max_passage_length=16)
    first = TokenizedCorpus(corpus, tokenizer, spec, tmp_path)
    assert first.cache_file.exists()
    second = TokenizedCorpus(corpus, Refusing(tokenizer), spec, tmp_path)
    key = (0, "en", "ru")
    assert first[key] == second[key]
    assert first[key]["query"] == tokenizer("query: " + corpus.items[0].pairs["en"].query, truncation=True, max_length=8)["input_ids"]
    assert first[key]["passage"] == tokenizer(corpus.items[0].pairs["ru"].passage, truncation=True, max_length=16)["input_ids"]
    other = TokenizedCorpus(corpus, tokenizer, TextSpec(max_query_length=9), tmp_path)
    assert other.cache_file != first.cache_file  # another spec never reuses a cache


def test_collator_pads_and_masks() -> None:
    rows = [{"query": [0, 5, 2], "passage": [0, 7, 8, 9, 2], "negatives": [[0, 3, 2]]},
            {"query": [0, 2], "passage": [0, 2], "negatives": [[0, 4, 4, 2], [0, 6, 2]]}]
    batch = PairCollator(pad_id=1, hard_negatives=2)(rows)
    assert batch["query"]["input_ids"].tolist() == [[0, 5, 2], [0, 2, 1]]
    assert batch["query"]["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["negatives"]["input_ids"].shape == (4, 4)  # pair 0 repeats its only negative
