"""Evaluation at scale: the ranking and search step of an evaluation
(hbt.eval.run.search_and_rank: exact ranks of every relevant candidate, computed in
blocks, plus the FAISS flat top-k) for 10,000 queries against pools of 10^4, 10^5 and
10^6 random 384-d unit vectors in 4 languages, on 1 and 2 ranks (gloo, processes on this
machine): wall time and peak resident memory per rank. Beside it, the code before
blocking (float64 copies of every embedding, a dense score matrix per language pair and a
queries x R x candidates comparison) at the pool sizes where it fits.

Every measurement is a fresh process (per rank), contenders alternate within a round,
medians over --rounds (--rounds-large for pools above --unblocked-up-to, where only the
blocked code runs). The exact counts of every contender must agree, and so must the merged
top-k ids of contenders on the same number of ranks, or the script stops. (FAISS's float32
scores round differently on 1 and 2 threads, which can swap two near-tied neighbours.)

    python bench/eval_scale.py [--pools 10000,100000,1000000] [--rounds 3] [--rounds-large 1]
    python bench/eval_scale.py --variants ranks-only --rounds 1   # exact ranks alone: their memory
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from functools import partial

import numpy as np
from benchlib import alternate, child, machine, median_table

CHUNK = 65536  # candidates are drawn in fixed chunks, so a shard is the same vectors on any rank count


def problem(n: int, queries: int, dim: int, langs: int, width: int, rank: int, world: int):
    """This rank's share of a synthetic evaluation: every query, this rank's candidates,
    the language numbers (queries and candidates in language order) and each query's
    relevant candidates (one in each of 1 to ``width`` random languages, -1 pads)."""
    from hbt.eval.encode import shard_bounds

    a, b = shard_bounds(n, rank, world)
    cands = np.empty((b - a, dim), dtype=np.float32)
    for lo in range(a // CHUNK * CHUNK, b, CHUNK):
        block = np.random.default_rng([1, lo]).standard_normal((min(CHUNK, n - lo), dim), dtype=np.float32)
        s, e = max(lo, a), min(lo + CHUNK, b)
        cands[s - a:e - a] = block[s - lo:e - lo]
    cands /= np.linalg.norm(cands, axis=1, keepdims=True)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    query_lang = np.arange(queries) * langs // queries
    cand_lang = np.arange(n) * langs // n
    starts = np.searchsorted(cand_lang, np.arange(langs + 1))
    relevant = np.full((queries, width), -1, dtype=np.int64)
    for i in range(queries):
        chosen = np.sort(rng.choice(langs, size=rng.integers(1, width + 1), replace=False))
        relevant[i, :len(chosen)] = [rng.integers(starts[y], starts[y + 1]) for y in chosen]
    return q, cands, a, query_lang, cand_lang, relevant


def old_count_above(scores, cand_ids, thresholds, rel_ids):
    """count_above before blocking (commit 310a087): a (queries x R x candidates) broadcast."""
    other = cand_ids[None, None, :] != rel_ids[:, :, None]
    above = scores[:, None, :] > thresholds[:, :, None]
    tied = (scores[:, None, :] == thresholds[:, :, None]) & (cand_ids[None, None, :] < rel_ids[:, :, None])
    return np.where(rel_ids >= 0, ((above | tied) & other).sum(-1), 0)


def unblocked_search_and_rank(q_emb, c_emb, ca, query_lang, cand_lang, relevant, env, k=100):
    """The ranking and search of evaluate() before blocking (commit 310a087), with the
    layout's arrays passed in: float64 copies of all embeddings, one dense score matrix
    per (query language, pool language)."""
    from hbt.dist import gather_objects
    from hbt.eval.search import build_index, local_topk

    cb = ca + len(c_emb)
    c_ids = np.arange(ca, cb)
    c_lang = cand_lang[ca:cb]
    n_clang, n_qlang = int(cand_lang.max()) + 1, int(query_lang.max()) + 1
    owned = (relevant >= ca) & (relevant < cb)
    q64, c64 = q_emb.astype(np.float64), c_emb.astype(np.float64)
    thresholds = np.zeros(relevant.shape)
    qi, ri = np.nonzero(owned)
    for lo in range(0, len(qi), 65536):
        q, r = qi[lo:lo + 65536], ri[lo:lo + 65536]
        thresholds[q, r] = np.einsum("nd,nd->n", q64[q], c64[relevant[q, r] - ca])
    thresholds = np.sum(gather_objects(thresholds, env), axis=0)
    counts = np.zeros(relevant.shape + (n_clang,), dtype=np.int64)
    topk_parts = {}
    tick = time.perf_counter()
    search_s = index_s = 0.0
    for y in range(n_clang):
        cols = np.flatnonzero(c_lang == y)
        t0 = time.perf_counter()
        faiss_index = build_index(c_emb[cols], env) if len(cols) else None
        index_s += time.perf_counter() - t0
        for x in range(n_qlang):
            rows = np.flatnonzero(query_lang == x)
            counts[rows, :, y] = old_count_above(q64[rows] @ c64[cols].T, c_ids[cols], thresholds[rows], relevant[rows])
            t0 = time.perf_counter()
            topk_parts[x, y] = local_topk(faiss_index, q_emb[rows], c_ids[cols], k)
            search_s += time.perf_counter() - t0
    counts = np.sum(gather_objects(counts, env), axis=0)
    gathered = gather_objects(topk_parts, env)
    return counts, gathered, {"rank_s": time.perf_counter() - tick - search_s - index_s, "index_s": index_s,
                              "search_s": search_s}


def reset_peak_rss() -> float:
    """Restart the kernel's peak-RSS counter at the current RSS (Linux), so the peak read
    afterwards is the step's own; returns the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak also covers the set-up before the step
    return _status_mib("VmRSS")


