"""Training pairs as a memory-mapped Arrow table: one row per (item, language).

Large corpora (Parquet or JSONL shards, a ``save_to_disk`` directory, a hub dataset)
are read through Hugging Face ``datasets``: it converts shards once into Arrow files in
``data.cache_dir`` and memory-maps them, so a 10^7-pair corpus costs page cache, not
per-process heap, and every rank on a node shares the same pages. The built-in synthetic
corpus is generated into the same kind of Arrow file in ``data.cache_dir`` (chunk by
chunk, at any size; :mod:`hbt.data.synthetic`) and memory-mapped alike. The small
formats (LAReQA JSON, one generic ``.jsonl`` file) are parsed by their own loaders (which
name the offending line or JSON path) and turned into the same table.

The table's columns are the generic format's (docs/data.md): ``id``, ``lang``,
``query``, ``positive``, and optionally ``negatives`` (a list of strings) and ``title``.
A source with other column names maps them (``columns: {id: qid, lang: language}``).
"""

from __future__ import annotations

import glob
import gzip
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from hbt.data.corpus import Corpus
from hbt.data.jsonl import corpus_from_rows, read_jsonl
from hbt.data.load import load_corpus
from hbt.data.retrieval import is_retrieval_dir
from hbt.data.synthetic import SyntheticSpec, cached_table, is_synthetic
from hbt.errors import InputError

REQUIRED = ("id", "lang", "query", "positive")
OPTIONAL = ("negatives", "title")
COLUMNS = REQUIRED + OPTIONAL
_SHARD_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json"}


def _format_of(path: str) -> str | None:
    for suffix, fmt in _SHARD_FORMATS.items():
        if path.endswith(suffix):
            return fmt
    return None


def shard_files(source: str) -> tuple[str, list[str]] | None:
    """``(datasets builder, files)`` when ``source`` is a Parquet/JSONL shard set: a glob,
    a directory holding such shards, or one ``.parquet`` file. None for anything else."""
    if glob.has_magic(source):
        files = sorted(glob.glob(source, recursive=True))
        if not files:
            raise InputError(source, "the pattern matches no file")
    elif Path(source).is_dir():
        files = sorted(str(p) for p in Path(source).iterdir() if _format_of(p.name))
        if not files:
            return None
    elif source.endswith(".parquet"):
        files = [source]
    else:
        return None
    formats = {_format_of(f) for f in files}
    if None in formats or len(formats) > 1:
        raise InputError(source, "shards must all be .parquet, or all .jsonl / .jsonl.gz")
    return formats.pop(), files


def _with_rows(source: str, builder: str, files: list[str]) -> list[str]:
    """The shards to read: a shard without rows is left out (datasets fails on one, and a
    writer may well leave one), the Parquet footers checked. Only where the shards are
    read (:func:`open_dataset`), not where a source is only recognised."""
    files = _parquet_with_rows(files) if builder == "parquet" else [f for f in files if _has_text(f)]
    if not files:
        raise InputError(source, "every shard is empty")
    return files


