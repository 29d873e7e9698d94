"""Sampler scale: time to plan one epoch, and the peak RSS of the process, from 10^4 to
10^7 (item, language) pairs, the array planner (``hbt.sampling.EpochPlanner``) beside
the planner it replaced (``git show OLD_REV:hbt/sampler.py``), in fresh child processes,
alternating, medians over --rounds. The old module is driven through its public names:
its ``HybridBatchSampler`` plans epoch 0 when it is built, so its time also holds that
constructor's pool check (one pass over the items, small beside its planning).

The data is synthetic-like index data built directly as numpy arrays (4 languages,
XQuAD-R-like shared answers: a third of the items share their passage with the item
before them, in each common language with probability 0.9). Generating 10^7 pairs of
real synthetic text corpora would take far longer than planning them, and the sampler
only reads the index. Two scenarios:

* ``alpha 0.5``: every item in all 4 languages;
* ``alpha 0``: coverage 0.5, each (item, language) kept with probability 1/2 (items
  average 2 languages; about a third are monolingual and cannot be in cross batches).

The old planner runs only up to --old-max-pairs per scenario (it grows faster than
quadratically) and is stopped after --old-timeout seconds.

    python bench/sampler_scale.py [--rounds 3] [--sizes 1e4,1e5,1e6,1e7]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from benchlib import child, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = {"alpha 0.5": (0.5, 1.0), "alpha 0": (0.0, 0.5)}  # name: (alpha, coverage)
LANGS = 4


def index_arrays(pairs: int, coverage: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays (offsets, language codes, passage ids) of about ``pairs`` pairs."""
    rng = np.random.default_rng(seed)
    n = max(1, round(pairs / (LANGS * coverage)))
    present = rng.random((n, LANGS)) < coverage
    present[~present.any(axis=1), 0] = True  # every item exists somewhere
    ids = np.arange(n * LANGS, dtype=np.int64).reshape(n, LANGS)  # distinct texts
    share = rng.random(n) < 1 / 3  # the same answer as the item before, where both exist
    share[0] = False
    copy = share[:, None] & present & np.roll(present, 1, axis=0) & (rng.random((n, LANGS)) < 0.9)
    rows, cols = np.nonzero(copy)
    for _ in range(64):  # chains: follow the shares down (a few rounds suffice)
        src = ids[rows - 1, cols]
        if np.array_equal(ids[rows, cols], src):
            break
        ids[rows, cols] = src
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int64)
    langs = np.nonzero(present)[1].astype(np.int64)
    return offsets, langs, ids[present]


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM (ru_maxrss would carry the parent's peak
    over fork and exec, and the parent imported torch for the machine line)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(planner: str, pairs: int, scenario: str, batch: int, old_rev: str) -> dict:
    """In this (child) process: build the index, plan epoch 0; times and peak RSS."""
    alpha, coverage = SCENARIOS[scenario]
    offsets, langs, passages = index_arrays(pairs, coverage)
    names = [f"l{i}" for i in range(LANGS)]
    tick = time.perf_counter()
    if planner == "new":
        sys.path.insert(0, ROOT)
        from hbt.sampling import EpochPlanner, LanguageIndex, SamplerConfig

        index = LanguageIndex.from_arrays(names, offsets, langs, passages)
    else:
        source = subprocess.run(["git", "show", f"{old_rev}:hbt/sampler.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        sys.path.insert(0, ROOT)
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location("old_sampler", f.name)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_sampler"] = old
        spec.loader.exec_module(old)
        item_langs = [tuple(langs[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:])]
        passage_ids = [dict(zip(langs[a:b].tolist(), passages[a:b].tolist())) for a, b in zip(offsets[:-1], offsets[1:])]
        index = old.LanguageIndex(names, item_langs, passage_ids)
    build = time.perf_counter() - tick
    tick = time.perf_counter()
    if planner == "new":
        n_batches = len(EpochPlanner(index, SamplerConfig(batch_size=batch, alpha=alpha)).plan(0, np.empty(0, np.int64)))
    else:
        n_batches = len(old.HybridBatchSampler(index, old.SamplerConfig(batch_size=batch, alpha=alpha)).plan(0))
    elapsed = time.perf_counter() - tick
    rss = peak_rss_mib()
    return {"pairs": int(offsets[-1]), "items": len(offsets) - 1, "build_s": build, "plan_s": elapsed,
            "rss_mib": rss, "batches": n_batches}


def run_child(planner: str, pairs: int, scenario: str, batch: int, old_rev: str, timeout: float | None) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", planner, str(pairs), scenario,
           "--batch-size", str(batch), "--old-rev", old_rev]
    if timeout is None:
        return child(cmd)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="(item, language) pairs, comma-separated")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--old-rev", default="db3d815", help="the commit whose hbt/sampler.py is the old planner")
    parser.add_argument("--old-max-pairs", default="alpha 0.5=300000,alpha 0=10000", help="largest size the old planner runs, per scenario")
    parser.add_argument("--old-timeout", type=float, default=120.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--measure", nargs=3, metavar=("PLANNER", "PAIRS", "SCENARIO"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.measure:
        planner, pairs, scenario = a.measure
        print(json.dumps(measure(planner, int(float(pairs)), scenario, a.batch_size, a.old_rev)))
        return
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    old_max = {k: int(float(v)) for k, v in (part.split("=") for part in a.old_max_pairs.split(","))}
    print(machine())
    print(f"batch {a.batch_size}, {LANGS} languages, medians over {a.rounds} rounds (fresh process each run)\n")
    print("| scenario | pairs | items | old plan s | new plan s | old / new | new s per 10^6 pairs | old peak RSS MiB | new peak RSS MiB | new index build s | batches (new) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario in a.scenarios.split(","):
        for pairs in sizes:
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            old_ok = pairs <= old_max.get(scenario, 0)
            for _ in range(a.rounds):  # alternate: drift hits both alike
                if old_ok:
                    r = run_child("old", pairs, scenario, a.batch_size, a.old_rev, a.old_timeout)
                    if r is None:
                        old_ok = False
                        runs["old"] = [{"plan_s": float("inf"), "rss_mib": float("nan")}]
                    else:
                        runs["old"].append(r)
                runs["new"].append(run_child("new", pairs, scenario, a.batch_size, a.old_rev, None))
            med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} if v else None for k, v in runs.items()}
            new, old = med["new"], med["old"]
            if old is None:
                old_cells = ["-", "-", "-"]
            elif old["plan_s"] == float("inf"):
                old_cells = [f"> {a.old_timeout:.0f}", "-", "-"]
            else:
                old_cells = [f"{old['plan_s']:,.2f}", f"{old['plan_s'] / new['plan_s']:,.0f}", f"{old['rss_mib']:,.0f}"]
            print(f"| {scenario} | {new['pairs']:,.0f} | {new['items']:,.0f} | {old_cells[0]} | {new['plan_s']:,.2f} | {old_cells[1]} | "
                  f"{new['plan_s'] / new['pairs'] * 1e6:,.2f} | {old_cells[2]} | {new['rss_mib']:,.0f} | {new['build_s']:,.2f} | {new['batches']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
