"""Evaluation speed: (1) the full XQuAD-R evaluation (11 mono + 110 cross + 11
multilingual pools) of a model on 1 and 2 CPU ranks, split into encode / index / search /
exact-rank / metrics time; (2) FAISS search alone over a synthetic pool of 1,000,000
384-d vectors, sharded over 2 ranks versus one process.

Runs alternate between the contenders; medians over --rounds, ratios against 1 process.

    python bench/eval_speed.py --model runs/tiny/model --data ../shared/data/xquad-r [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import numpy as np
from benchlib import alternate, machine, median_table


def full_eval(model: str, data: str, ranks: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m", "hbt",
               "eval", "--model", model, "--data", data, "--out", out]
        tick = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))})
        wall = time.perf_counter() - tick
        timings = json.load(open(os.path.join(out, "metrics.json")))["timings"]
    return {"wall_s": wall, **timings}


def _search_worker(rank: int, world: int, init: str, n: int, dim: int, queries: int, k: int, out: str) -> None:
    import faiss
    import torch.distributed as dist

    from hbt.dist import detect
    from hbt.eval.encode import shard_bounds
    from hbt.eval.search import distributed_topk

    faiss.omp_set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    a, b = shard_bounds(n, rank, world)
    vectors = np.random.default_rng([1, a]).standard_normal((b - a, dim), dtype=np.float32)
    q = np.random.default_rng(2).standard_normal((queries, dim), dtype=np.float32)
    if world > 1:
        dist.barrier()
    tick = time.perf_counter()
    distributed_topk(q, vectors, np.arange(a, b), k, detect({"RANK": str(rank), "WORLD_SIZE": str(world)}))
    elapsed = time.perf_counter() - tick
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"search_s": elapsed}, f)
    if world > 1:
        dist.destroy_process_group()


def sharded_search(world: int, n: int, dim: int, queries: int, k: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        if world == 1:
            _search_worker(0, 1, "", n, dim, queries, k, out)
        else:
            mp.spawn(_search_worker, args=(world, f"file://{tmp}/rdzv", n, dim, queries, k, out), nprocs=world, join=True)
        return json.load(open(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/tiny/model")
    parser.add_argument("--data", default="../shared/data/xquad-r")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    print(f"{machine()}\nmedians of {args.rounds} rounds, 1 and 2 ranks alternating")
    if not args.skip_full:
        full = alternate({f"{n} rank{'s' * (n > 1)}": partial(full_eval, args.model, args.data, n) for n in (1, 2)}, args.rounds)
        columns = {"wall_s": "wall", "encode_s": "encode", "rank_s": "exact ranks", "index_s": "index", "search_s": "search",
                   "metrics_s": "metrics"}
        print(f"\nFull evaluation of {args.model} on {args.data} (seconds)\n"
              + median_table(full, columns, ratios=["wall_s"], label="ranks", runs_of="wall_s"))
    search = alternate({f"{n} rank{'s' * (n > 1)}": partial(sharded_search, n, args.vectors, args.dim, args.queries, args.k)
                        for n in (1, 2)}, args.rounds)
    print(f"\nFAISS flat search, {args.vectors:,} x {args.dim}-d vectors, {args.queries} queries, top-{args.k} (seconds)\n"
          + median_table(search, {"search_s": "search"}, ratios=["search_s"], label="ranks", runs_of="search_s"))


if __name__ == "__main__":
    main()
