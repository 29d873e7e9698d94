"""A deterministic synthetic parallel corpus: the offline default for the main job and tests.

Meaning is shared across languages, surface forms are not. Every item is a bag of
*concepts* (the passage) and a subset of them plus a distractor (the query); each
language renders a concept as a word written in its own script (Latin, Greek,
Cyrillic, ...), so no two languages share a character, let alone a token. A model can
only match a German query to a Thai passage by learning which words mean the same,
which is exactly the cross-lingual alignment that hybrid batches are meant to teach.
Items come in topics (the titles), each with its own favourite concepts, so that
retrieval within a topic is harder than across topics, as in real articles. Topics'
favourites overlap and the vocabulary is small enough (500 concepts) that a 2-layer
model sees every word in training often enough to align it across languages: a
held-out topic is new text, not new words, so what the strategies teach shows in the
zero-shot evaluation (README's first run).

The corpus is made in chunks of items, at any size, with no Python object per pair:
:func:`_chunks` draws each item's concepts, languages and word orders into numpy arrays
(one seeded stream, item after item, so a chunk's draws are those of its items whatever
the chunk size), and the texts are assembled by Arrow (word lookups and joins), never
one Python string at a time. :func:`write_table` writes the chunks as the table
training reads (one row per item and language, the generic format's columns) into an
Arrow file that :func:`hbt.data.table.open_source` memory-maps; :func:`synthetic_corpus`
builds the same corpus as objects for what needs them (``hbt eval``, ``hbt mine``,
tests), which is only practical at small sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hbt.data.corpus import Corpus, Item, Pair, retrieval_from_pairs
from hbt.data.languages import ISO_639_1
from hbt.errors import InputError

# (language code, first code point, alphabet size): one script per language, no overlap.
_SCRIPTS: list[tuple[str, int, int]] = [
    ("en", 0x61, 26),  # Latin
    ("el", 0x3B1, 25),  # Greek
    ("ru", 0x430, 32),  # Cyrillic
    ("hy", 0x561, 38),  # Armenian
    ("he", 0x5D0, 27),  # Hebrew
    ("ar", 0x627, 20),  # Arabic
    ("hi", 0x915, 37),  # Devanagari consonants
    ("th", 0xE01, 46),  # Thai
    ("ka", 0x10D0, 33),  # Georgian
    ("ko", 0x3131, 30),  # Hangul jamo
    ("ja", 0x3041, 80),  # Hiragana
]
_CJK_START, _CJK_SLICE = 0x4E00, 64  # further languages: disjoint slices of CJK ideographs

TABLE_VERSION = 1  # bump when the draws or the table's layout change: cached tables are then ignored
CHUNK_PAIRS = 1 << 15  # pairs drawn per chunk (whole items): a chunk's arrays and texts are what generation holds
BATCH_ROWS = 1 << 16  # rows per record batch of the written file, whatever the chunk size (same bytes)


@dataclass(frozen=True)
class SyntheticSpec:
    items: int = 2000
    languages: int = 4
    seed: int = 0
    coverage: float = 1.0  # probability that an item exists in a given language
    concepts: int = 500
    topics: int = 40
    topic_words: int = 60  # each topic's favourite concepts, drawn independently: topics overlap
    passage_words: int = 12
    query_words: int = 4

    @classmethod
    def parse(cls, spec: str) -> "SyntheticSpec":
        """``synthetic`` or ``synthetic:items=2000,languages=6,seed=1,coverage=0.7``."""
        _, _, args = spec.partition(":")
        values: dict[str, int | float] = {}
        for part in filter(None, args.split(",")):
            key, eq, raw = part.partition("=")
            if not eq or key not in cls.__dataclass_fields__:
                known = ", ".join(cls.__dataclass_fields__)
                raise InputError(spec, f"unknown synthetic option {key!r} (known: {known})")
            kind = float if key == "coverage" else int
            try:
                values[key] = kind(raw)
            except ValueError:
                raise InputError(spec, f"synthetic option {key!r} should be {kind.__name__}, got {raw!r}") from None
        parsed = cls(**values)  # type: ignore[arg-type]
        parsed.validate(spec)
        return parsed

    def validate(self, where: str) -> None:
        if min(self.items, self.languages, self.topics, self.topic_words) < 1 or self.concepts < max(self.passage_words, self.topic_words):
            raise InputError(where, "synthetic items, languages, topics, topic_words must be >= 1 and concepts >= passage_words and topic_words")
        if not 0 < self.coverage <= 1:
            raise InputError(where, f"synthetic coverage must be in (0, 1], got {self.coverage}")
        if not 1 <= self.query_words <= self.passage_words:
            raise InputError(where, "synthetic query_words must be between 1 and passage_words")

    def language_codes(self) -> list[str]:
        return language_codes_all()[: self.languages]

    def key(self) -> str:
        """Names the cached table: the spec and the generator's version, nothing else."""
        return hashlib.sha256(json.dumps([TABLE_VERSION, asdict(self)], sort_keys=True).encode()).hexdigest()[:20]


