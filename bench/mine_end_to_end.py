"""``hbt mine`` end to end, as users run it, at 10^5 and 10^6 passages in 10 languages:
the synthetic corpus (items x 10 languages, every item in every language) parsed,
encoded with a small random encoder (2 x 64, the tiny preset's shape; e5-small's encode
rate is bench/mine_scale.py --encode), searched (FAISS flat, per language), chosen and
written, on 1 and 2 ranks (torchrun, gloo). Where bench/mine_scale.py times the search
on random vectors, this measures what it leaves out: the corpus held as Python objects
on every rank, the layout, tokenisation, the encode and the writing, and whether 10^6
passages fit the memory of one node.

Per run: wall time of the command, hbt mine's own phase timings (mine.json) and the peak
resident memory of the largest process (a rank: each run is measured from its own fresh
wrapper process, whose ``RUSAGE_CHILDREN`` covers torchrun's children). Medians over --rounds.

    python bench/mine_end_to_end.py [--items 10000,100000] [--ranks 1,2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from benchlib import alternate, child, machine, median_table

LANGS = 10


def tiny_model(out: Path) -> Path:
    """A random 2 x 64 encoder whose vocabulary is trained on the synthetic corpus's texts."""
    from hbt.data import load_corpus
    from hbt.model import BiEncoder, build_tiny, export

    corpus = load_corpus(f"synthetic:items=2000,languages={LANGS},seed=1")
    texts = [t for item in corpus.items for p in item.pairs.values() for t in (p.query, p.passage)]
    encoder, tokenizer = build_tiny(texts, vocab_size=8000, hidden_size=64, layers=2, heads=2, intermediate_size=256,
                                    max_length=64, seed=0)
    export(BiEncoder(encoder), tokenizer, out, "", "", 32, 64)
    return out


def run(model: Path, items: int, ranks: int, tmp: Path) -> dict:
    out = tmp / f"mined-{items}-{ranks}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m", "hbt",
           "mine", "--model", str(model), "--data", f"synthetic:items={items},languages={LANGS},seed=1",
           "--out", str(out), "--k", "7", "--batch-size", "512"]
    threads = str(max(1, (os.cpu_count() or 1) // ranks))
    tick = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    wall = time.perf_counter() - tick
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads((out / "mine.json").read_text())
    t = report["timings"]
    size = sum(f.stat().st_size for f in out.glob("train*"))
    subprocess.run(["rm", "-rf", str(out)])
    return {"wall_s": wall, "load_s": t["load_s"], "encode_s": t["encode_queries_s"] + t["encode_candidates_s"],
            "search_s": t["search_s"], "write_s": t["choose_write_s"], "pairs": report["counts"]["written"],
            "peak_mib": peak / 1024, "out_mib": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="10000,100000", help="items per run (x 10 languages = passages)")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "ITEMS", "RANKS", "TMP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one measurement, in this fresh process
        print(json.dumps(run(Path(args.one[0]), int(args.one[1]), int(args.one[2]), Path(args.one[3]))))
        return
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "model")
        for items in [int(float(n)) for n in args.items.split(",")]:
            contenders = {f"{ranks} rank{'s' if ranks > 1 else ''}":
                          partial(child, [sys.executable, __file__, "--one", str(model), str(items), str(ranks), tmp])
                          for ranks in [int(r) for r in args.ranks.split(",")]}
            results = alternate(contenders, args.rounds)
            print(f"\n{items:,} items x {LANGS} languages = {items * LANGS:,} passages (and as many queries), k=7:\n")
            print(median_table(results, {"wall_s": "wall s", "load_s": "load s", "encode_s": "encode s",
                                         "search_s": "search s", "write_s": "choose+write s", "peak_mib": "peak RSS MiB",
                                         "out_mib": "output MiB"}, ratios=["wall_s"], label="ranks", runs_of="wall_s"))


if __name__ == "__main__":
    main()
