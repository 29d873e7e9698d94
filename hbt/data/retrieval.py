"""Loader for a generic retrieval benchmark (MIRACL/BEIR-like), for evaluation only.

A directory with ``queries.jsonl`` (``{"id", "text", "lang"}``), ``corpus.jsonl``
(``{"id", "text", "lang", "title"?}``) and ``qrels.txt`` (TREC: ``qid 0 docid rel``,
relevant where rel > 0). Relevance maps onto hbt's item ids: each query is its own item,
and a document answers every query the qrels tie it to, in whatever language.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from hbt.data.corpus import Candidate, Corpus, Query, RetrievalSet
from hbt.data.jsonl import read_jsonl, str_field
from hbt.data.languages import check_language
from hbt.errors import InputError

FILES = ("queries.jsonl", "corpus.jsonl", "qrels.txt")


def is_retrieval_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).exists() for name in FILES)


def _rows(path: Path) -> list[tuple[str, str, str, str, str]]:
    """(where, id, text, lang, title) of each line of a queries/corpus JSONL file."""
    rows = []
    for where, row in read_jsonl(path):
        doc_id, text = str_field(row, "id", where), str_field(row, "text", where)
        lang = check_language(str_field(row, "lang", where), f"{where} field 'lang'")
        rows.append((where, doc_id, text, lang, row.get("title") or doc_id))
    return rows


def load_retrieval_dir(path: Path) -> Corpus:
    queries = _rows(path / "queries.jsonl")
    docs = _rows(path / "corpus.jsonl")
    query_ids = {qid for _, qid, _, _, _ in queries}
    doc_ids = {did for _, did, _, _, _ in docs}
    answers: dict[str, set[str]] = defaultdict(set)
    with (path / "qrels.txt").open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path / 'qrels.txt'}:{n}"
            if len(parts) != 4:
                raise InputError(where, "expected 'query_id 0 doc_id relevance'")
            qid, _, did, rel = parts
            if qid not in query_ids:
                raise InputError(where, f"unknown query id '{qid}'")
            if did not in doc_ids:
                raise InputError(where, f"unknown document id '{did}'")
            try:
                if int(rel) > 0:
                    answers[did].add(qid)
            except ValueError:
                raise InputError(where, f"relevance should be an integer, got {rel!r}") from None
    by_lang_q: dict[str, list[Query]] = defaultdict(list)
    for _, qid, text, lang, _ in queries:
        by_lang_q[lang].append(Query(id=qid, item_id=qid, text=text))
    by_lang_c: dict[str, list[Candidate]] = defaultdict(list)
    for _, did, text, lang, title in docs:
        by_lang_c[lang].append(Candidate(id=did, text=text, title=title, item_ids=frozenset(answers[did])))
    return Corpus(name=path.name, items=[], retrieval=RetrievalSet(dict(by_lang_q), dict(by_lang_c)))
