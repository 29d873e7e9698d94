"""Training data at scale: from ``hbt train`` to the first optimizer step, and the peak
memory of every rank, on Parquet shard corpora of 10^4 to 10^7 (item, language) pairs,
at 1 and 2 ranks; beside the code before the data layer (``--old REV``: the built-in
synthetic corpus, the only way it could take that much data) where it can run.

Each run is a fresh ``torchrun ... -m hbt train`` of the tiny preset with a cold cache
(a new ``data.cache_dir``): datasets converts the shards, rank 0 builds the sampler's
index, every rank plans the epoch, the tiny tokenizer is trained on a sample and
DeepSpeed starts. ``first step`` is the wall time until metrics.jsonl has step 1;
``warm`` repeats the run on the filled cache (what a resume or a second run pays).
Peak memory is polled from /proc for each rank process (VmHWM: peak resident, counting
the pages of the memory-mapped Arrow files it touched, which the ranks share as page
cache; and the largest RssAnon seen: its own heap) and for their DataLoader workers.

The corpus is written by a vectorised generator (``--write``): 4 languages, 12-word
passages and 5-word queries from per-language vocabularies, titles of 1,000 items, and a
third of the items sharing their answer with the item before (the answer-group case).

    python bench/data_scale.py [--sizes 1e4,1e5,1e6,1e7] [--rounds 1] [--old 613c11b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from benchlib import machine

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("de", "en", "es", "fr")
SHARD = 1_000_000


def words(rng: np.random.Generator, lang: str, ids: np.ndarray) -> pa.Array:
    """Space-joined words ``ids`` (rows x words) of language ``lang``'s vocabulary."""
    vocab = pa.array([f"{lang}{w:05d}" for w in range(50_000)])
    columns = [vocab.take(pa.array(ids[:, k])) for k in range(ids.shape[1])]
    return pc.binary_join_element_wise(*columns, " ")


def write_corpus(folder: Path, pairs: int, seed: int = 0) -> None:
    """About ``pairs`` rows (every item in all 4 languages), in shards of 10^6 rows."""
    rng = np.random.default_rng(seed)
    items = max(1, pairs // len(LANGS))
    concepts = rng.integers(0, 50_000, size=(items, 12))
    share = rng.random(items) < 1 / 3
    share[0] = False
    src = np.where(share, np.arange(items) - 1, np.arange(items))
    for _ in range(64):  # chains of shared answers resolve to their first item
        nxt = src[src]
        if np.array_equal(nxt, src):
            break
        src = nxt
    concepts = concepts[src]
    queries = np.concatenate([concepts[:, :4], rng.integers(0, 50_000, size=(items, 1))], axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = max(1, SHARD // len(LANGS))
    for shard, lo in enumerate(range(0, items, per_shard)):
        hi = min(items, lo + per_shard)
        ids = pa.array([f"item{i:08d}" for i in range(lo, hi)])
        title = pa.array([f"title{i // 1000:06d}" for i in range(lo, hi)])
        tables = [pa.table({"id": ids, "lang": pa.array([lang] * (hi - lo)), "query": words(rng, lang, queries[lo:hi]),
                            "positive": words(rng, lang, concepts[lo:hi]), "title": title}) for lang in LANGS]
        pq.write_table(pa.concat_tables(tables), folder / f"part-{shard:05d}.parquet")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory(pid: int) -> dict[str, int]:
    """VmHWM (peak resident, incl. mapped file pages) and RssAnon of a process, in KiB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines if line.startswith(("VmHWM", "RssAnon")))}


def run_train(cwd: Path, data: str, ranks: int, cache: Path, run_dir: Path, timeout: float = 1800) -> dict:
    """Launch, poll memory until step 1 is logged, then stop the job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "hbt", "train",
           "--config", "configs/tiny.yaml", f"data.train={data}", f"data.cache_dir={cache}", f"run.dir={run_dir}",
           "data.holdout_titles=null", "train.max_steps=2", "train.checkpoint_every=1000", f"train.batch_size={64}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(cwd)}
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: never a resume
    tick = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, dict[str, int]] = {}
    metrics = run_dir / "metrics.jsonl"
    first = None
    workers: dict[int, dict[str, int]] = {}
    while proc.poll() is None:
        for rank in children(proc.pid):  # torchrun's children are the ranks, theirs the DataLoader workers
            for pid, table in [(rank, peaks)] + [(w, workers) for w in children(rank)]:
                s = memory(pid)
                if s:
                    old = table.get(pid, {})
                    table[pid] = {k: max(v, old.get(k, 0)) for k, v in s.items()}
        if first is None and metrics.exists() and metrics.read_text().strip():
            first = time.perf_counter() - tick
        if time.perf_counter() - tick > timeout:
            proc.kill()
            break
        time.sleep(0.25)
    err = proc.stderr.read()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    if first is None:
        first = time.perf_counter() - tick
    top = lambda table, key: max((p.get(key, 0) for p in table.values()), default=0) / 1024  # noqa: E731
    return {"first_step_s": first, "hwm_mib": top(peaks, "VmHWM"), "anon_mib": top(peaks, "RssAnon"),
            "worker_anon_mib": top(workers, "RssAnon")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--old", default=None, help="a revision before the data layer, run on synthetic:items=N")
    ap.add_argument("--old-max-pairs", type=float, default=1e5)
    ap.add_argument("--work", default=None, help="where corpora and caches go (default: a temporary directory)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="hbt-data-scale-"))
    old_tree = None
    if a.old:
        old_tree = work / "old-tree"
        if not old_tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(old_tree), a.old], check=True,
                           capture_output=True)
    print(machine())
    print("| pairs | code | ranks | first step, cold cache (s) | first step, warm (s) | peak RSS / rank (MiB) | peak anon / rank (MiB) | peak anon / worker (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in (int(float(s)) for s in a.sizes.split(",")):
        corpus = work / f"corpus-{size}"
        if not corpus.exists():
            tick = time.perf_counter()
            write_corpus(corpus, size)
            print(f"(wrote {size:,} pairs of Parquet in {time.perf_counter() - tick:.0f} s)", flush=True)
        runs = [("hbt", ROOT, str(corpus))]
        if old_tree is not None and size <= a.old_max_pairs:
            runs.append((f"old {a.old} (synthetic:items={size // 4})", old_tree, f"synthetic:items={size // 4},languages=4"))
        for name, cwd, data in runs:
            for ranks in (int(r) for r in a.ranks.split(",")):
                rows = []
                for r in range(a.rounds):
                    cache = work / f"cache-{size}-{ranks}-{r}"
                    shutil.rmtree(cache, ignore_errors=True)
                    cold = run_train(cwd, data, ranks, cache, work / f"run-{size}-{ranks}-{r}-cold")
                    warm = run_train(cwd, data, ranks, cache, work / f"run-{size}-{ranks}-{r}-warm")
                    rows.append((cold, warm))
                    shutil.rmtree(cache, ignore_errors=True)
                med = lambda key, i: float(np.median([row[i][key] for row in rows]))  # noqa: E731
                peak = lambda key: max(med(key, 0), med(key, 1))  # noqa: E731
                print(f"| {size:,} | {name} | {ranks} | {med('first_step_s', 0):.1f} | {med('first_step_s', 1):.1f} "
                      f"| {peak('hwm_mib'):,.0f} | {peak('anon_mib'):,.0f} | {peak('worker_anon_mib'):,.0f} |", flush=True)
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
