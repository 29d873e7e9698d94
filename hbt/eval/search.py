"""Sharded exact search: FAISS top-k per rank merged into the global top-k, and exact
ranks of relevant candidates (so mAP is exact at any pool size, not cut at k).

Every rank holds all query embeddings and its own shard of candidates. Ties are broken
by candidate id everywhere (a lower id ranks first), so 1, 2 or 3 ranks give identical
rankings.

Exact ranks are counted block by block (:class:`Block`): one block of queries against
one block of candidates, in float64, so the memory they take is fixed by the block
sizes, not by the pool (a million candidates per rank need no more than 4,096 do).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from hbt.dist import DistEnv, gather_objects
from hbt.eval.encode import shard_bounds

IndexKind = Literal["flat", "hnsw", "ivf"]


def build_index(vectors: np.ndarray, env: DistEnv, kind: IndexKind = "flat") -> faiss.Index:
    """Inner-product index over ``vectors``: exact (``flat``, on ``env``'s own GPU when
    faiss-gpu and a GPU are present), or approximate HNSW / IVF for very large pools."""
    dim = vectors.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        lists = max(1, min(4096, int(np.sqrt(len(vectors)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, lists // 8)
    else:
        index = faiss.IndexFlatIP(dim)
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            device = local_gpu(env)
            index = faiss.index_cpu_to_gpu(gpu_resources(device), device, index)
    index.add(vectors)
    return index


def local_gpu(env: DistEnv) -> int:
    """This rank's own GPU, so that ranks on one node do not all search on GPU 0: the
    current CUDA device (hbt.dist.init sets it from the local rank), else the local rank's."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.current_device()
    return env.local_rank % faiss.get_num_gpus()


@functools.cache
def gpu_resources(device: int):
    """One FAISS GPU resource object per device and process: it must outlive every index
    made with it (a collected one crashes the search), and each reserves scratch memory."""
    return faiss.StandardGpuResources()


GPU_MAX_K = 2048  # faiss-gpu selects at most this many neighbours per query (faiss issues #2103, #4008)


