"""The training data of a run: every source's table, and the arrays the sampler plans on.

A run trains on one or more *sources* (a Parquet shard directory, the built-in
synthetic corpus, XQuAD-R, ...). Each becomes a memory-mapped table
(:mod:`hbt.data.table`), with its own optional columns; row ``r`` of the run is row
``r - row_starts[s]`` of source ``s``. The sampler never sees the tables. What it sees are compact numpy arrays, one entry per (item,
language) *pair* (an item's pairs are contiguous, languages ascending):

* ``rows``: the table row of the pair, where its texts are read at training time;
* ``langs``: the pair's language code (an index into ``languages``);
* ``passages``: a 64-bit hash of the positive's text: equal texts, equal ids, so items
  that share an answer (in any language) are kept out of one batch. A collision only
  joins two answer groups, which makes the sampler more careful, never less;
* ``offsets`` (items + 1): item ``i``'s pairs are ``offsets[i]:offsets[i + 1]``;
* ``source`` (items): the source each item comes from. Item ids are per source: the
  same id in two sources is two items.

Building the arrays reads the id, language and positive columns once (Arrow compute and
pandas' vectorised hashing, no Python object per row); rank 0 stores them in
``cache_dir/index-<key>/`` and every other rank, and every later run, memory-maps them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hbt.data.corpus import Corpus
from hbt.data.languages import check_language
from hbt.data.split import choose_titles
from hbt.data.sources import Source
from hbt.data.table import dataset_corpus, main_first, open_source
from hbt.errors import InputError

INDEX_VERSION = 1  # bump when the arrays' meaning changes: old caches are then ignored
_HASH_CHUNK = 1 << 20  # rows hashed per pandas call: bounded memory for the Python strings


@dataclass
class TrainingData:
    tables: list[datasets.Dataset]  # per source (memory-mapped where the source is)
    row_starts: np.ndarray  # per source, its first row in the run's numbering
    languages: list[str]
    source_names: list[str]
    weights: np.ndarray  # per source
    offsets: np.ndarray
    rows: np.ndarray
    langs: np.ndarray
    passages: np.ndarray
    source: np.ndarray
    fingerprint: str  # changes whenever the data, its mapping or the hold-out does
    held_out: Corpus | None = None  # the held-out titles, for evaluation
    negatives: tuple[np.ndarray, np.ndarray] | None = None  # per pair (CSR), hashes of the hard negatives trained with

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    def pair_rows(self, items: np.ndarray, langs: np.ndarray) -> np.ndarray:
        """The table rows of (item, language code) pairs. An item's languages are sorted,
        so its pair of ``lang`` sits at ``offsets[item]`` plus the number of its languages
        below ``lang``; counted over a (pairs x most languages of an item) window, not
        searched per pair, so a batch costs a few numpy calls whatever its size."""
        items = np.asarray(items, dtype=np.int64)
        lo, count = self.offsets[items], self.offsets[items + 1] - self.offsets[items]
        column = np.arange(int(count.max(initial=0)))
        at = np.minimum(lo[:, None] + column, len(self.langs) - 1)  # past an item's end: masked below
        below = ((column < count[:, None]) & (self.langs[at] < np.asarray(langs)[:, None])).sum(axis=1)
        return self.rows[lo + below].astype(np.int64)

    def item_ids(self, items: np.ndarray) -> list[str]:
        """The corpus' own ids of ``items`` (indices), one Arrow lookup."""
        return self.column("id", self.rows[self.offsets[np.asarray(items, dtype=np.int64)]])

    def column(self, name: str, rows: np.ndarray) -> list:
        """Values of column ``name`` at ``rows``, in that order; a source without an
        optional column gives empty lists (``negatives``) or None. ``fast_gather``
        binary-searches a table's chunks and slices them, where Arrow's ``take`` on the
        chunked column first concatenates it (seconds and a copy of the column at 10^7
        rows, docs/BENCHMARKS.md §9). hbt never ``select``s a table, so rows are its own."""
        rows = np.asarray(rows, dtype=np.int64)
        source = np.searchsorted(self.row_starts, rows, side="right") - 1
        out: list = [None] * len(rows)
        for s in np.unique(source).tolist():
            at = np.flatnonzero(source == s)
            table = self.tables[s]
            if name in table.column_names:
                values = table.data.fast_gather(rows[at] - self.row_starts[s]).column(name).to_pylist()
            else:
                values = [[] if name == "negatives" else None] * len(at)
            for i, value in zip(at.tolist(), values):
                out[i] = value
        return out

    def texts(self, rows: np.ndarray, limit: int | None = None) -> Iterator[str]:
        """Queries and positives of ``rows`` (the tiny preset trains its tokenizer on them)."""
        rows = np.asarray(rows)[:limit]
        for start in range(0, len(rows), 10_000):
            part = rows[start:start + 10_000]
            yield from (t for pair in zip(self.column("query", part), self.column("positive", part)) for t in pair)

    def missing_negatives(self) -> int:
        """Training pairs without a hard negative (``train.hard_negatives`` needs them all)."""
        has = np.zeros(int(self.row_starts[-1]) + len(self.tables[-1]), dtype=bool)
        for start, table in zip(self.row_starts.tolist(), self.tables):
            if "negatives" in table.column_names:
                lengths = pc.list_value_length(table.data.table.column("negatives")).to_numpy(zero_copy_only=False)
                has[start:start + len(table)] = np.nan_to_num(lengths.astype(np.float64)) > 0  # null lists: none
        return int((~has[self.rows]).sum())


