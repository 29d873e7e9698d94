"""Language bias in the multilingual pool (docs/metrics.md).

For a query whose answer exists in several languages, an unbiased model ranks those
relevant candidates close together, whatever their language. Given, per query, the
ranks of its relevant candidates and their languages:

* ``rank_spread``: max rank - min rank, averaged over queries;
* ``pairwise_rank_distance``: mean |rank_a - rank_b| over pairs, averaged over queries;
* ``own_language_first``: share of queries whose best-ranked relevant candidate is in
  the query's own language (1/L for an unbiased model over L languages, 1.0 for a fully
  query-language-biased one);
* ``map_std``: standard deviation over query languages of the multilingual mAP.

Queries with fewer than two relevant candidates carry no bias signal and are skipped for
the first three.
"""

from __future__ import annotations

import numpy as np


def language_bias(ranks: np.ndarray, langs: np.ndarray, query_langs: np.ndarray, map_by_lang: dict[str, float]) -> dict[str, float]:
    """``ranks``/``langs``: (queries x R) ranks (0 = empty slot) and candidate languages of
    each relevant candidate; ``query_langs``: the language of each query."""
    spreads, distances, own = [], [], []
    for r, l, q in zip(ranks, langs, query_langs):
        present = r > 0
        if present.sum() < 2:
            continue
        rr, ll = r[present].astype(np.float64), l[present]
        spreads.append(rr.max() - rr.min())
        distances.append(np.abs(rr[:, None] - rr[None, :])[np.triu_indices(len(rr), 1)].mean())
        own.append(float(ll[np.argmin(rr)] == q))
    values = list(map_by_lang.values())
    return {
        "queries": len(spreads),
        "rank_spread": float(np.mean(spreads)) if spreads else float("nan"),
        "pairwise_rank_distance": float(np.mean(distances)) if distances else float("nan"),
        "own_language_first": float(np.mean(own)) if own else float("nan"),
        "map_std": float(np.std(values)) if values else float("nan"),
    }