def peak_rss() -> float:
    """Peak resident memory of this process in MiB (since the last reset)."""
    try:
        return _status_mib("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 1024


def _worker(rank: int, world: int, init: str, variant: str, n: int, queries: int, dim: int, k: int, out: str) -> None:
    import faiss
    import torch.distributed as dist

    from hbt.dist import detect
    from hbt.eval.run import search_and_rank
    from hbt.eval.search import merge_topk

    faiss.omp_set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    q, cands, first, query_lang, cand_lang, relevant = problem(n, queries, dim, 4, 4, rank, world)
    step = {"blocked": search_and_rank, "unblocked": unblocked_search_and_rank,
            "ranks-only": partial(search_and_rank, k=0)}[variant]  # ranks-only: exact ranks, no FAISS
    if world > 1:
        dist.barrier()
    before = reset_peak_rss()
    tick = time.perf_counter()
    env = detect({"RANK": str(rank), "WORLD_SIZE": str(world)})
    counts, gathered, timings = step(q, cands, first, query_lang, cand_lang, relevant, env) if variant == "ranks-only" \
        else step(q, cands, first, query_lang, cand_lang, relevant, env, k=k)
    wall = time.perf_counter() - tick
    peak = peak_rss()
    langs = sorted({x for part in gathered for x, _ in part})
    top = [merge_topk([part[x, y] for part in gathered for (px, y) in sorted(part) if px == x], k)[1] for x in langs]
    top = np.concatenate(top, axis=None) if top else np.zeros(0, dtype=np.int64)
    result = {"wall_s": wall, "rank_s": timings["rank_s"], "search_s": timings["index_s"] + timings["search_s"],
              "rss_before_mib": before, "peak_mib": peak, "step_mib": peak - before,
              "counts": hashlib.sha1(counts.tobytes()).hexdigest(),
              "topk": hashlib.sha1(top.tobytes()).hexdigest() if variant != "ranks-only" else None}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.destroy_process_group()


def measure(variant: str, n: int, world: int, queries: int, dim: int, k: int) -> None:
    """One measurement, in this fresh process (1 rank) or in ``world`` spawned ranks;
    prints the result: times from rank 0, memory the largest of any rank."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        args = (world, f"file://{tmp}/rdzv", variant, n, queries, dim, k, out)
        if world == 1:
            _worker(0, *args)
        else:
            mp.spawn(_worker, args=args, nprocs=world, join=True)
        ranks = [json.load(open(f"{out}.{r}")) for r in range(world)]
    result = dict(ranks[0])
    for key in ("rss_before_mib", "peak_mib", "step_mib"):
        result[key] = max(r[key] for r in ranks)
    print(json.dumps(result))


def run(variant: str, n: int, world: int, queries: int, dim: int, k: int) -> dict:
    threads = str(max(1, (os.cpu_count() or 1) // world))
    cmd = [sys.executable, __file__, "--measure", variant, str(n), str(world), "--queries", str(queries),
           "--dim", str(dim), "--k", str(k)]
    return child(cmd, env={"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rounds-large", type=int, default=1)
    parser.add_argument("--unblocked-up-to", type=int, default=100_000, help="largest pool the old code runs on")
    parser.add_argument("--variants", default="unblocked,blocked",
                        help="unblocked (before blocking), blocked (search_and_rank), ranks-only (its exact ranks alone, k=0)")
    parser.add_argument("--measure", nargs=3, metavar=("VARIANT", "POOL", "RANKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        variant, n, world = args.measure
        measure(variant, int(n), int(world), args.queries, args.dim, args.k)
        return
    print(f"{machine()}\n{args.queries:,} queries, {args.dim}-d, 4 languages, up to 4 relevant each, top-{args.k}; "
          "1 and 2 ranks (gloo), contenders alternating")
    columns = {"wall_s": "wall s", "rank_s": "exact ranks s", "search_s": "index + search s",
               "peak_mib": "peak RSS/rank MiB", "step_mib": "step adds MiB"}
    for n in (int(p) for p in args.pools.split(",")):
        variants = [v for v in args.variants.split(",") if v != "unblocked" or n <= args.unblocked_up_to]
        contenders = {f"{v}, {w} rank{'s' * (w > 1)}": partial(run, v, n, w, args.queries, args.dim, args.k)
                      for w in (1, 2) for v in variants}
        rounds = args.rounds if n <= args.unblocked_up_to else args.rounds_large
        results = alternate(contenders, rounds)
        if len({r["counts"] for runs in results.values() for r in runs}) != 1:
            sys.exit(f"pool {n:,}: the exact counts differ between contenders")
        topk = {w: {r["topk"] for name, runs in results.items() if name.endswith(f"{w} rank{'s' * (w > 1)}")
                    for r in runs if r["topk"]} for w in (1, 2)}
        if any(len(digests) > 1 for digests in topk.values()):
            sys.exit(f"pool {n:,}: the top-k ids differ between contenders on the same number of ranks")
        same = "" if not any(topk.values()) else "; merged top-k ids identical at equal rank counts" + (
            " and across them" if topk[1] == topk[2] else " (not between 1 and 2 ranks)")
        print(f"\nPool of {n:,} candidates, median of {rounds} round{'s' * (rounds > 1)}; exact counts identical "
              f"across contenders{same}\n"
              + median_table(results, columns, ratios=["wall_s", "peak_mib"], label="code, ranks", runs_of="wall_s",
                             digits=1), flush=True)


if __name__ == "__main__":
    main()
