"""What the hard-negative rule costs the sampler: index build (the blocks) and one epoch's
plan (the mending swaps) with no negatives, 1 and 7 per pair, from 10^4 to 10^7
(item, language) pairs; fresh child processes, contenders alternating, medians over
--rounds, with peak RSS.

The index data is bench/sampler_scale.py's (4 languages, XQuAD-R-like shared answers).
The negatives are mined-like: each is, with probability 1/2, the passage of an item
close by in the same language (within 50 items, as an article's other answers are),
else a text no item has as a positive. Hashing the negatives' texts is not timed here:
it is the positives' hashing (docs/BENCHMARKS.md §9), once per k, cached beside the index.

    python bench/negatives_scale.py [--rounds 3] [--sizes 1e4,1e5,1e6,1e7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from benchlib import child, machine
from sampler_scale import LANGS, ROOT, index_arrays, peak_rss_mib

CONTENDERS = {"none": 0, "k=1": 1, "k=7": 7}


def mined_like(offsets: np.ndarray, langs: np.ndarray, passages: np.ndarray, k: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, ``k`` negative ids (CSR over the pairs): half a neighbour's passage in the
    pair's language where the neighbour has one, the rest fresh ids."""
    rng = np.random.default_rng(seed)
    n_pairs, n = len(langs), len(offsets) - 1
    item = np.repeat(np.arange(n), np.diff(offsets))
    pair_of = np.full((n, LANGS), -1, dtype=np.int64)
    pair_of[item, langs] = np.arange(n_pairs)
    other = np.clip(np.repeat(item, k) + rng.integers(-50, 51, n_pairs * k), 0, n - 1)
    at = pair_of[other, np.repeat(langs, k)]
    fresh = (1 << 40) + np.arange(n_pairs * k, dtype=np.int64)
    ids = np.where((rng.random(n_pairs * k) < 0.5) & (at >= 0) & (other != np.repeat(item, k)), passages[np.maximum(at, 0)], fresh)
    return np.arange(0, n_pairs * k + 1, k, dtype=np.int64), ids


def measure(pairs: int, k: int, batch: int) -> dict:
    """In this (child) process: build the index (with its blocks), plan epoch 0."""
    sys.path.insert(0, ROOT)
    from hbt.sampling import EpochPlanner, LanguageIndex, SamplerConfig

    offsets, langs, passages = index_arrays(pairs, 1.0)
    negatives = mined_like(offsets, langs, passages, k) if k else None
    names = [f"l{i}" for i in range(LANGS)]
    tick = time.perf_counter()
    index = LanguageIndex.from_arrays(names, offsets, langs, passages, negatives=negatives)
    build = time.perf_counter() - tick
    planner = EpochPlanner(index, SamplerConfig(batch_size=batch, alpha=0.5))
    tick = time.perf_counter()
    plan = planner.plan(0, np.empty(0, np.int64))
    elapsed = time.perf_counter() - tick
    conflicts = int(index.blocks.conflicts(plan.items, plan.plang).any(axis=1).sum()) if k else 0
    return {"pairs": int(offsets[-1]), "build_s": build, "plan_s": elapsed, "rss_mib": peak_rss_mib(),
            "blocks": int(len(index.blocks)), "batches": len(plan), "left_in_conflict": conflicts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="(item, language) pairs, comma-separated")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--measure", nargs=2, metavar=("PAIRS", "K"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.measure:
        print(json.dumps(measure(int(float(a.measure[0])), int(a.measure[1]), a.batch_size)))
        return
    print(machine())
    print(f"batch {a.batch_size}, alpha 0.5, {LANGS} languages, medians over {a.rounds} rounds (fresh process each run)\n")
    print("| pairs | negatives | index build s | plan s | plan vs none | peak RSS MiB | blocks | batches | batches left in conflict |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for pairs in (int(float(s)) for s in a.sizes.split(",")):
        runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
        for _ in range(a.rounds):
            for name, k in CONTENDERS.items():
                runs[name].append(child([sys.executable, os.path.abspath(__file__), "--measure", str(pairs), str(k),
                                         "--batch-size", str(a.batch_size)]))
        med = {name: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for name, rs in runs.items()}
        for name, m in med.items():
            print(f"| {m['pairs']:,.0f} | {name} | {m['build_s']:,.2f} | {m['plan_s']:,.2f} | "
                  f"{m['plan_s'] / med['none']['plan_s']:,.2f} | {m['rss_mib']:,.0f} | {m['blocks']:,.0f} | "
                  f"{m['batches']:,.0f} | {m['left_in_conflict']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