def is_synthetic(source: str) -> bool:
    return source == "synthetic" or source.startswith("synthetic:")


def language_codes_all() -> list[str]:
    named = [code for code, _, _ in _SCRIPTS]
    return named + sorted(ISO_639_1 - set(named))


def _alphabet(index: int) -> list[str]:
    if index < len(_SCRIPTS):
        _, start, size = _SCRIPTS[index]
    else:
        start, size = _CJK_START + _CJK_SLICE * (index - len(_SCRIPTS)), _CJK_SLICE
    return [chr(start + i) for i in range(size)]


def _lexicon(alphabet: list[str], concepts: int, rng: np.random.Generator) -> list[str]:
    """A distinct word (2-6 letters) per concept."""
    words: set[str] = set()
    lexicon: list[str] = []
    while len(lexicon) < concepts:
        length = int(rng.integers(2, 7))
        word = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=length))
        if word not in words:
            words.add(word)
            lexicon.append(word)
    return lexicon


# -- drawing ------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """The draws of items ``first .. first + n - 1``, pairs in drawing order (an item's
    languages in ``codes`` order, not sorted)."""

    first: int
    topic: np.ndarray  # per item
    passage: np.ndarray  # (items x passage_words) concept ids, an item's first plen[i] valid
    plen: np.ndarray  # per item
    pair_item: np.ndarray  # per pair: the item (within the chunk)
    pair_lang: np.ndarray  # per pair: index into codes
    query: np.ndarray  # (pairs x query_words + 1) concept ids in the pair's word order, first qlen valid
    qlen: np.ndarray  # per pair


def _start(spec: SyntheticSpec) -> tuple[np.random.Generator, list[str], list[np.ndarray]]:
    """The stream after the lexicons: the generator, each language's words, each topic's concepts."""
    rng = np.random.default_rng(spec.seed)
    words = [_lexicon(_alphabet(i), spec.concepts, rng) for i in range(len(spec.language_codes()))]
    # Each topic prefers its own set of concepts (70% of its words come from it). The sets
    # overlap, so a held-out topic's words are seen in training under other topics, as a
    # real test article's words are: alignment learned on training topics can transfer.
    topic_concepts = [rng.choice(spec.concepts, size=spec.topic_words, replace=False) for _ in range(spec.topics)]
    return rng, [w for lex in words for w in lex], topic_concepts


def chunk_items(spec: SyntheticSpec) -> int:
    """Items per chunk: about :data:`CHUNK_PAIRS` pairs, whatever the number of languages."""
    return max(1, CHUNK_PAIRS // len(spec.language_codes()))


def _chunks(spec: SyntheticSpec, chunk: int | None = None) -> Iterator[tuple[list[str], _Chunk]]:
    """The corpus' draws, ``chunk`` items at a time (default :func:`chunk_items`), and the
    words of every language (language ``l``'s concept ``c`` at ``l * concepts + c``). One
    stream drawn item after item, exactly as hbt drew it when it built one Python object
    per pair (so the corpus is the same as then); the stream never depends on the chunk."""
    chunk = chunk or chunk_items(spec)
    rng, words, topic_concepts = _start(spec)
    random, integers, choice, permuted = rng.random, rng.integers, rng.choice, rng.permuted
    P, Q, C, T, TW = spec.passage_words, spec.query_words, spec.concepts, spec.topics, spec.topic_words
    L = len(spec.language_codes())  # languages beyond the codes hbt knows are not made
    coverage = spec.coverage
    orders: dict[tuple[int, int], np.ndarray] = {}  # (languages, query length) -> rows 0..len-1 to shuffle
    count_nonzero = np.count_nonzero
    for first in range(0, spec.items, chunk):
        n = min(chunk, spec.items - first)
        topic = (np.arange(first, first + n) % T).astype(np.int32)
        passage = np.zeros((n, P), dtype=np.int32)
        plen = np.zeros(n, dtype=np.int32)
        present = np.zeros((n, L), dtype=bool)
        query = np.zeros((n * L, Q + 1), dtype=np.int32)
        qlen = np.zeros(n * L, dtype=np.int32)
        pairs = 0
        for i in range(n):
            favourites = topic_concepts[(first + i) % T]
            from_topic = random(P) < 0.7
            # rng.choice(favourites, P) draws integers(0, len, P): the same stream, less overhead
            drawn = np.where(from_topic, favourites[integers(0, TW, P)], integers(0, C, P))
            words_in = list(dict.fromkeys(drawn.tolist()))  # distinct, in order
            k = len(words_in)
            passage[i, :k] = words_in
            plen[i] = k
            q = np.empty(min(Q, k) + 1, dtype=np.int32)
            q[:-1] = passage[i, choice(k, size=min(Q, k), replace=False)]
            q[-1] = integers(0, C)  # one distractor word
            here = random(L) < coverage  # L draws of rng.random(), one call
            m = int(count_nonzero(here))
            if not m:
                here[int(integers(L))] = True
                m = 1
            present[i] = here
            # word order differs between languages: one shuffled row per language (codes order);
            # rng.permuted of m rows draws as m calls of rng.permutation(len(q)) do
            rows = orders.get((m, len(q)))
            if rows is None:
                rows = orders[m, len(q)] = np.tile(np.arange(len(q)), (m, 1))
            order = permuted(rows, axis=1)
            query[pairs:pairs + m, :len(q)] = q[order]
            qlen[pairs:pairs + m] = len(q)
            pairs += m
        pair_item, pair_lang = np.nonzero(present)  # row-major: item by item, languages in codes order
        yield words, _Chunk(first, topic, passage, plen, pair_item.astype(np.int64), pair_lang.astype(np.int64),
                            query[:pairs], qlen[:pairs])


def _join(words: pa.Array, ids: np.ndarray, counts: np.ndarray) -> pa.Array:
    """Per row, its ``counts[r]`` words (``ids``, flat, row after row) joined by spaces."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(ids))), " ")


def _texts(words: pa.Array, spec: SyntheticSpec, c: _Chunk) -> tuple[pa.Array, pa.Array]:
    """The chunk's queries and passages, per pair in drawing order."""
    base = c.pair_lang * spec.concepts  # language l's word for concept x: words[l * concepts + x]
    qmask = np.arange(c.query.shape[1]) < c.qlen[:, None]
    queries = _join(words, (c.query + base[:, None])[qmask], c.qlen)
    plen = c.plen[c.pair_item]
    pmask = np.arange(c.passage.shape[1]) < plen[:, None]
    passages = _join(words, (c.passage[c.pair_item] + base[:, None])[pmask], plen)
    return queries, passages


# -- the table ----------------------------------------------------------------------------


SCHEMA = pa.schema([("id", pa.string()), ("lang", pa.string()), ("query", pa.string()), ("positive", pa.string()),
                    ("negatives", pa.list_(pa.string())), ("title", pa.string())])


def _item_ids(first: int, n: int) -> pa.Array:
    """``syn000000``, ``syn000001``, ... (six digits at least, as ``f"syn{n:06d}"``)."""
    numbers = pc.cast(pa.array(np.arange(first, first + n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise("syn", pc.utf8_lpad(numbers, width=6, padding="0"), "")


def table_chunks(spec: SyntheticSpec, chunk: int | None = None) -> Iterator[pa.Table]:
    """The corpus as the table training reads, chunk by chunk: one row per (item,
    language), an item's rows together and its languages in sorted order (as every
    table hbt reads from a parsed corpus), no hard negatives, the topic as the title."""
    codes = spec.language_codes()
    rank = np.argsort(np.argsort(codes))  # code index -> its place among the sorted codes
    lang_names = pa.array(codes)
    titles = pa.array([f"topic-{t:03d}" for t in range(spec.topics)])
    empty = pa.ListArray.from_arrays(pa.array([0], pa.int32()), pa.array([], pa.string()))
    for words, c in _chunks(spec, chunk):
        queries, passages = _texts(pa.array(words), spec, c)
        order = np.lexsort((rank[c.pair_lang], c.pair_item))
        item, lang = c.pair_item[order], c.pair_lang[order]
        ids = _item_ids(c.first, len(c.topic)).take(pa.array(item))
        negatives = pa.ListArray.from_arrays(pa.array(np.zeros(len(order) + 1, dtype=np.int32)), empty.values)
        yield pa.table([ids, lang_names.take(pa.array(lang)), queries.take(pa.array(order)),
                        passages.take(pa.array(order)), negatives, titles.take(pa.array(c.topic[item]))], schema=SCHEMA)


def _fingerprint_bytes(table: pa.Table, starts: np.ndarray) -> pa.Buffer:
    """What :meth:`Corpus.fingerprint` hashes of these rows: per item its id, then per
    language (sorted) ``\\0lang\\0query\\0passage`` (``starts``: the rows that begin an item)."""
    ids = pc.if_else(pa.array(starts), table.column("id"), "")
    joined = pc.binary_join_element_wise(ids, table.column("lang"), table.column("query"), table.column("positive"), "\0")
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
    return joined.buffers()[2][int(offsets[0]):int(offsets[-1])]


def _plain(array: pa.Array) -> pa.Array:
    """A string array (no nulls) in one canonical layout, whatever slice of whatever
    chunk it came from: offsets from 0, its own bytes only, no validity bitmap. Arrow's
    IPC writer writes a sliced array's buffers as they lie, so without this the file's
    bytes would depend on where the chunks were cut."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    start, end = int(offsets[0]), int(offsets[-1])
    return pa.StringArray.from_buffers(len(array), pa.py_buffer(offsets - offsets[0]),
                                       array.buffers()[2].slice(start, end - start), null_count=0)


def _batch(table: pa.Table) -> pa.RecordBatch:
    """``table``'s rows as one record batch of canonical arrays (see :func:`_plain`)."""
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(table.num_rows + 1, dtype=np.int32)), pa.array([], pa.string()))
    columns = [empty if name == "negatives" else _plain(table.column(name).combine_chunks()) for name in SCHEMA.names]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _batches(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.RecordBatch]:
    """The tables' rows re-cut into record batches of ``rows`` (the last one shorter)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows:
            whole = pa.concat_tables(pending)
            yield _batch(whole.slice(0, rows))
            rest = whole.slice(rows)
            pending, count = [rest], rest.num_rows
    if count:
        yield _batch(pa.concat_tables(pending))


def write_table(spec: SyntheticSpec, path: Path, chunk: int | None = None,
                batch_rows: int = BATCH_ROWS) -> dict[str, int | str]:
    """Write the corpus as an Arrow stream file (what ``datasets`` memory-maps) at
    ``path``, chunk by chunk; returns its size (items, rows) and the corpus' content
    fingerprint (:meth:`Corpus.fingerprint`'s, computed as the rows go by). The file's
    bytes depend on the spec only, not on ``chunk`` (items drawn at a time)."""
    digest = hashlib.sha256()
    rows = 0

    def hashed(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        nonlocal rows
        for table in tables:
            ids = table.column("id").combine_chunks()
            starts = np.ones(len(ids), dtype=bool)  # a chunk begins with an item (chunks are whole items)
            starts[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
            digest.update(_fingerprint_bytes(table, starts))
            rows += table.num_rows
            yield table

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        for batch in _batches(hashed(table_chunks(spec, chunk)), batch_rows):
            writer.write_batch(batch)
    return {"items": spec.items, "rows": rows, "fingerprint": digest.hexdigest()[:16]}


def cached_table(spec: SyntheticSpec, cache_dir: str) -> tuple[Path, dict]:
    """The corpus' Arrow file in ``cache_dir/synthetic-<key>/`` and its meta (written the
    first time, published atomically: a tmp directory renamed, so a reader sees a whole
    table or none)."""
    folder = Path(cache_dir) / f"synthetic-{spec.key()}"
    if not (folder / "meta.json").exists():
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = {"spec": asdict(spec), "version": TABLE_VERSION, **write_table(spec, tmp / "data.arrow")}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(folder)
        except OSError:  # another process published the same table first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / "data.arrow", json.loads((folder / "meta.json").read_text())


# -- as objects ---------------------------------------------------------------------------


def synthetic_corpus(spec: SyntheticSpec) -> Corpus:
    """The corpus as Python objects (items, pairs, the retrieval view): one object per
    pair, for what needs them (``hbt eval``, ``hbt mine``, tests); training reads the
    table (:func:`cached_table`)."""
    codes = spec.language_codes()
    items: list[Item] = []
    for words, c in _chunks(spec):
        queries, passages = (t.to_pylist() for t in _texts(pa.array(words), spec, c))
        ends = np.cumsum(np.bincount(c.pair_item, minlength=len(c.topic))).tolist()
        start = 0
        for i, end in enumerate(ends):
            n = c.first + i
            pairs = {codes[lang]: Pair(query=queries[p], passage=passages[p])
                     for p, lang in zip(range(start, end), c.pair_lang[start:end].tolist())}
            items.append(Item(id=f"syn{n:06d}", title=f"topic-{int(c.topic[i]):03d}", pairs=pairs))
            start = end
    return Corpus(name=f"synthetic-{spec.seed}", items=items, retrieval=retrieval_from_pairs(items))