# -- building ---------------------------------------------------------------------------


def _strings(ds: datasets.Dataset, name: str) -> pa.ChunkedArray:
    return ds.data.table.column(name)


def _titles(ds: datasets.Dataset) -> pa.ChunkedArray:
    """What hold-outs split by: the title column, or the item id where there is none."""
    return _strings(ds, "title" if "title" in ds.column_names else "id")


# Blank: nothing but whitespace, as Python's str.strip() sees it (RE2's \s is ASCII only).
# A regex match is a boolean per row; trimming would copy every text of the column first.
_BLANK = r"^[\s\p{Z}\x0b\x1c-\x1f\x85]*$"


def _check_values(ds: datasets.Dataset, where: str) -> None:
    """No null, empty or blank id, language, query, positive (they would train on nothing)
    or title (where the column exists: hold-outs are chosen by it), and no blank hard
    negative. Rows are counted from 1, over the source's shards in name order, as the
    lines of a JSONL file are."""
    for name in ("id", "lang", "query", "positive", *(["title"] if "title" in ds.column_names else [])):
        column = _strings(ds, name)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            raise InputError(where, f"column {name!r} should hold strings, not {column.type}")
        bad = pc.or_kleene(pc.is_null(column), pc.match_substring_regex(column, _BLANK))
        if pc.any(bad).as_py():
            raise InputError(where, f"row {int(pc.index(bad, True).as_py()) + 1}: column {name!r} is empty or blank")
    negatives = ds.data.table.column("negatives") if "negatives" in ds.column_names else None
    if negatives is not None and not pa.types.is_null(negatives.type):  # a null column: no row has negatives
        listed = pa.types.is_list(negatives.type) or pa.types.is_large_list(negatives.type)
        texts = pc.list_flatten(negatives) if listed else None
        if texts is None or not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)
                                 or pa.types.is_null(texts.type)):  # list<null>: every list is empty (or all null)
            raise InputError(where, f"column 'negatives' should hold lists of strings, not {negatives.type}")
        bad = pc.is_null(texts) if pa.types.is_null(texts.type) else \
            pc.or_kleene(pc.is_null(texts), pc.match_substring_regex(texts, _BLANK))
        if pc.any(bad).as_py():
            row = pc.list_parent_indices(negatives)[pc.index(bad, True).as_py()].as_py()
            raise InputError(where, f"row {row + 1}: column 'negatives' holds an empty or blank text")


