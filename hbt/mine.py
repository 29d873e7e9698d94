"""``hbt mine``: hard negatives for every (item, language) pair of a corpus, on 1 to N ranks.

Each pair's query (language L) is searched against L's candidate pool
(``corpus.retrieval.candidates[L]``); its negatives are drawn from a window of that
ranking (``--range a-b``: skip the top ``a``, which are often unlabelled positives, keep
ranks ``a+1 .. b``), never a passage the evaluation counts as relevant to the query nor
one whose text is the positive's, optionally never one scoring above ``r`` times the
positive (positive-aware filtering). docs/mining.md has the rules and the output format.

How it is split over ranks, and why the output does not depend on their number:

* Texts are encoded in *global* batches (all texts sorted by length, cut every
  ``batch_size``), batch ``b`` on rank ``b mod world``, so each text is encoded in the
  same batch whatever the rank count. Embeddings go to memory-mapped ``.npy`` files: each
  rank keeps its own candidates and a full copy of the queries (exchanged in rounds).
* Each rank searches its candidates of language L (FAISS, blocks of ``Search.block``
  candidates for the exact index) for the top ``depth + MARGIN``, rescores those in
  float64 (:func:`hbt.eval.search.relevant_scores`) and the lists of all ranks are merged
  by score, then lower candidate id (:func:`hbt.eval.search.merge_topk`): FAISS's float32
  rounding, which differs with blocking and threads, decides nothing but the margin.
* Rank 0 picks the negatives per block of queries with one seeded generator per
  language and writes them; the queries' blocks are the same on any rank count.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from hbt.data.corpus import Corpus
from hbt.data.languages import check_language
from hbt.dist import DistEnv, gather_objects
from hbt.errors import InputError
from hbt.eval.encode import encode
from hbt.eval.search import IndexKind, build_index, local_topk, merge_topk, relevant_scores
from hbt.relevance import CandidateLayout

MARGIN = 8  # extra candidates each rank searches beyond the depth, so float32 ties at the cut do not matter
EXCHANGE_ROWS = 16384  # query embeddings sent per rank and round when ranks share them


@dataclass(frozen=True)
class MineSettings:
    k: int = 7
    range: tuple[int, int] = (10, 100)
    languages: tuple[str, ...] | None = None
    max_score_ratio: float | None = None
    pick: str = "sample"  # sample: k at random from the window (FlagEmbedding's hn_mine); top: the k best
    seed: int = 0
    batch_size: int = 128
    index: IndexKind = "flat"

    def validate(self) -> None:
        if self.k < 1:
            raise InputError("--k", f"must be at least 1, got {self.k}")
        a, b = self.range
        if not 0 <= a < b:
            raise InputError("--range", f"expected a-b with 0 <= a < b, got {a}-{b}")
        if self.max_score_ratio is not None and not self.max_score_ratio > 0:
            raise InputError("--max-score-ratio", f"must be > 0, got {self.max_score_ratio}")
        if self.batch_size < 1:
            raise InputError("--batch-size", f"must be at least 1, got {self.batch_size}")
        if self.pick not in ("sample", "top"):
            raise InputError("--pick", f"expected sample or top, got {self.pick!r}")


def parse_range(text: str) -> tuple[int, int]:
    """``"10-100"`` -> (10, 100): skip the top 10 of the ranking, draw from ranks 11..100."""
    a, sep, b = text.partition("-")
    try:
        if not sep:
            raise ValueError
        lo, hi = int(a), int(b)
    except ValueError:
        raise InputError("--range", f"expected two integers a-b (e.g. 10-100), got {text!r}") from None
    if not 0 <= lo < hi:
        raise InputError("--range", f"expected a-b with 0 <= a < b, got {text!r}")
    return lo, hi


@dataclass(frozen=True)
class Search:
    """How many queries are picked for at once (rank 0's lists and the exchange between
    ranks are this many rows) and how many candidates an exact FAISS index holds at once."""

    queries: int = 16384
    block: int = 262144


@dataclass
class MineLayout:
    """The pairs to mine for (queries, in language then item order) on top of the shared
    :class:`hbt.relevance.CandidateLayout` of the mined languages' pools (global candidate
    ids in language order, so each language is one id range).

    ``excluded`` holds, per query, the candidates it may never get: those relevant to its
    item in its own pool (the evaluation's rule; no other pool is searched) and, mining's
    own rule on top, those whose text is its positive's; ``positive`` the candidate that is
    its positive (its score is the reference of ``--max-score-ratio``)."""

    pairs: list[tuple[int, str]]  # (item index, language) per query
    query_texts: list[str]
    q_start: np.ndarray  # queries of candidates.langs[i]: q_start[i]:q_start[i+1]
    excluded: np.ndarray  # (queries x E) global candidate ids, -1 pads
    positive: np.ndarray  # (queries,) global candidate id
    candidates: CandidateLayout

    @classmethod
    def of(cls, corpus: Corpus, languages: tuple[str, ...] | None, source: str) -> "MineLayout":
        langs = _mined_languages(corpus, languages, source)
        pairs = [(i, lang) for lang in langs for i, item in enumerate(corpus.items) if lang in item.pairs]
        cands = CandidateLayout.of(corpus.retrieval.candidates, [corpus.items[i].id for i, _ in pairs], langs)
        q_start = np.searchsorted([langs.index(lang) for _, lang in pairs], np.arange(len(langs) + 1))
        excluded, positive = [], []
        for li, lang in enumerate(langs):
            by_text: dict[str, list[int]] = defaultdict(list)
            for gid in range(int(cands.start[li]), int(cands.start[li + 1])):
                by_text[cands.texts[gid].strip()].append(gid)
            rows = slice(int(q_start[li]), int(q_start[li + 1]))
            for (i, _), relevant in zip(pairs[rows], cands.relevant_in(li, rows)):
                item = corpus.items[i]
                same_text = by_text.get(item.pairs[lang].passage.strip(), [])
                pos = [c for c in same_text if c in relevant] or same_text
                if not pos:
                    raise InputError(source, f"item '{item.id}': its '{lang}' positive is not in the '{lang}' candidate pool")
                excluded.append(sorted(set(relevant) | set(same_text)))
                positive.append(pos[0])
        width = max(map(len, excluded), default=1)
        ex = np.full((len(excluded), width), -1, dtype=np.int64)
        for row, ids in enumerate(excluded):
            ex[row, :len(ids)] = ids
        return cls(pairs, [corpus.items[i].pairs[lang].query for i, lang in pairs], q_start, ex,
                   np.array(positive, dtype=np.int64), cands)


def _mined_languages(corpus: Corpus, languages: tuple[str, ...] | None, source: str) -> list[str]:
    """The pool languages to mine for: ``--languages`` (each checked), else every language
    that has both pairs and a candidate pool."""
    if not corpus.items:
        raise InputError(source, "has no training pairs (query and positive) to mine negatives for")
    have = sorted({lang for item in corpus.items for lang in item.pairs} & set(corpus.retrieval.candidates))
    if not languages:
        return have
    for lang in languages:
        check_language(lang, "--languages")
        if lang not in have:
            raise InputError("--languages", f"no '{lang}' pairs in {source} (it has: {', '.join(have)})")
    return sorted(set(languages))


# --- encoding -------------------------------------------------------------------------

def global_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Every text's index in batches of similar length (by characters; the order and cut
    depend on the texts and ``batch_size`` only, never on the rank count)."""
    order = np.argsort(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def encode_shard(model, tokenizer, texts: list[str], prefix: str, max_length: int, batch_size: int, path: Path,
                 env: DistEnv, desc: str | None) -> tuple[np.ndarray, np.memmap]:
    """This rank's share of ``texts`` (global batches ``rank, rank + world, ...`` of
    ``env``): the ascending global ids it encoded and their embeddings, row for row, in a
    ``.npy`` map."""
    mine = global_batches(texts, batch_size)[env.rank::env.world_size]
    own = np.sort(np.concatenate(mine)) if mine else np.zeros(0, dtype=np.int64)
    dim = model.encoder.config.hidden_size
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(own), dim))
    for batch in tqdm(mine, desc=desc, disable=desc is None, leave=False):
        emb = encode(model, tokenizer, [prefix + texts[i] for i in batch], max_length, batch_size=len(batch))
        out[np.searchsorted(own, batch)] = emb
    out.flush()
    return own, out


