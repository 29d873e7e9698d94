"""Mining at scale: the search-and-choose step of ``hbt mine`` (hbt.mine.mine_embeddings:
FAISS flat top-(range end + k + 1 + 8) per query in its own language's pool, in blocks,
float64 rescoring, the merge across ranks, the choice of k negatives) on memory-mapped
random 384-d unit vectors: pools of 10^5 and 10^6 passages in 10 languages, a fixed
number of queries (the search time grows linearly with them: scale it to your corpus),
on 1 and 2 ranks (gloo, processes on this machine): wall time and peak resident memory
per rank. Each query is a noisy copy of its positive, one candidate of its language.
Separately (--encode N), the encode rate of an encoder on XQuAD-R sentences, to
extrapolate the end-to-end time of mining a real corpus.

Every measurement is a fresh process per rank; medians over --rounds (--rounds-large for
pools above 10^5). The chosen negatives must be identical on 1 and 2 ranks, or the script
stops.

    python bench/mine_scale.py [--pools 100000,1000000] [--queries 20000] [--rounds 3] [--rounds-large 1]
    python bench/mine_scale.py --encode 512 --pools ''   # the encode rate alone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from benchlib import alternate, child, machine, median_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval_scale import peak_rss, reset_peak_rss  # noqa: E402

CHUNK = 65536  # candidates are drawn in fixed chunks, so a shard is the same vectors on any rank count
LANGS = 10


def unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def candidate_rows(lo: int, hi: int, n: int, dim: int) -> np.ndarray:
    """Rows lo..hi of the pool, the same whatever the shard that asks."""
    out = np.empty((hi - lo, dim), dtype=np.float32)
    for start in range(lo // CHUNK * CHUNK, hi, CHUNK):
        block = unit(np.random.default_rng([1, start]), min(CHUNK, n - start), dim)
        s, e = max(start, lo), min(start + CHUNK, hi)
        out[s - lo:e - lo] = block[s - start:e - start]
    return out


def problem(n: int, queries: int, dim: int, rank: int, world: int, tmp: str):
    """The layout, every query (a memory map), and this rank's candidates (a memory map)
    with their global ids: a contiguous shard here (hbt mine's shards interleave; the
    search does not care)."""
    from hbt.eval.encode import shard_bounds
    from hbt.mine import MineLayout
    from hbt.relevance import CandidateLayout

    c_start = np.arange(LANGS + 1) * n // LANGS
    q_start = np.arange(LANGS + 1) * queries // LANGS
    rng = np.random.default_rng(2)
    positive = np.concatenate([rng.integers(c_start[i], c_start[i + 1], q_start[i + 1] - q_start[i]) for i in range(LANGS)])
    q = np.empty((queries, dim), dtype=np.float32)
    for start in np.unique(positive // CHUNK * CHUNK):  # each chunk of the pool drawn once
        rows = np.flatnonzero(positive // CHUNK * CHUNK == start)
        q[rows] = candidate_rows(start, min(start + CHUNK, n), n, dim)[positive[rows] - start]
    q += 0.08 * unit(rng, queries, dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.save(f"{tmp}/q.{rank}.npy", q)
    a, b = shard_bounds(n, rank, world)
    cands = np.lib.format.open_memmap(f"{tmp}/c.{rank}.npy", mode="w+", dtype=np.float32, shape=(b - a, dim))
    for lo in range(a, b, CHUNK):
        cands[lo - a:min(lo + CHUNK, b) - a] = candidate_rows(lo, min(lo + CHUNK, b), n, dim)
    cands.flush()
    del cands, q
    pools = CandidateLayout(langs=[f"l{i}" for i in range(LANGS)], start=c_start,
                            lang=np.repeat(np.arange(LANGS), np.diff(c_start)), texts=[], ids=[], relevant=positive[:, None])
    layout = MineLayout(pairs=[], query_texts=[], q_start=q_start, excluded=positive[:, None], positive=positive,
                        candidates=pools)
    return (np.load(f"{tmp}/q.{rank}.npy", mmap_mode="r"), np.load(f"{tmp}/c.{rank}.npy", mmap_mode="r"),
            np.arange(a, b), layout)


def _worker(rank: int, world: int, init: str, n: int, queries: int, dim: int, k: int, tmp: str) -> None:
    import faiss
    import torch.distributed as dist

    from hbt.dist import detect
    from hbt.mine import MineSettings, mine_embeddings

    faiss.omp_set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    q, cands, ids, layout = problem(n, queries, dim, rank, world, tmp)
    chosen = hashlib.sha1()

    def writer(query, neg_ids, neg_scores, neg_ranks, pos_score):
        chosen.update(np.asarray(neg_ids, dtype=np.int64).tobytes())

    if world > 1:
        dist.barrier()
    before = reset_peak_rss()
    tick = time.perf_counter()
    result = mine_embeddings(q, cands, ids, layout, MineSettings(k=k), detect({"RANK": str(rank), "WORLD_SIZE": str(world)}),
                             writer=writer if rank == 0 else None)
    wall = time.perf_counter() - tick
    out = {"wall_s": wall, "search_s": result["timings"]["search_s"], "choose_s": result["timings"]["choose_write_s"],
           "rss_before_mib": before, "peak_mib": peak_rss(), "step_mib": peak_rss() - before,
           "chosen": chosen.hexdigest(), "counts": result["counts"]}
    with open(f"{tmp}/out.{rank}", "w") as f:
        json.dump(out, f)
    if world > 1:
        dist.destroy_process_group()


def measure(n: int, world: int, queries: int, dim: int, k: int) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(dir=os.environ.get("HBT_BENCH_TMP")) as tmp:
        args = (world, f"file://{tmp}/rdzv", n, queries, dim, k, tmp)
        if world == 1:
            _worker(0, *args)
        else:
            mp.spawn(_worker, args=args, nprocs=world, join=True)
        ranks = [json.load(open(f"{tmp}/out.{r}")) for r in range(world)]
    result = dict(ranks[0])
    for key in ("rss_before_mib", "peak_mib", "step_mib"):
        result[key] = max(r[key] for r in ranks)
    print(json.dumps(result))


def run(n: int, world: int, queries: int, dim: int, k: int) -> dict:
    threads = str(max(1, (os.cpu_count() or 1) // world))
    cmd = [sys.executable, __file__, "--measure", str(n), str(world), "--queries", str(queries), "--dim", str(dim), "--k", str(k)]
    return child(cmd, env={"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})


def encode_rate(model: str, data: str, texts: int, batch_size: int) -> None:
    """Passages per second of ``model`` on the first ``texts`` XQuAD-R sentences (en, de, ru, zh mixed)."""
    from hbt.data import load_corpus
    from hbt.dist import detect
    from hbt.eval.encode import encode
    from hbt.eval.standalone import load_encoder

    rs = load_corpus(data).retrieval
    langs = ["en", "de", "ru", "zh"]
    pool = [c.text for i in range(texts) for c in [rs.candidates[langs[i % 4]][i // 4]]]
    bi, tok = load_encoder(model, "mean", detect({}))
    encode(bi, tok, ["passage: " + t for t in pool[:batch_size]], 128, batch_size)  # warm-up
    tick = time.perf_counter()
    encode(bi, tok, ["passage: " + t for t in pool], 128, batch_size)
    wall = time.perf_counter() - tick
    print(json.dumps({"texts": texts, "wall_s": wall, "per_s": texts / wall}))


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rounds-large", type=int, default=1)
    parser.add_argument("--encode", type=int, default=0, help="also measure the encode rate on this many sentences")
    parser.add_argument("--model", default=str(root.parent / "shared" / "models" / "me5-small-xquad"))
    parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "xquad-r"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--measure", nargs=2, metavar=("POOL", "RANKS"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-encode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(int(args.measure[0]), int(args.measure[1]), args.queries, args.dim, args.k)
        return
    if args.measure_encode:
        encode_rate(args.model, args.data, args.encode, args.batch_size)
        return
    print(f"{machine()}\n{args.queries:,} queries, {args.dim}-d, {LANGS} languages, range 10-100, k={args.k}; "
          "1 and 2 ranks (gloo), contenders alternating")
    columns = {"wall_s": "wall s", "search_s": "search s", "choose_s": "choose s",
               "peak_mib": "peak RSS/rank MiB", "step_mib": "step adds MiB"}
    for n in (int(p) for p in args.pools.split(",") if p):
        contenders = {f"{w} rank{'s' * (w > 1)}": partial(run, n, w, args.queries, args.dim, args.k) for w in (1, 2)}
        rounds = args.rounds if n <= 100_000 else args.rounds_large
        results = alternate(contenders, rounds)
        if len({r["chosen"] for runs in results.values() for r in runs}) != 1:
            sys.exit(f"pool {n:,}: the chosen negatives differ between runs")
        counts = results["1 rank"][0]["counts"]
        print(f"\nPool of {n:,} passages, median of {rounds} round{'s' * (rounds > 1)}; chosen negatives identical on "
              f"1 and 2 ranks; {counts['false_negatives_skipped']:,} positives skipped inside the range\n"
              + median_table(results, columns, ratios=["wall_s"], label="ranks", runs_of="wall_s", digits=1), flush=True)
    if args.encode:
        threads = str(os.cpu_count() or 1)
        rate = child([sys.executable, __file__, "--measure-encode", "--encode", str(args.encode), "--model", args.model,
                      "--data", args.data, "--batch-size", str(args.batch_size)],
                     env={"OMP_NUM_THREADS": threads})
        print(f"\nencode rate of {Path(args.model).name}: {rate['per_s']:.1f} passages/s "
              f"({rate['texts']} XQuAD-R sentences, batch {args.batch_size}, {rate['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