def _hash_texts(column: pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of every text of ``column`` (pandas' SipHash), read in order and in
    bounded chunks (Python strings exist for one chunk at a time)."""
    out = np.empty(len(column), dtype=np.uint64)
    for start in range(0, len(column), _HASH_CHUNK):
        part = column.slice(start, _HASH_CHUNK)
        out[start:start + len(part)] = pd.util.hash_array(part.to_numpy(zero_copy_only=False), categorize=False)
    return out


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Per row, the index of its value among the distinct values (first-seen order)."""
    encoded = column.dictionary_encode().combine_chunks() if column.num_chunks else pa.array([], pa.string()).dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _keep_rows(ds: datasets.Dataset, src: Source, where: str, held: set[str]) -> np.ndarray:
    """Rows to train on: in the source's languages and not in a held-out title."""
    keep = np.ones(len(ds), dtype=bool)
    if src.languages:
        wanted = [check_language(x.strip(), f"{where} languages") for x in src.languages.split(",") if x.strip()]
        keep &= pc.is_in(_strings(ds, "lang"), value_set=pa.array(wanted)).to_numpy(zero_copy_only=False)
    if held:
        keep &= ~pc.is_in(_titles(ds), value_set=pa.array(sorted(held))).to_numpy(zero_copy_only=False)
    return np.flatnonzero(keep)


def _source_arrays(ds: datasets.Dataset, src: Source, where: str, held: set[str], languages: dict[str, int],
                   row_base: int) -> dict[str, np.ndarray]:
    """One source's pairs, sorted by item then language; ``languages`` grows as met."""
    _check_values(ds, where)
    rows = _keep_rows(ds, src, where, held)
    if not len(rows):
        raise InputError(where, "no training rows (after the language filter and hold-out)")
    item_code, _ = _codes(_strings(ds, "id"))
    lang_code, names = _codes(_strings(ds, "lang"))
    lang_code = lang_code[rows]
    for code in np.unique(lang_code).tolist():  # the languages trained on, not those filtered out
        languages.setdefault(check_language(names[code], f"{where} column 'lang'"), len(languages))
    lang_code = np.array([languages.get(n, -1) for n in names], dtype=np.int64)[lang_code]
    item_code = item_code[rows]
    _, item_code = np.unique(item_code, return_inverse=True)  # dense 0..items-1 over the kept rows
    order = np.lexsort((lang_code, item_code))
    rows, item_code, lang_code = rows[order], item_code[order], lang_code[order]
    twice = np.flatnonzero((item_code[1:] == item_code[:-1]) & (lang_code[1:] == lang_code[:-1]))
    if len(twice):
        row = int(rows[twice[0] + 1])
        raise InputError(where, f"row {row + 1}: item {_strings(ds, 'id')[row].as_py()!r} already has a "
                                f"{_strings(ds, 'lang')[row].as_py()!r} row")
    counts = np.bincount(item_code)
    return {"rows": rows + row_base, "langs": lang_code, "passages": _hash_texts(_strings(ds, "positive"))[rows],
            "lens": counts}


def _held_out_corpus(ds: datasets.Dataset, corpus: Corpus | None, held: set[str], name: str) -> Corpus:
    """The held-out titles as a corpus: the parsed one's subset (it keeps every candidate
    sentence of a LAReQA article), or the held-out rows through the table's one converter
    (:func:`hbt.data.table.dataset_corpus`): validated, as training checks language codes
    and repeated languages only on the rows it trains on. Without their negatives:
    evaluation reads none."""
    if corpus is not None:
        return corpus.subset(held, f"{corpus.name}-heldout")
    rows = np.flatnonzero(pc.is_in(_titles(ds), value_set=pa.array(sorted(held))).to_numpy(zero_copy_only=False))
    part = ds.select_columns([c for c in ds.column_names if c != "negatives"])
    return dataset_corpus(part, f"{name}-heldout", name, rows)


def _held_titles(ds: datasets.Dataset, corpus: Corpus | None, holdout: str | float | None, seed: int) -> set[str]:
    if holdout is None:
        return set()
    titles = corpus.titles if corpus is not None else pc.unique(_titles(ds)).to_pylist()
    return set(choose_titles(sorted(titles), holdout, seed, key="data.holdout_titles"))


def _source_key(ds: datasets.Dataset, corpus: Corpus | None) -> str:
    return corpus.fingerprint() if corpus is not None else ds._fingerprint


def load_training_data(sources: list[Source], cache_dir: str, holdout: str | float | None = None, holdout_seed: int = 0,
                       is_main: bool = True, barrier: Callable[[], None] = lambda: None,
                       hard_negatives: int = 0) -> TrainingData:
    """Open every source and build (rank 0) or memory-map (every other rank) the arrays.
    ``holdout`` (``data.holdout_titles``) applies to a single source only. With
    ``hard_negatives`` k, also the hashes of each pair's first k negatives (the ones
    training uses), so the sampler can keep a negative away from the query it answers."""
    if not sources:
        raise InputError("data.sources", "at least one source is needed")
    if holdout is not None and len(sources) > 1:
        raise InputError("data.holdout_titles", "applies to a single source; evaluate a mixture with eval.data")
    names = [src.name or src.path for src in sources]
    if len(set(names)) != len(names):
        raise InputError("data.sources", f"two sources named {next(n for n in names if names.count(n) > 1)!r}; give them names")
    for name, src in zip(names, sources):
        if not 0 < src.weight <= 1:
            raise InputError(f"data.sources[{name}].weight", f"must be in (0, 1], got {src.weight}")
    opened = main_first(lambda: [open_source(src.path, src.columns, cache_dir) for src in sources], is_main, barrier)
    held = _held_titles(*opened[0], holdout, holdout_seed) if holdout is not None else set()
    key = hashlib.sha256(json.dumps([INDEX_VERSION, [(_source_key(ds, c), src.columns, src.languages) for (ds, c), src
                                                      in zip(opened, sources)], sorted(held)]).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / f"index-{key}"
    if is_main and not (folder / "meta.json").exists():
        _write_index(folder, opened, sources, names, held)
    barrier()
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("offsets", "rows", "langs", "passages", "source")}
    row_starts = np.cumsum([0] + [len(ds) for ds, _ in opened[:-1]]).astype(np.int64)
    held_out = _held_out_corpus(*opened[0], held, names[0]) if held else None
    tables = [ds for ds, _ in opened]
    negatives = None
    if hard_negatives:
        paths = [folder / f"negatives-{hard_negatives}-{part}.npy" for part in ("offsets", "hashes")]
        if is_main and not paths[1].exists():
            for path, array in zip(paths, _negative_hashes(tables, row_starts, np.asarray(arrays["rows"]), hard_negatives)):
                tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npy")
                np.save(tmp, array)
                tmp.replace(path)  # hashes last: its presence means both are complete
        barrier()
        negatives = tuple(np.load(path, mmap_mode="r") for path in paths)
    return TrainingData(tables=tables, row_starts=row_starts, languages=meta["languages"], source_names=names,
                        weights=np.array([src.weight for src in sources]), fingerprint=key, held_out=held_out,
                        negatives=negatives, **{k: np.asarray(v) for k, v in arrays.items()})


def _negative_hashes(tables: list[datasets.Dataset], row_starts: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (table row ``rows[p]``), the hashes of its first ``k`` negatives as CSR
    (offsets over the pairs, hashes), hashed as the positives are; chunk by chunk, so no
    copy of the whole list column is made."""
    total = int(row_starts[-1]) + len(tables[-1])
    lens = np.zeros(total, dtype=np.int64)
    parts: list[np.ndarray] = []
    for start, table in zip(row_starts.tolist(), tables):
        column = table.data.table.column("negatives") if "negatives" in table.column_names else None
        if column is None or pa.types.is_null(column.type):  # no column, or one that is null throughout
            continue
        at = start
        for chunk in column.chunks:
            head = pc.list_slice(chunk, 0, k)
            lens[at:at + len(chunk)] = pc.fill_null(pc.list_value_length(head), 0).to_numpy(zero_copy_only=False)
            texts = pc.list_flatten(head).cast(pa.string())  # large_string too (Polars writes it)
            parts.append(_hash_texts(pa.chunked_array([texts], pa.string())).view(np.int64))
            at += len(chunk)
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pair_lens = lens[rows]
    offsets = np.concatenate([[0], np.cumsum(pair_lens)]).astype(np.int64)
    take = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts[rows] - offsets[:-1], pair_lens)
    return offsets, flat[take]


def _write_index(folder: Path, opened: list[tuple[datasets.Dataset, Corpus | None]], sources: list[Source],
                 names: list[str], held: set[str]) -> None:
    """Build the arrays of every source and publish them atomically (tmp dir + rename)."""
    languages: dict[str, int] = {}
    parts, base = [], 0
    for (ds, _), src, name in zip(opened, sources, names):
        parts.append(_source_arrays(ds, src, name, held, languages, base))
        base += len(ds)
    # languages are numbered in sorted order, as LanguageIndex expects codes ascending per item
    ordered = sorted(languages)
    recode = np.array([ordered.index(name) for name in languages], dtype=np.int64)
    lens = np.concatenate([p["lens"] for p in parts])
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    langs = np.concatenate([recode[p["langs"]] for p in parts])
    rows = np.concatenate([p["rows"] for p in parts])
    passages = np.concatenate([p["passages"] for p in parts]).view(np.int64)
    source = np.repeat(np.arange(len(parts), dtype=np.int16), [len(p["lens"]) for p in parts])
    # re-sort each item's pairs by the final language codes
    item_of_pair = np.repeat(np.arange(len(lens)), lens)
    order = np.lexsort((langs, item_of_pair))
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in (("offsets", offsets), ("rows", rows[order]), ("langs", langs[order].astype(np.int16)),
                        ("passages", passages[order]), ("source", source)):
        np.save(tmp / f"{name}.npy", array)
    (tmp / "meta.json").write_text(json.dumps({"languages": ordered, "sources": names, "items": int(len(lens)),
                                               "pairs": int(len(rows))}))
    try:
        tmp.rename(folder)
    except OSError:  # another process published the same index first
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"indexed {len(lens):,} items, {len(rows):,} pairs in {len(ordered)} languages -> {folder}", file=sys.stderr)
