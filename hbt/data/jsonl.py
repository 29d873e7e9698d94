"""Loader for hbt's generic JSONL training format (docs/data.md).

One line per item and language, so that exporting from any database is a flat dump and
an item missing in a language is simply a missing line::

    {"id": "q17", "lang": "de", "query": "...", "positive": "...", "negatives": ["..."], "title": "..."}

``negatives`` and ``title`` are optional (an item without a title is its own title, so
a title split then splits by item).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from hbt.data.corpus import Corpus, Item, Pair, retrieval_from_pairs
from hbt.data.languages import check_language
from hbt.errors import InputError


def read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """(``file:line``, object) for every non-blank line; bad JSON is an error naming the line."""
    with path.open("rb") as f:  # decoded line by line, so that bytes that are not UTF-8 are named by line
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(where, f"is not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(where, f"malformed JSON at column {e.colno}: {e.msg}") from None
            if not isinstance(row, dict):
                raise InputError(where, "each line should be a JSON object")
            yield where, row


def str_field(row: dict, key: str, where: str) -> str:
    """``row[key]``, a string with more than whitespace in it (a blank query or passage
    would be encoded as its special tokens alone), or an error naming ``where``."""
    if key not in row:
        raise InputError(where, f"missing field '{key}'")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise InputError(where, f"field '{key}' should be a non-blank string, got {value!r}")
    return value


def load_jsonl(path: Path) -> Corpus:
    return corpus_from_rows(read_jsonl(path), path.stem, str(path))


def corpus_from_rows(rows: Iterable[tuple[str, dict]], name: str, source: str) -> Corpus:
    """A corpus of generic-format rows (``where``, row): one JSONL file's lines, or the rows
    of a shard set (``hbt mine`` on shards); an error names the row."""
    items: dict[str, Item] = {}
    for where, row in rows:
        item_id = str_field(row, "id", where)
        lang = check_language(str_field(row, "lang", where), f"{where} field 'lang'")
        negatives = row.get("negatives") or []
        if not isinstance(negatives, list) or not all(isinstance(x, str) and x.strip() for x in negatives):
            raise InputError(where, "field 'negatives' should be a list of non-blank strings")
        title = row.get("title") or item_id
        if not isinstance(title, str):
            raise InputError(where, "field 'title' should be a string")
        item = items.setdefault(item_id, Item(id=item_id, title=title, pairs={}))
        if lang in item.pairs:
            raise InputError(where, f"item '{item_id}' already has a '{lang}' line")
        item.pairs[lang] = Pair(
            query=str_field(row, "query", where),
            passage=str_field(row, "positive", where),
            negatives=tuple(negatives),
        )
    if not items:
        raise InputError(source, "no items in this file")
    item_list = list(items.values())
    return Corpus(name=name, items=item_list, retrieval=retrieval_from_pairs(item_list))
