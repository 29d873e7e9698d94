"""Loader for the LAReQA layout of XQuAD-R and MLQA-R: SQuAD v1.1 JSON with sentences.

One file per language (``de.json``; the language is the last ``-``/``_``/``.``
separated part of the file name). Each paragraph lists its ``sentences`` and their
``sentence_breaks``; the candidates of a language are all sentences of all its
paragraphs, and a question's positive is the sentence whose span holds the answer's
``answer_start``. The same question id in several files is one parallel item.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hbt.data.corpus import Candidate, Corpus, Item, Pair, Query, RetrievalSet
from hbt.data.languages import check_language
from hbt.errors import InputError


def language_of(path: Path) -> str:
    code = re.split(r"[-_.]", path.stem)[-1]
    return check_language(code, str(path))


def _field(obj: Any, key: str, where: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(str(path), f"missing field '{where}.{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(str(path), f"field '{where}.{key}' should be {names}, got {type(value).__name__}")
    return value


def _spans(breaks: list, at: str, path: Path) -> list[tuple[int, int]]:
    """A paragraph's sentence_breaks: a [begin, end] pair of character offsets per sentence."""
    for n, span in enumerate(breaks):
        if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)):
            raise InputError(str(path), f"'{at}[{n}]' should be a [begin, end] pair of integers, got {span!r}")
    return [tuple(span) for span in breaks]


def _text(value: Any, at: str, path: Path) -> str:
    """A question or sentence: a string with more than whitespace in it (a blank one would
    be encoded as its special tokens alone)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(str(path), f"'{at}' should be a non-blank string, got {value!r}")
    return value


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(str(path), f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InputError(str(path), f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_language_file(path: Path) -> tuple[str, list[tuple[str, str, Pair]], list[Query], list[Candidate]]:
    """Parse one language file into (language, [(item id, title, pair)], queries, candidates)."""
    lang = language_of(path)
    doc = _read_json(path)
    articles = _field(doc, "data", "", path, list)
    pairs: list[tuple[str, str, Pair]] = []
    queries: list[Query] = []
    candidates: list[Candidate] = []
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        title = _field(article, "title", where, path, str)
        for p, para in enumerate(_field(article, "paragraphs", where, path, list)):
            pw = f"{where}.paragraphs[{p}]"
            sentences = [_text(text, f"{pw}.sentences[{s}]", path)
                         for s, text in enumerate(_field(para, "sentences", pw, path, list))]
            breaks = _spans(_field(para, "sentence_breaks", pw, path, list), f"{pw}.sentence_breaks", path)
            if len(sentences) != len(breaks):
                raise InputError(str(path), f"'{pw}' has {len(sentences)} sentences but {len(breaks)} sentence_breaks")
            answered: list[set[str]] = [set() for _ in sentences]
            for q, qa in enumerate(_field(para, "qas", pw, path, list)):
                qw = f"{pw}.qas[{q}]"
                qid = _field(qa, "id", qw, path, str)
                question = _text(_field(qa, "question", qw, path, str), f"{qw}.question", path)
                answers = _field(qa, "answers", qw, path, list)
                if not answers:
                    raise InputError(str(path), f"question {qid} ('{qw}.answers') has no answer")
                start = _field(answers[0], "answer_start", f"{qw}.answers[0]", path, int)
                hit = next((s for s, (b, e) in enumerate(breaks) if b <= start <= e), None)
                if hit is None:
                    raise InputError(str(path), f"question {qid}: answer_start {start} is outside every sentence_breaks span")
                answered[hit].add(qid)
                pairs.append((qid, title, Pair(query=question, passage=sentences[hit])))
                queries.append(Query(id=f"{lang}/{qid}", item_id=qid, text=question))
            candidates.extend(
                Candidate(id=f"{lang}/{a}/{p}/{s}", text=text, title=title, item_ids=frozenset(ids))
                for s, (text, ids) in enumerate(zip(sentences, answered))
            )
    if not queries:
        raise InputError(str(path), f"language '{lang}' has no questions")
    return lang, pairs, queries, candidates


def load_lareqa(path: Path) -> Corpus:
    """Load a directory of ``<lang>.json`` files (or one such file) as a parallel corpus."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise InputError(str(path), "no <lang>.json files in this directory (hbt reads a directory of LAReQA "
                                    "<lang>.json files, of Parquet/JSONL shards, a save_to_disk dataset or a "
                                    "retrieval benchmark: queries.jsonl, corpus.jsonl, qrels.txt)")
    items: dict[str, Item] = {}
    queries: dict[str, list[Query]] = {}
    candidates: dict[str, list[Candidate]] = {}
    for file in files:
        lang, pairs, qs, cs = load_language_file(file)
        if lang in queries:
            raise InputError(str(file), f"a second file for language '{lang}'")
        for qid, title, pair in pairs:
            items.setdefault(qid, Item(id=qid, title=title, pairs={})).pairs[lang] = pair
        queries[lang], candidates[lang] = qs, cs
    return Corpus(name=path.name, items=list(items.values()), retrieval=RetrievalSet(queries, candidates))