def _has_text(path: str) -> bool:
    """Whether a JSONL shard holds more than whitespace (read up to its first other byte)."""
    try:
        with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
            while chunk := f.read(1 << 16):
                if chunk.strip():
                    return True
    except (OSError, EOFError) as e:
        raise InputError(path, f"cannot read: {e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
    return False


def _parquet_with_rows(files: list[str]) -> list[str]:
    """The shards that hold rows, each checked to be a Parquet file with the first one's
    columns, from the footers before datasets converts anything: its own refusal of a
    mismatch is a multi-line log that names no shard."""
    first: list[str] | None = None
    kept = []
    for file in files:
        try:
            footer = pq.read_metadata(file)
            names = footer.schema.to_arrow_schema().names
        except (OSError, pa.ArrowException) as e:
            raise InputError(file, f"not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if first is None:
            first = names
        elif set(names) != set(first):
            extra, missing = sorted(set(names) - set(first)), sorted(set(first) - set(names))
            diff = "; ".join(part for part in (f"has {', '.join(extra)}" if extra else "",
                                                f"lacks {', '.join(missing)}" if missing else "") if part)
            raise InputError(file, f"its columns differ from {Path(files[0]).name}'s ({diff}); every shard needs the same columns")
        if footer.num_rows:
            kept.append(file)
    return kept


def is_saved_dataset(path: Path) -> bool:
    """A ``Dataset.save_to_disk`` directory."""
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def open_dataset(source: str, cache_dir: str, split: str = "train") -> datasets.Dataset:
    """A memory-mapped ``datasets.Dataset`` of ``source``: shards (see :func:`shard_files`),
    a ``save_to_disk`` directory, or ``hf:NAME`` (a hub dataset, where the hub is reachable)."""
    shards = shard_files(source)
    if shards is not None:
        shards = (shards[0], _with_rows(source, *shards))
    try:
        if shards is not None:
            builder, files = shards
            return datasets.load_dataset(builder, data_files=files, split=split, cache_dir=cache_dir)
        if Path(source).is_dir() and is_saved_dataset(Path(source)):
            saved = datasets.load_from_disk(source)
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise InputError(source, f"no split {split!r} (has {', '.join(saved)})")
                saved = saved[split]
            return saved
        if source.startswith("hf:"):
            return datasets.load_dataset(source[3:], split=split, cache_dir=cache_dir)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
        if isinstance(e, InputError):
            raise
        if shards is not None and shards[0] == "json":
            for file in shards[1]:  # hbt's own reader names the file and line datasets failed on
                if file.endswith(".jsonl"):
                    for _ in read_jsonl(Path(file)):
                        pass
        while isinstance(e, datasets.exceptions.DatasetGenerationError) and (e.__cause__ or e.__context__):
            e = e.__cause__ or e.__context__  # "An error occurred while generating the dataset" says nothing
        raise InputError(source, f"cannot read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise InputError(source, "not a shard set, a save_to_disk directory or hf:NAME")


def is_table_source(source: str) -> bool:
    """True when ``source`` is read through ``datasets`` (shards, saved dataset, hub)."""
    path = Path(source)
    return (source.startswith("hf:") or glob.has_magic(source) or source.endswith(".parquet")
            or (path.is_dir() and (is_saved_dataset(path) or shard_files(source) is not None)))


def map_columns(ds: datasets.Dataset, columns: dict[str, str], source: str) -> datasets.Dataset:
    """The dataset with hbt's column names (``columns``: hbt name -> the source's name),
    holding hbt's columns only; an error names the source and a missing column."""
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise InputError(f"{source} columns", f"unknown hbt column {unknown[0]!r} (hbt's: {', '.join(COLUMNS)})")
    rename = {theirs: ours for ours, theirs in columns.items() if theirs != ours}
    missing = [theirs for theirs in rename if theirs not in ds.column_names]
    if missing:
        raise InputError(source, f"no column {missing[0]!r} (has {', '.join(ds.column_names)})")
    ds = ds.select_columns([c for c in ds.column_names if c in rename or (c in COLUMNS and c not in rename.values())])
    ds = ds.rename_columns(rename) if rename else ds
    for name in REQUIRED:
        if name not in ds.column_names:
            hint = f"; map it with columns: {{{name}: <your column>}}" if columns is not None else ""
            raise InputError(source, f"no column {name!r}{hint}")
    return ds


# The columns of a table made by hbt (a parsed corpus's, the synthetic corpus's).
FEATURES = datasets.Features({
    "id": datasets.Value("string"), "lang": datasets.Value("string"), "query": datasets.Value("string"),
    "positive": datasets.Value("string"), "negatives": datasets.Sequence(datasets.Value("string")),
    "title": datasets.Value("string"),
})


def corpus_dataset(corpus: Corpus) -> datasets.Dataset:
    """A parsed corpus (LAReQA, one JSONL file) as an in-memory table: these are small by
    nature (a test set)."""
    rows = [(item, lang, pair) for item in corpus.items for lang, pair in sorted(item.pairs.items())]
    return datasets.Dataset.from_dict({
        "id": [item.id for item, _, _ in rows],
        "lang": [lang for _, lang, _ in rows],
        "query": [pair.query for _, _, pair in rows],
        "positive": [pair.passage for _, _, pair in rows],
        "negatives": [list(pair.negatives) for _, _, pair in rows],
        "title": [item.title for item, _, _ in rows],
    }, features=FEATURES)


def synthetic_dataset(source: str, cache_dir: str) -> datasets.Dataset:
    """The synthetic corpus ``source`` names (``synthetic[:...]``) as a memory-mapped table:
    generated into ``cache_dir`` the first time (:func:`hbt.data.synthetic.cached_table`),
    the rows :func:`corpus_dataset` makes of its parsed corpus, and the parsed corpus's
    content fingerprint as the dataset's (so caches keyed by it are shared with it)."""
    path, meta = cached_table(SyntheticSpec.parse(source), cache_dir)
    table = datasets.table.MemoryMappedTable.from_file(str(path))
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=FEATURES.copy()), fingerprint=meta["fingerprint"])


def source_root(source: str) -> Path:
    """The path of ``source`` up to its first wildcard: a glob of shards's directory."""
    return Path(source.split("*")[0].rstrip("/"))


T = TypeVar("T")


def main_first(make: Callable[[], T], is_main: bool, barrier: Callable[[], None]) -> T:
    """``make()`` on rank 0 first, then on the other ranks: ``datasets`` converts shards
    into its cache once (rank 0), and the others memory-map what it wrote instead of all
    converting the same shards into the same cache at once."""
    made = make() if is_main else None
    barrier()
    return made if is_main else make()


def table_corpus(source: str, cache_dir: str, columns: dict[str, str] | None = None) -> Corpus:
    """A shard set (or saved dataset) as a parsed corpus, its columns mapped as a training
    source's are, for the tools that need one object per pair (``hbt mine``)."""
    ds = map_columns(open_dataset(source, cache_dir), columns or {}, source)
    name = source_root(source).name or source  # a glob is named by its directory
    return dataset_corpus(ds, name, source)


def any_corpus(source: str, cache_dir: str, is_main: bool = True, barrier: Callable[[], None] = lambda: None,
               columns: dict[str, str] | None = None) -> Corpus:
    """``source`` in any format hbt reads, as a parsed corpus: shards, saved and hub
    datasets through :func:`table_corpus` (rank 0 converts them first, see
    :func:`main_first`), everything else through :func:`hbt.data.load.load_corpus`. What
    ``hbt eval``, ``eval.data`` and ``hbt mine`` read. A retrieval benchmark directory
    holds .jsonl files too, but is no shard set: its loader reads it."""
    if is_table_source(source) and not is_retrieval_dir(Path(source)):
        return main_first(lambda: table_corpus(source, cache_dir, columns), is_main, barrier)
    if columns:
        raise InputError("--columns", "a column mapping applies to Parquet/JSONL shards and saved datasets only")
    return load_corpus(source)


def dataset_corpus(ds: datasets.Dataset, name: str, source: str, rows: Sequence[int] | None = None) -> Corpus:
    """The table (hbt's column names), or its ``rows`` (ascending), as a corpus: the one
    converter from the table model to :class:`Corpus`, through the generic format's
    checks (:func:`hbt.data.jsonl.corpus_from_rows`; errors name ``SOURCE row N``, the
    table's own row number from 1), so every corpus made of a table is a validated one."""
    return corpus_from_rows(_rows(ds, source, range(len(ds)) if rows is None else rows), name, source)


def _rows(ds: datasets.Dataset, source: str, rows: Sequence[int], size: int = 10_000) -> Iterator[tuple[str, dict]]:
    """(``SOURCE row N``, row) for every row of ``rows``, read ``size`` rows at a time; N
    counts from 1, as a JSONL file's lines do."""
    for start in range(0, len(rows), size):
        part = rows[start:start + size]
        batch = ds[part]
        for n, values in zip(part, zip(*batch.values())):
            yield f"{source} row {n + 1}", dict(zip(batch, values))


def open_source(source: str, columns: dict[str, str], cache_dir: str) -> tuple[datasets.Dataset, Corpus | None]:
    """The table of one training source, and the parsed corpus when the source is one of
    the small parsed formats (its retrieval view can serve a held-out evaluation). The
    synthetic corpus is generated into ``cache_dir`` as a table (no parsed corpus: a
    hold-out of it is read from the table, as a shard source's is)."""
    if is_table_source(source):
        return map_columns(open_dataset(source, cache_dir), columns, source), None
    if columns:
        raise InputError(f"{source} columns", "a column mapping applies to Parquet/JSONL shards and saved datasets only")
    if is_synthetic(source):
        return synthetic_dataset(source, cache_dir), None
    corpus = load_corpus(source)
    return corpus_dataset(corpus), corpus
