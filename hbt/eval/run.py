"""One evaluation: every rank encodes its share, then monolingual (X -> X), cross-lingual
(X -> Y) and multilingual (X -> pool of all languages) retrieval, metrics and bias.

Candidates get global ids in language order; rank r keeps the contiguous shard
``shard_bounds``. Query embeddings are gathered to every rank; candidate embeddings never
leave their rank: each rank contributes FAISS top-k lists and, for every relevant
candidate, the count of its own candidates that score above it (exact ranks, summed).
:func:`search_and_rank` is that part alone, from embeddings, for benchmarks at any scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from hbt.data.corpus import RetrievalSet
from hbt.data.tokenize import TextSpec
from hbt.errors import InputError
from hbt.eval.bias import language_bias
from hbt.eval.debias import PREFIX, Centering, center, language_means, training_means
from hbt.dist import DistEnv, gather_objects
from hbt.eval.encode import encode, shard_bounds
from hbt.eval.metrics import metrics_from_ranks
from hbt.eval.search import Block, IndexKind, build_index, exact_counts, local_topk, merge_topk, relevant_scores
from hbt.relevance import CandidateLayout

SETTINGS = ("mono", "cross", "multi")


@dataclass
class EvalLayout:
    """What one evaluation encodes and ranks: the queries in language order (their texts,
    ids and languages) and the candidates, numbered with each query's relevant ones by
    :class:`hbt.relevance.CandidateLayout` (the one layout mining uses too)."""

    query_langs: list[str]
    query_lang: np.ndarray  # per query, the index of its language in query_langs
    query_texts: list[str]
    query_ids: list[str]
    candidates: CandidateLayout  # its ``relevant`` has one row per query, in this order

    @classmethod
    def of(cls, rs: RetrievalSet) -> "EvalLayout":
        for kind, table in (("queries", rs.queries), ("candidates", rs.candidates)):
            for lang, rows in table.items():
                if not rows:
                    raise InputError(f"language '{lang}'", f"has no {kind}")
        if not rs.queries or not rs.candidates:
            raise InputError("evaluation data", "needs queries and candidates")
        qlangs = sorted(rs.queries)
        queries = [(qi, q) for qi, lang in enumerate(qlangs) for q in rs.queries[lang]]
        return cls(qlangs, np.array([qi for qi, _ in queries]), [q.text for _, q in queries], [q.id for _, q in queries],
                   CandidateLayout.of(rs.candidates, [q.item_id for _, q in queries]))


def evaluate(model, tokenizer, rs: RetrievalSet, spec: TextSpec, env: DistEnv, settings: tuple[str, ...] = SETTINGS,
             k: int = 100, index: IndexKind = "flat", batch_size: int = 128, progress: bool = True,
             block: Block = Block(), centering: Centering | None = None) -> dict:
    """Metrics per setting and language (pair), their means, language bias, timings, and
    the multilingual top-k lists (for run files), on every rank of ``env`` (each encodes
    its share). ``block`` bounds the memory of exact ranks
    (:class:`hbt.eval.search.Block`); it changes no result. With ``centering``
    (:mod:`hbt.eval.debias`) the same metrics of the centred embeddings follow under
    ``centered`` and, prefixed ``centered_``, in the summary; the plain ones are unchanged."""
    rank, size = env.rank, env.world_size
    layout = EvalLayout.of(rs)
    cands = layout.candidates
    show = progress and rank == 0
    timings: dict[str, float] = {}

    def encode_side(texts: list[str], side: str, desc: str) -> np.ndarray:
        prefix, length = ((spec.query_prefix, spec.max_query_length) if side == "query" else
                          (spec.passage_prefix, spec.max_passage_length))
        return encode(model, tokenizer, [prefix + t for t in texts], length, batch_size, desc if show else None)

    tick = time.perf_counter()
    qa, qb = shard_bounds(len(layout.query_texts), rank, size)
    ca, cb = shard_bounds(len(cands.texts), rank, size)
    q_local = encode_side(layout.query_texts[qa:qb], "query", "encode queries")
    c_emb = encode_side(cands.texts[ca:cb], "passage", "encode candidates")
    q_emb = np.concatenate(gather_objects(q_local, env))
    timings["encode_s"] = time.perf_counter() - tick
    if q_emb.shape[1] != c_emb.shape[1]:
        raise InputError("model", f"query embeddings have {q_emb.shape[1]} dimensions, candidates {c_emb.shape[1]}")

    # Only the multilingual setting writes top-k lists (multi.run); the others need no index.
    counts, gathered, search_timings = search_and_rank(
        q_emb, c_emb, ca, layout.query_lang, cands.lang, cands.relevant, env,
        k=k if "multi" in settings else 0, index=index, block=block, show=show)
    timings.update(search_timings)

    tick = time.perf_counter()
    results: dict = {"settings": list(settings), "k": k, **metrics_of(layout, counts, settings)}
    if "multi" in settings:
        n_clang = len(cands.langs)
        top = {x: merge_topk([part[x, y] for part in gathered for y in range(n_clang)], k) for x in range(len(layout.query_langs))}
        results["topk"] = {"query_ids": layout.query_ids, "cand_ids": cands.ids, "lists": top}
    results["summary"] = summarize(results)
    timings["metrics_s"] = time.perf_counter() - tick

    if centering is not None:
        tick = time.perf_counter()
        c_lang = cands.lang[ca:cb]
        if centering.training is None:
            q_means, _ = language_means(q_local, layout.query_lang[qa:qb], len(layout.query_langs), env)
            c_means, _ = language_means(c_emb, c_lang, len(cands.langs), env)
        else:
            q_means, c_means = training_means(centering.training, layout.query_langs, cands.langs,
                                              lambda texts, side: encode_side(texts, side, f"encode training {side}s"), env)
        centred_counts, _, _ = search_and_rank(  # no top-k lists: multi.run is the plain embeddings'
            center(q_emb, layout.query_lang, q_means), center(c_emb, c_lang, c_means), ca, layout.query_lang,
            cands.lang, cands.relevant, env, k=0, block=block, show=show)
        centred = metrics_of(layout, centred_counts, settings)
        results["centered"] = {**centering.describe(), **centred}
        results["summary"].update({PREFIX + key: value for key, value in summarize(centred).items()})
        timings["debias_s"] = time.perf_counter() - tick
    results["timings"] = timings
    return results


def metrics_of(layout: EvalLayout, counts: np.ndarray, settings: tuple[str, ...]) -> dict:
    """Every setting's metrics per language (pair) and the multilingual pool's language
    bias, from :func:`search_and_rank`'s counts."""
    cands = layout.candidates
    rel_lang = np.where(cands.relevant >= 0, cands.lang[np.maximum(cands.relevant, 0)], -1)
    results: dict = {}
    qnames, cnames = layout.query_langs, cands.langs
    if "mono" in settings or "cross" in settings:
        for x, xname in enumerate(qnames):
            rows = layout.query_lang == x
            for y, yname in enumerate(cnames):
                setting = "mono" if xname == yname else "cross"
                if setting not in settings:
                    continue
                in_y = rows[:, None] & (rel_lang == y)
                ranks = np.where(in_y, counts[:, :, y] + 1, 0)[rows]
                key = xname if setting == "mono" else f"{xname}-{yname}"
                results.setdefault(setting, {})[key] = metrics_from_ranks(ranks)
    if "multi" in settings:
        multi_ranks = np.where(cands.relevant >= 0, counts.sum(-1) + 1, 0)
        results["multi"] = {x: metrics_from_ranks(multi_ranks[layout.query_lang == i]) for i, x in enumerate(qnames)}
        by_lang = {x: m["map"] for x, m in results["multi"].items() if m.get("queries")}
        query_lang_codes = np.array([cnames.index(qnames[i]) if qnames[i] in cnames else -1 for i in layout.query_lang])
        results["bias"] = language_bias(multi_ranks, rel_lang, query_lang_codes, by_lang)
    return results


