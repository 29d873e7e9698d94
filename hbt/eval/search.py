"""Sharded exact search: FAISS top-k per rank merged into the global top-k, and exact
ranks of relevant candidates (so mAP is exact at any pool size, not cut at k).

Every rank holds all query embeddings and its own shard of candidates. Ties are broken
by candidate id everywhere (a lower id ranks first), so 1, 2 or 3 ranks give identical
rankings.
"""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

from hbt.eval.encode import gather_objects

IndexKind = Literal["flat", "hnsw", "ivf"]


def build_index(vectors: np.ndarray, kind: IndexKind = "flat") -> faiss.Index:
    """Inner-product index over ``vectors``: exact (``flat``, on the GPU when faiss-gpu and
    a GPU are present), or approximate HNSW / IVF for very large pools."""
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
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(vectors)
    return index


def local_topk(index: faiss.Index | None, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, global ids) of each query's top-k in this rank's ``index`` (rows = ``ids``); -1 pads."""
    k_local = min(k, index.ntotal) if index is not None else 0
    if k_local == 0:
        return np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
    scores, rows = index.search(queries, k_local)
    return scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-k from per-shard top-k lists: by score, then by lower id."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def distributed_topk(queries: np.ndarray, candidates: np.ndarray, ids: np.ndarray, k: int,
                     kind: IndexKind = "flat") -> tuple[np.ndarray, np.ndarray]:
    """Search this rank's shard and merge every rank's lists: the same global top-k on every rank."""
    index = build_index(candidates, kind) if len(candidates) else None
    return merge_topk(gather_objects(local_topk(index, queries, ids, k)), k)


def count_above(scores: np.ndarray, cand_ids: np.ndarray, thresholds: np.ndarray, rel_ids: np.ndarray) -> np.ndarray:
    """For each (query i, relevant j): how many of these candidates rank above it, i.e.
    score > thresholds[i, j], or an equal score with a lower id. ``scores`` is
    (queries x candidates); ``thresholds``/``rel_ids`` are (queries x R), rel_ids -1 = none.
    The relevant candidate itself never counts: its score here and its threshold may come
    from differently blocked products and differ in the last bit."""
    other = cand_ids[None, None, :] != rel_ids[:, :, None]
    above = scores[:, None, :] > thresholds[:, :, None]
    tied = (scores[:, None, :] == thresholds[:, :, None]) & (cand_ids[None, None, :] < rel_ids[:, :, None])
    return np.where(rel_ids >= 0, ((above | tied) & other).sum(-1), 0)
