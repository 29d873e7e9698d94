"""Search and choice from embeddings: every query's ranking in its own language's pool,
merged over ranks so that the negatives do not depend on their number.

* Each rank searches its candidates of language L (FAISS, blocks of ``Search.block``
  candidates for the exact index) for the top ``depth + MARGIN``, rescores those in
  float64 (:func:`hbt.eval.search.relevant_scores`) and the lists of all ranks are merged
  by score, then lower candidate id (:func:`hbt.eval.search.merge_topk`): FAISS's float32
  rounding, which differs with blocking and threads, decides nothing but the margin.
* Rank 0 picks the negatives per block of queries with one seeded generator per
  language and writes them; the queries' blocks are the same on any rank count.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
from tqdm import tqdm

from hbt.dist import DistEnv, gather_objects
from hbt.eval.search import IndexKind, build_index, local_topk, merge_topk, relevant_scores
from hbt.mine.choose import Counts, MineSettings, choose, tally
from hbt.mine.layout import MineLayout

MARGIN = 8  # extra candidates each rank searches beyond the depth, so float32 ties at the cut do not matter


@dataclass(frozen=True)
class Search:
    """How many queries are picked for at once (rank 0's lists and the exchange between
    ranks are this many rows) and how many candidates an exact FAISS index holds at once."""

    queries: int = 16384
    block: int = 262144


def search_language(queries: np.ndarray, cands: np.ndarray, cand_ids: np.ndarray, depth: int,
                    index: IndexKind, search: Search, indexes: list | None, env: DistEnv) -> tuple[np.ndarray, np.ndarray]:
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
            faiss_index = build_index(np.ascontiguousarray(cands[lo:lo + block]), env, index)
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
        lists = search_language(qb, local, local_ids, d, s.index, search, indexes, env)
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
