"""One entry point from a data argument (path or ``synthetic:...``) to a :class:`Corpus`."""

from __future__ import annotations

from pathlib import Path

from hbt.data.corpus import Corpus
from hbt.data.jsonl import load_jsonl
from hbt.data.lareqa import load_lareqa
from hbt.data.retrieval import is_retrieval_dir, load_retrieval_dir
from hbt.data.synthetic import SyntheticSpec, synthetic_corpus
from hbt.errors import InputError


def load_corpus(source: str) -> Corpus:
    """``synthetic[:options]``, a ``.jsonl`` file (generic format), a retrieval benchmark
    directory (queries.jsonl, corpus.jsonl, qrels.txt; evaluation only), or a LAReQA
    ``<lang>.json`` file or directory of them (XQuAD-R, MLQA-R)."""
    if source == "synthetic" or source.startswith("synthetic:"):
        return synthetic_corpus(SyntheticSpec.parse(source))
    path = Path(source)
    if not path.exists():
        raise InputError(source, "no such file or directory")
    if path.suffix == ".jsonl":
        return load_jsonl(path)
    if is_retrieval_dir(path):
        return load_retrieval_dir(path)
    if path.is_dir() or path.suffix == ".json":
        return load_lareqa(path)
    raise InputError(source, "expected 'synthetic[:...]', a .jsonl file, or a LAReQA .json file or directory")
