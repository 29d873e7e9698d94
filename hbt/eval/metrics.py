"""Retrieval metrics from the exact ranks of each query's relevant candidates.

With binary relevance every metric hbt reports is a function of those ranks alone:

* AP (the LAReQA mAP's per-query term) = mean over the R relevant of i / rank_i, ranks sorted;
* Recall@k = share of the R relevant ranked <= k;
* MRR@10 = 1 / the best rank when it is <= 10, else 0;
* nDCG@10 = sum over relevant ranked <= 10 of 1/log2(rank + 1), divided by the ideal
  sum over the first min(R, 10) positions.

Queries with no relevant candidate in the pool are left out (and counted).
tests/unit/test_eval.py checks each against ir-measures on the same rankings.
"""

from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10, 100)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """``ranks``: (queries x R) 1-based ranks of relevant candidates, 0 where a slot is empty."""
    has = ranks > 0
    n_rel = has.sum(1)
    keep = n_rel > 0
    ranks, has, n_rel = ranks[keep], has[keep], n_rel[keep]
    if not len(ranks):
        return {"queries": 0}
    big = np.iinfo(np.int64).max
    sorted_ranks = np.sort(np.where(has, ranks, big), axis=1)
    position = np.arange(1, ranks.shape[1] + 1)[None, :]
    valid = sorted_ranks < big
    ap = np.where(valid, position / np.where(valid, sorted_ranks, 1), 0).sum(1) / n_rel
    best = sorted_ranks[:, 0]
    gains = np.where(valid & (sorted_ranks <= 10), 1 / np.log2(np.where(valid, sorted_ranks, 1) + 1), 0).sum(1)
    ideal = np.array([(1 / np.log2(np.arange(2, min(r, 10) + 2))).sum() for r in n_rel])
    out = {
        "queries": int(len(ranks)),
        "map": float(ap.mean()),
        "mrr@10": float(np.where(best <= 10, 1 / best, 0).mean()),
        "ndcg@10": float((gains / ideal).mean()),
    }
    for k in RECALL_AT:
        out[f"recall@{k}"] = float(((valid & (sorted_ranks <= k)).sum(1) / n_rel).mean())
    return out
