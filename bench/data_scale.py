"""Training data at scale: from ``hbt train`` to the first optimizer step, and the peak
memory of every rank, on Parquet shard corpora of 10^4 to 10^7 (item, language) pairs,
at 1 and 2 ranks; beside the code before the data layer (``--old REV``: the built-in
synthetic corpus, the only way it could take that much data) where it can run.

Each run is a fresh ``torchrun ... -m hbt train`` of the tiny preset with a cold cache
(a new ``data.cache_dir``): datasets converts the shards, rank 0 builds the sampler's
index, every rank plans the epoch, the tiny tokenizer is trained on a sample and
DeepSpeed starts. ``first step`` is the wall time until metrics.jsonl has step 1;
``warm`` repeats the run on the filled cache (what a resume or a second run pays).
Peak memory is polled from /proc (VmHWM, and the largest RssAnon seen: anonymous memory,
without the page cache of the memory-mapped Arrow files, which the ranks share).

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


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant process."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo += [int(c) for c in children]
    return out


def status(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return {}
    fields = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines if line.startswith(("VmHWM", "RssAnon")))}
    return {**fields, "rank": int("torch.distributed.run" not in cmd and "-m hbt" in cmd and "from multiprocessing" not in cmd)}


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
    while proc.poll() is None:
        for pid in tree(proc.pid):
            s = status(pid)
            if s:
                old = peaks.get(pid, {})
                peaks[pid] = {k: max(v, old.get(k, 0)) for k, v in s.items()}
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
    ranks_ = [p for p in peaks.values() if p.get("rank")]
    return {"first_step_s": first, "hwm_mib": max(p.get("VmHWM", 0) for p in ranks_) / 1024,
            "anon_mib": max(p.get("RssAnon", 0) for p in ranks_) / 1024}


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
    print("| pairs | code | ranks | write s | first step, cold cache (s) | first step, warm (s) | peak RSS / rank (MiB) | peak anon / rank (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in (int(float(s)) for s in a.sizes.split(",")):
        corpus = work / f"corpus-{size}"
        tick = time.perf_counter()
        if not corpus.exists():
            write_corpus(corpus, size)
        written = time.perf_counter() - tick
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
                print(f"| {size:,} | {name} | {ranks} | {written:.1f} | {med('first_step_s', 0):.1f} | {med('first_step_s', 1):.1f} "
                      f"| {max(med('hwm_mib', 0), med('hwm_mib', 1)):,.0f} | {max(med('anon_mib', 0), med('anon_mib', 1)):,.0f} |",
                      flush=True)
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