def search_and_rank(queries: np.ndarray, cands: np.ndarray, first_id: int, query_lang: np.ndarray,
                    cand_lang: np.ndarray, relevant: np.ndarray, env: DistEnv, k: int = 100, index: IndexKind = "flat",
                    block: Block = Block(), show: bool = False) -> tuple[np.ndarray, list[dict], dict[str, float]]:
    """This rank's part of an evaluation from embeddings alone (no model, no texts), so a
    benchmark can run it on any pool: the exact counts of candidates above every relevant
    candidate, and the FAISS top-k lists of every (query language, pool language) pair.

    ``queries``: every query's embedding (L2-normalised float32, in query order);
    ``cands``: this rank's candidates, whose global ids start at ``first_id``;
    ``query_lang`` (queries) and ``cand_lang`` (all candidates, not only this rank's):
    language numbers, candidates in language order; ``relevant``: (queries x R) global
    candidate ids, -1 pads. Returns the counts (queries x R x pool languages) summed over
    ranks, every rank's top-k lists ({(x, y): (scores, ids)}, none when ``k`` is 0) and timings.
    """
    n_clang = int(cand_lang.max()) + 1 if len(cand_lang) else 0
    ids = np.arange(first_id, first_id + len(cands))
    local_lang = cand_lang[first_id:first_id + len(cands)]
    pools = [_rows(local_lang == y) for y in range(n_clang)]  # this rank's candidates of each language

    tick = time.perf_counter()
    thresholds = np.sum(gather_objects(relevant_scores(queries, cands, first_id, relevant), env), axis=0)
    counts = np.zeros(relevant.shape + (n_clang,), dtype=np.int64)  # candidates above, per pool language
    for y, pool in enumerate(tqdm(pools, desc="exact ranks", disable=not show, leave=False)):
        counts[:, :, y] = exact_counts(queries, query_lang, cands[pool], ids[pool], relevant, thresholds, block)
    counts = np.sum(gather_objects(counts, env), axis=0)
    timings = {"rank_s": time.perf_counter() - tick, "index_s": 0.0, "search_s": 0.0}

    topk_parts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    query_rows = [np.flatnonzero(query_lang == x) for x in range(int(query_lang.max()) + 1 if len(query_lang) else 0)]
    for y, pool in enumerate(tqdm(pools if k > 0 else [], desc="search", disable=not show, leave=False)):
        t0 = time.perf_counter()
        faiss_index = build_index(cands[pool], env, index) if len(ids[pool]) else None
        timings["index_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for x, rows in enumerate(query_rows):
            topk_parts[x, y] = local_topk(faiss_index, queries[rows], ids[pool], k)
        del faiss_index  # before the next language's is built: one copy of a shard at a time
        timings["search_s"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    gathered = gather_objects(topk_parts, env) if k > 0 else []
    timings["search_s"] += time.perf_counter() - t0
    return counts, gathered, timings


def _rows(mask: np.ndarray) -> slice | np.ndarray:
    """Where ``mask`` holds, as a slice when that is one run (a language's candidates on a
    rank always are, so indexing by it copies no embeddings), else as indices."""
    where = np.flatnonzero(mask)
    if len(where) and where[-1] - where[0] + 1 == len(where):
        return slice(int(where[0]), int(where[-1]) + 1)
    return where


def summarize(results: dict) -> dict[str, float]:
    """The headline numbers: mean mono, mean cross and mean multilingual mAP, and bias."""
    out = {}
    for setting in SETTINGS:
        maps = [m["map"] for m in results.get(setting, {}).values() if m.get("queries")]
        if maps:
            out[f"{setting}_map"] = float(np.mean(maps))
    for key in ("rank_spread", "own_language_first", "map_std"):
        if key in results.get("bias", {}):
            out[key] = results["bias"][key]
    return out
