"""The built-in synthetic corpus at scale (issue 23 item 3): ``hbt data plan`` of
``synthetic:items=N,languages=10`` from a cold cache (generate the corpus, build the
sampler's index, plan one epoch, write the plan) and from a warm one (table and index
cached), with its wall time and peak resident memory, beside the code before the
synthetic table (``--old REV``: one Python object per pair) where it fits.

Each run is a fresh ``python -m hbt data plan SPEC --batch-size 512 --alpha 0.5 --epochs 1``
under ``/usr/bin/time`` (elapsed seconds, maximum resident set size: the peak of that
process, counting the pages of the memory-mapped table it touched). ``cold`` uses a new
``--cache-dir``; ``warm`` repeats the run on it (the old code caches the index only, so
it rebuilds its objects every time; ``--no-warm`` skips it). Medians over ``--rounds``
(sizes above ``--once-above`` pairs run once).

    python bench/synthetic_scale.py [--sizes 1e5,1e6,1e7] [--rounds 3] [--old 87d8c3f] [--old-max-pairs 1e6] [--no-new] [--no-warm]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import machine

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = 10


def plan(tree: Path, spec: str, cache: Path, out: Path) -> dict:
    """One ``hbt data plan`` in a fresh process of the code in ``tree``: seconds, peak MiB."""
    stats = out.with_suffix(".time")
    cmd = ["/usr/bin/time", "-o", str(stats), "-f", "%e %M", sys.executable, "-m", "hbt", "data", "plan", spec,
           "--batch-size", "512", "--alpha", "0.5", "--epochs", "1", "--out", str(out), "--cache-dir", str(cache)]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree),
                                                                               "HOME": str(Path.home())})
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} (in {tree}) failed:\n{done.stderr[-3000:]}")
    seconds, kib = stats.read_text().split()[-2:]
    out.unlink()
    return {"s": float(seconds), "mib": int(kib) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e5,1e6,1e7", help="pairs (items x 10 languages)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--once-above", type=float, default=1e6)
    ap.add_argument("--old", default=None, help="a revision before the synthetic table")
    ap.add_argument("--old-max-pairs", type=float, default=1e6)
    ap.add_argument("--no-new", action="store_true", help="only the old code")
    ap.add_argument("--no-warm", action="store_true", help="cold runs only (the warm columns then say -)")
    ap.add_argument("--work", default=None, help="where caches go (default: a temporary directory)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="hbt-synthetic-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    trees = [] if a.no_new else [("hbt", ROOT)]
    if a.old:
        old_tree = work / f"old-{a.old}"
        if not old_tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(old_tree), a.old], check=True,
                           capture_output=True)
        trees.append((f"old {a.old} (objects)", old_tree))
    print(machine())
    print("| pairs | code | cold: time (s) | cold: peak RSS (MiB) | warm: time (s) | warm: peak RSS (MiB) | runs |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for pairs in (int(float(s)) for s in a.sizes.split(",")):
        spec = f"synthetic:items={pairs // LANGUAGES},languages={LANGUAGES}"
        for name, tree in trees:
            if name != "hbt" and pairs > a.old_max_pairs:
                continue
            runs = []
            for r in range(a.rounds if pairs <= a.once_above else 1):
                cache = work / f"cache-{pairs}-{r}"
                shutil.rmtree(cache, ignore_errors=True)
                cold = plan(tree, spec, cache, work / "plan.jsonl")
                runs.append((cold, {"s": float("nan"), "mib": float("nan")} if a.no_warm else plan(tree, spec, cache, work / "plan.jsonl")))
                shutil.rmtree(cache, ignore_errors=True)
            med = lambda i, key: statistics.median(run[i][key] for run in runs)  # noqa: E731
            print(f"| {pairs:,} | {name} | {med(0, 's'):.1f} | {med(0, 'mib'):,.0f} | {med(1, 's'):.1f} | {med(1, 'mib'):,.0f} "
                  f"| {len(runs)} |", flush=True)
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