def share_rows(own: np.ndarray, rows: np.ndarray, n: int, path: Path, env: DistEnv) -> np.memmap:
    """All ``n`` rows on every rank of ``env``, in a ``.npy`` map at ``path``, from each
    rank's ``rows`` (global ids ``own``): exchanged in rounds of :data:`EXCHANGE_ROWS` per
    rank, so no rank ever holds more than a round of other ranks' rows in memory."""
    full = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, rows.shape[1]))
    rounds = max(-(-c // EXCHANGE_ROWS) for c in gather_objects(len(own), env))
    for r in range(rounds):
        s = slice(r * EXCHANGE_ROWS, (r + 1) * EXCHANGE_ROWS)
        for ids, emb in gather_objects((own[s], np.asarray(rows[s])), env):
            full[ids] = emb
    full.flush()
    return full


# --- search and choice ------------------------------------------------------------------

def search_language(queries: np.ndarray, cands: np.ndarray, cand_ids: np.ndarray, depth: int,
                    index: IndexKind, search: Search, indexes: list | None) -> tuple[np.ndarray, np.ndarray]:
    """This rank's top ``depth + MARGIN`` of ``cands`` (global ids ``cand_ids``) for each
    query, rescored in float64, ranked by score then lower id. ``indexes`` caches the
    FAISS index when one block holds all of this rank's candidates of the language."""
    k = depth + MARGIN
    block = search.block if index == "flat" else max(1, len(cands))
    parts = []
    for lo in range(0, len(cands), block):
        if indexes:
            faiss_index = indexes[0]
        else:
            faiss_index = build_index(np.ascontiguousarray(cands[lo:lo + block]), index)
            if len(cands) <= block and indexes is not None:
                indexes.append(faiss_index)
        parts.append(local_topk(faiss_index, queries, cand_ids[lo:lo + block], k))
        merged = merge_topk(parts, k)
        parts = [merged]
    if not parts:
        return np.full((len(queries), 0), -np.inf), np.full((len(queries), 0), -1, dtype=np.int64)
    _, ids = parts[0]
    local = np.where(ids >= 0, np.searchsorted(cand_ids, np.maximum(ids, 0)), -1)
    scores = np.where(ids >= 0, relevant_scores(queries, cands, 0, local), -np.inf)
    return merge_topk([(scores, ids)], k)


@dataclass
class Counts:
    pairs: int = 0
    written: int = 0
    dropped_no_negatives: int = 0  # pairs with no negative at all (not written)
    short: int = 0  # pairs written with fewer than k
    filled: int = 0  # pairs that needed negatives from below the range
    false_negatives_skipped: int = 0  # relevant or positive-text candidates inside the range
    ratio_dropped: int = 0  # candidates inside the range dropped by --max-score-ratio

    def add(self, other: "Counts") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def choose(ids: np.ndarray, scores: np.ndarray, excluded: np.ndarray, pos_score: np.ndarray, s: MineSettings,
           rng: np.random.Generator) -> tuple[np.ndarray, Counts]:
    """Per query, the columns of its ranking (``ids``/``scores``, best first) that become
    its negatives, in ranking order, -1 pads; and the counts of what was excluded in the range.

    Allowed: a real candidate, not excluded, at most ``max_score_ratio`` x the positive's
    score. ``k`` are drawn from the allowed ones inside the range (at random or the best
    ``k``); when fewer are there, the nearest allowed ones below the range fill up."""
    a, b = s.range
    n, depth = ids.shape
    col = np.arange(depth)[None, :]
    bad = (ids[:, :, None] == excluded[:, None, :]).any(-1) & (ids >= 0)
    too_high = np.zeros_like(bad) if s.max_score_ratio is None else scores > s.max_score_ratio * pos_score[:, None]
    allowed = (ids >= 0) & ~bad & ~too_high
    in_range = (col >= a) & (col < b)
    keys = rng.random((n, depth)) if s.pick == "sample" else np.broadcast_to(col / depth, (n, depth)).copy()
    keys = np.where(in_range, keys, 2.0 + col)  # below the range: nearest first, after any in range
    keys = np.where(allowed & (col >= a), keys, np.inf)
    chosen = np.argsort(keys, axis=1, kind="stable")[:, : s.k]
    ok = np.isfinite(np.take_along_axis(keys, chosen, 1))
    chosen = np.sort(np.where(ok, chosen, depth), axis=1)
    chosen = np.where(chosen < depth, chosen, -1)
    c = Counts(false_negatives_skipped=int((bad & in_range).sum()),
               ratio_dropped=int((too_high & ~bad & in_range & (ids >= 0)).sum()))
    return chosen, c


def tally(chosen: list[np.ndarray], s: MineSettings) -> Counts:
    """The per-pair counts of the final choice (columns, -1 pads)."""
    got = np.array([(c >= 0).sum() for c in chosen])
    return Counts(pairs=len(chosen), written=int((got > 0).sum()), dropped_no_negatives=int((got == 0).sum()),
                  short=int(((got > 0) & (got < s.k)).sum()), filled=sum(int((c >= s.range[1]).any()) for c in chosen))


# --- output ---------------------------------------------------------------------------

class Writer:
    """``train.jsonl`` (hbt's generic format), or Parquet shards with the same columns."""

    def __init__(self, out: Path, fmt: str, shard_rows: int = 100_000):
        self.out, self.fmt, self.shard_rows = out, fmt, shard_rows
        self.rows: list[dict] = []
        self.files: list[str] = []
        self.tmp = out / ".train.jsonl.tmp"
        self.f = self.tmp.open("w", encoding="utf-8") if fmt == "jsonl" else None

    def write(self, row: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self.rows.append(row)
        if len(self.rows) >= self.shard_rows:
            self._shard()

    def _shard(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"train-{len(self.files):05d}.parquet"
        table = pa.Table.from_pylist(self.rows)
        pq.write_table(table, self.out / (".tmp-" + name))
        self.files.append(name)
        self.rows = []

    def close(self) -> list[str]:
        if self.f is not None:
            self.f.close()
            self.tmp.replace(self.out / "train.jsonl")
            return ["train.jsonl"]
        if self.rows or not self.files:
            self._shard()
        for old in self.out.glob("train-*.parquet"):
            old.unlink()
        for name in self.files:
            (self.out / (".tmp-" + name)).replace(self.out / name)
        return self.files


# --- the job ----------------------------------------------------------------------------

@dataclass
class MineArgs:
    model: str
    data: str
    out: Path
    settings: MineSettings = field(default_factory=MineSettings)
    pooling: str | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_length: int | None = None
    format: str = "jsonl"
    with_scores: bool = False
    cache_dir: str = ".cache/hbt"  # where shards are converted (data.cache_dir)
    columns: dict[str, str] = field(default_factory=dict)  # hbt column -> the shards' column (data.sources' columns)
    holdout_titles: str | None = None  # titles neither mined for nor drawn as negatives (the evaluation's)
    holdout_seed: int = 0
    search: Search = field(default_factory=Search)


def run_mine(a: MineArgs) -> tuple[dict, DistEnv]:
    """Load, encode (sharded), search, choose and write, on every rank of the job that
    started this process (its process group is started here, after the cheap checks);
    returns mine.json's content (on every rank; rank 0 wrote it and the training data)
    and the job's env (so the caller prints once)."""
    from hbt import dist as hdist
    from hbt.data.table import is_table_source
    from hbt.eval.standalone import load_encoder, text_spec

    s = a.settings
    s.validate()
    if a.format not in ("jsonl", "parquet"):
        raise InputError("--format", f"expected jsonl or parquet, got {a.format!r}")
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if a.columns and not is_table_source(a.data):
        raise InputError("--columns", "a column mapping applies to Parquet/JSONL shards and saved datasets only")
    env = hdist.init()
    corpus = mining_corpus(a, env)
    layout = MineLayout.of(corpus, s.languages, a.data)
    spec, pooling = text_spec(a.model, a.query_prefix, a.passage_prefix, a.max_length, a.pooling)
    model, tokenizer = load_encoder(a.model, pooling, env)
    timings["load_s"] = time.perf_counter() - tick
    work = a.out / ".mine-work" / f"rank-{env.rank}"
    if env.is_main:
        a.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    try:
        queries, cands, c_own = encode_layout(model, tokenizer, layout, spec, s.batch_size, work, env, timings)
        del model
        result = mine_embeddings(queries, cands, c_own, layout, s, env, a.search, env.is_main,
                                 writer=RowWriter(a, layout, corpus) if env.is_main else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hdist.barrier()
    timings.update(result.pop("timings"))
    report = {
        "model": a.model, "data": a.data, "corpus": corpus.name, "world_size": env.world_size,
        "settings": {**asdict(s), "range": list(s.range), "languages": layout.candidates.langs, "format": a.format,
                     "query_prefix": spec.query_prefix, "passage_prefix": spec.passage_prefix, "pooling": pooling,
                     "max_query_length": spec.max_query_length, "max_passage_length": spec.max_passage_length,
                     "with_scores": a.with_scores, "holdout_titles": a.holdout_titles, "holdout_seed": a.holdout_seed},
        "candidates": {lang: int(n) for lang, n in zip(layout.candidates.langs, np.diff(layout.candidates.start))},
        **result, "timings": timings,
    }
    if env.is_main:
        write_report(a.out, report)
    return report, env


def mining_corpus(a: MineArgs, env: DistEnv) -> Corpus:
    """The corpus to mine, without its held-out titles; shards are converted by rank 0
    while the other ranks wait, then read by all."""
    from hbt import dist as hdist
    from hbt.data import load_corpus, split_corpus
    from hbt.data.table import is_table_source, main_first, table_corpus

    if is_table_source(a.data):
        corpus = main_first(lambda: table_corpus(a.data, a.cache_dir, a.columns), env.is_main, hdist.barrier)
    else:
        corpus = load_corpus(a.data)
    if a.holdout_titles:
        corpus, _ = split_corpus(corpus, a.holdout_titles, a.holdout_seed)
    return corpus


def encode_layout(model, tokenizer, layout: MineLayout, spec, batch_size: int, work: Path, env: DistEnv,
                  timings: dict[str, float]) -> tuple[np.memmap, np.memmap, np.ndarray]:
    """Every query's embedding (shared by all ranks) and this rank's candidates' with their
    global ids, in ``.npy`` maps under ``work``; the seconds each took go into ``timings``."""
    show = env.is_main
    tick = time.perf_counter()
    q_own, q_rows = encode_shard(model, tokenizer, layout.query_texts, spec.query_prefix, spec.max_query_length,
                                 batch_size, work / "queries-own.npy", env, "encode queries" if show else None)
    queries = share_rows(q_own, q_rows, len(layout.query_texts), work / "queries.npy", env)
    del q_rows
    timings["encode_queries_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    c_own, cands = encode_shard(model, tokenizer, layout.candidates.texts, spec.passage_prefix, spec.max_passage_length,
                                batch_size, work / "candidates.npy", env, "encode candidates" if show else None)
    timings["encode_candidates_s"] = time.perf_counter() - tick
    return queries, cands, c_own


def write_report(out: Path, report: dict) -> None:
    """Rank 0's end of a mining job: ``mine.json``, and a line when pairs came up short."""
    shutil.rmtree(out / ".mine-work", ignore_errors=True)
    (out / "mine.json").write_text(json.dumps(report, indent=2) + "\n")
    c, k = report["counts"], report["settings"]["k"]
    if c["short"] or c["dropped_no_negatives"]:
        print(f"hbt mine: {c['short']} of {c['pairs']} pairs got fewer than {k} negatives; "
              f"{c['dropped_no_negatives']} got none and were left out (see mine.json)", file=sys.stderr)


class RowWriter:
    """What rank 0 does with each pair's chosen negatives: one output row."""

    def __init__(self, a: MineArgs, layout: MineLayout, corpus: Corpus):
        self.writer, self.layout, self.corpus, self.with_scores = Writer(a.out, a.format), layout, corpus, a.with_scores

    def __call__(self, q: int, neg_ids: list[int], neg_scores: list[float], neg_ranks: list[int], pos_score: float) -> None:
        item_index, lang = self.layout.pairs[q]
        item = self.corpus.items[item_index]
        pair = item.pairs[lang]
        row = {"id": item.id, "lang": lang, "query": pair.query, "positive": pair.passage,
               "negatives": [self.layout.candidates.texts[c] for c in neg_ids], "title": item.title}
        if self.with_scores:
            row.update(positive_score=pos_score, negative_scores=neg_scores, negative_ranks=neg_ranks)
        self.writer.write(row)

    def close(self) -> list[str]:
        return self.writer.close()


def mine_embeddings(queries: np.ndarray, cands: np.ndarray, cand_ids: np.ndarray, layout: MineLayout, s: MineSettings,
                    env: DistEnv, search: Search = Search(), show: bool = False, writer=None) -> dict:
    """Search and choose from embeddings alone (a benchmark calls this with random ones),
    on every rank of ``env``: ``queries`` every query's embedding (layout order), ``cands``
    this rank's candidates, whose global ids are ``cand_ids`` (ascending). ``writer(query,
    ids, scores, ranks, positive score)`` is called on rank 0 for every pair that gets a
    negative, in layout order. Returns the counts, the output files and timings."""
    counts = Counts()
    timings = {"search_s": 0.0, "choose_write_s": 0.0}
    for li, lang in enumerate(layout.candidates.langs):
        blocks = language_blocks(queries, cands, cand_ids, layout, s, li, env, search, timings)
        n_blocks = -(-int(layout.q_start[li + 1] - layout.q_start[li]) // search.queries)
        for lo, rows, pos_score, c in tqdm(blocks, desc=f"mine {lang}", total=n_blocks, disable=not show, leave=False):
            tick = time.perf_counter()
            c.add(tally([cols for _, _, cols in rows], s))
            counts.add(c)
            if env.is_main and writer is not None:
                for r, (row_ids, row_scores, cols) in enumerate(rows):
                    cols = cols[cols >= 0]
                    if len(cols):
                        writer(lo + r, row_ids[cols].tolist(), row_scores[cols].tolist(), cols.tolist(), float(pos_score[r]))
            timings["choose_write_s"] += time.perf_counter() - tick
    files = writer.close() if env.is_main and hasattr(writer, "close") else []
    return {"counts": asdict(counts), "files": files, "timings": timings}


def language_blocks(queries: np.ndarray, cands: np.ndarray, cand_ids: np.ndarray, layout: MineLayout, s: MineSettings,
                    li: int, env: DistEnv, search: Search,
                    timings: dict[str, float]) -> Iterator[tuple[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray, Counts]]:
    """Language ``li``'s queries, :attr:`Search.queries` at a time: per block, its first
    query, per query (ranking ids, float64 scores, chosen columns), the positives' scores
    and the block's counts. Every rank searches its own candidates and the rankings are
    merged (collectives: every rank walks the same blocks); the seconds go into ``timings``."""
    _, b = s.range
    q0, q1 = int(layout.q_start[li]), int(layout.q_start[li + 1])
    c0, c1 = int(layout.candidates.start[li]), int(layout.candidates.start[li + 1])
    excluded = layout.excluded[q0:q1]
    e_max = int((excluded >= 0).sum(1).max()) if q1 > q0 else 0
    depth = min(b + s.k + e_max, c1 - c0)  # the range, then room for k below it past every excluded one
    s0, s1 = np.searchsorted(cand_ids, [c0, c1])
    local, local_ids = cands[s0:s1], cand_ids[s0:s1]
    rng = np.random.default_rng([s.seed, li])
    indexes: list = []
    pos_local = np.searchsorted(local_ids, layout.positive[q0:q1])
    held = (pos_local < len(local_ids)) & (local_ids[np.minimum(pos_local, max(len(local_ids) - 1, 0))] == layout.positive[q0:q1]) \
        if len(local_ids) else np.zeros(q1 - q0, dtype=bool)
    pos_local = np.where(held, pos_local, -1)

    def ranked(qb: np.ndarray, pos_rows: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The merged top ``d`` of every rank (ids, float64 scores) and the positives' scores."""
        lists = search_language(qb, local, local_ids, d, s.index, search, indexes)
        pos = relevant_scores(qb, local, 0, pos_rows[:, None])[:, 0]
        parts = gather_objects((lists, pos), env)
        scores, ids = merge_topk([p[0] for p in parts], d)
        return ids, scores, np.sum([p[1] for p in parts], axis=0)

    for lo in range(q0, q1, search.queries):
        hi = min(lo + search.queries, q1)
        tick = time.perf_counter()
        qb, pos_rows, ex = np.ascontiguousarray(queries[lo:hi]), pos_local[lo - q0:hi - q0], excluded[lo - q0:hi - q0]
        ids, scores, pos_score = ranked(qb, pos_rows, depth)
        chosen, c = choose(ids, scores, ex, pos_score, s, rng)
        rows = [(ids[r], scores[r], chosen[r]) for r in range(hi - lo)]
        # Pairs still short of k (the ratio filter dropped much, or many excluded): deeper, 4x at a time.
        short, d = np.flatnonzero((chosen >= 0).sum(1) < s.k), depth
        while len(short) and d < c1 - c0:
            d = min(4 * d, c1 - c0)
            ids2, scores2, _ = ranked(np.ascontiguousarray(qb[short]), pos_rows[short], d)
            chosen2, _ = choose(ids2, scores2, ex[short], pos_score[short], s, np.random.default_rng([s.seed, li, lo, d]))
            for j, r in enumerate(short):
                rows[r] = (ids2[j], scores2[j], chosen2[j])
            short = short[(chosen2 >= 0).sum(1) < s.k]
        timings["search_s"] += time.perf_counter() - tick
        yield lo, rows, pos_score, c