def local_topk(index: faiss.Index | None, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, global ids) of each query's top-k in this rank's ``index`` (rows = ``ids``); -1 pads.
    Deeper than faiss-gpu can select (mining's rare deepening for pairs still short of
    negatives), a GPU index is searched through a CPU copy."""
    k_local = min(k, index.ntotal) if index is not None else 0
    if k_local == 0:
        return np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
    if k_local > GPU_MAX_K and hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex):
        index = faiss.index_gpu_to_cpu(index)
    scores, rows = index.search(queries, k_local)
    return scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-k from per-shard top-k lists: by score, then by lower id."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def distributed_topk(queries: np.ndarray, candidates: np.ndarray, ids: np.ndarray, k: int, env: DistEnv,
                     kind: IndexKind = "flat") -> tuple[np.ndarray, np.ndarray]:
    """Search this rank's shard and merge every rank's lists: the same global top-k on every rank of ``env``."""
    index = build_index(candidates, env, kind) if len(candidates) else None
    return merge_topk(gather_objects(local_topk(index, queries, ids, k), env), k)


@dataclass(frozen=True)
class Block:
    """How many queries and candidates are scored at once for exact ranks. At the default
    a block's float64 scores take 64 MiB and its comparison masks 8 MiB each (about
    100 MiB in all with the two float64 blocks of embeddings; up to 64 MiB more while rows
    with exact ties are looked at again), whatever the pool size; a language pair up to
    this size is a single product, as it was before blocking."""

    queries: int = 2048
    candidates: int = 4096


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of ceil(n / size) near-equal pieces of range(n): no piece is larger
    than ``size`` and none is a tiny leftover (a small product is slow per score)."""
    pieces = -(-n // max(1, size))
    return [shard_bounds(n, i, pieces) for i in range(pieces)]


def relevant_scores(queries: np.ndarray, cands: np.ndarray, first_id: int, relevant: np.ndarray,
                    chunk: int = 16384) -> np.ndarray:
    """(queries x R): the float64 score of each query with each of its relevant candidates
    held here (global ids ``first_id`` onwards), 0 for the others, so that a sum over ranks
    fills every slot. These scores are the thresholds of :func:`count_above`."""
    out = np.zeros(relevant.shape)
    qi, ri = np.nonzero((relevant >= first_id) & (relevant < first_id + len(cands)))
    for lo in range(0, len(qi), chunk):  # chunks keep the gathered pairs small (2 x 48 MiB at 384-d)
        q, r = qi[lo:lo + chunk], ri[lo:lo + chunk]
        pairs = queries[q].astype(np.float64), cands[relevant[q, r] - first_id].astype(np.float64)
        out[q, r] = np.einsum("nd,nd->n", *pairs)
    return out


def exact_counts(queries: np.ndarray, query_lang: np.ndarray, cands: np.ndarray, cand_ids: np.ndarray,
                 relevant: np.ndarray, thresholds: np.ndarray, block: Block = Block()) -> np.ndarray:
    """(queries x R): for each relevant candidate of each query, how many of ``cands`` (one
    pool's candidates on this rank, global ids ``cand_ids``, ascending) rank above it, as
    :func:`count_above` defines it. Only one candidate block and one query block are in
    float64 at a time; a query block never mixes query languages, so a pool that fits one
    block is scored by the same single product per language pair as before blocking."""
    counts = np.zeros(relevant.shape, dtype=np.int64)
    groups = [np.flatnonzero(query_lang == x) for x in np.unique(query_lang)]
    # Every block's scores go to one buffer: a fresh 64 MiB array per block costs a
    # quarter of the product's time in page faults.
    buffer = np.empty(min(block.queries, max(map(len, groups), default=0)) * min(block.candidates, len(cands)))
    for c0, c1 in spans(len(cands), block.candidates):
        c64 = cands[c0:c1].astype(np.float64)
        for rows in groups:
            for q0, q1 in spans(len(rows), block.queries):
                r = rows[q0:q1]
                scores = np.matmul(queries[r].astype(np.float64), c64.T, out=buffer[:len(r) * len(c64)].reshape(len(r), len(c64)))
                counts[r] += count_above(scores, cand_ids[c0:c1], thresholds[r], relevant[r])
    return counts


def count_above(scores: np.ndarray, cand_ids: np.ndarray, thresholds: np.ndarray, rel_ids: np.ndarray) -> np.ndarray:
    """For each (query i, relevant j): how many of these candidates rank above it, i.e.
    score > thresholds[i, j], or an equal score with a lower id. ``scores`` is
    (queries x candidates) with ids ``cand_ids`` (ascending); ``thresholds``/``rel_ids`` are
    (queries x R), rel_ids -1 = none. The relevant candidate itself never counts: its score here
    and its threshold may come from differently blocked products and differ in the last bit.

    One relevant slot at a time, so the temporaries are (queries x candidates) masks, not R of them."""
    counts = np.zeros(rel_ids.shape, dtype=np.int64)
    for j in range(rel_ids.shape[1]):
        live = rel_ids[:, j] >= 0
        if live.any():
            counts[:, j] = np.where(live, _count_one(scores, cand_ids, thresholds[:, j], rel_ids[:, j]), 0)
    return counts


def _count_one(scores: np.ndarray, cand_ids: np.ndarray, threshold: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Per row, the candidates above one relevant candidate: the higher scores, less the
    relevant one itself, plus the exact ties with a lower id. Ties are rare, so only the
    rows that have one are looked at again."""
    t = threshold[:, None]
    above = np.count_nonzero(scores > t, axis=1)
    col = _column_of(cand_ids, rel)
    own = np.flatnonzero(col >= 0)
    above[own] -= scores[own, col[own]] > threshold[own]
    tied = np.flatnonzero(np.count_nonzero(scores == t, axis=1))
    if len(tied):
        lower = cand_ids[None, :] < rel[tied, None]  # the relevant candidate itself is not lower
        above[tied] += np.count_nonzero((scores[tied] == t[tied]) & lower, axis=1)
    return above


def _column_of(cand_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The column of each of ``ids`` in the ascending ``cand_ids``, -1 where it is not there."""
    pos = np.searchsorted(cand_ids, ids)
    there = pos < len(cand_ids)
    there[there] = cand_ids[pos[there]] == ids[there]
    return np.where(there, pos, -1)
