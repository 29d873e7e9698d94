"""Tokenisation at scale: a cached pass before training (``Dataset.map(num_proc=...)``,
what hbt did before) against tokenising each batch when it is needed (hbt's default, in
DataLoader workers), on the Parquet corpora of bench/data_scale.py.

* cached pass: seconds to tokenise every query and positive of N pairs into an Arrow
  file with 1 and 2 processes (this is paid before the first step, and again whenever the
  tokenizer, prefixes or lengths change); the growth column extrapolates to 10^7;
* per batch: milliseconds to read one rank's batch of 64 pairs from the memory-mapped
  table, tokenise and pad it (``RankBatches[b]``), median over 200 batches; this runs in
  a worker while the step computes, so the step only waits for it when a step is faster.

    python bench/tokenize_cost.py [--sizes 1e4,1e5,1e6] [--tokenizer ../shared/models/...] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import machine
from data_scale import write_corpus
import datasets
from transformers import AutoTokenizer

from hbt.batches import RankBatches
from hbt.data.sources import Source
from hbt.data.tokenize import PairTokenizer, TextSpec
from hbt.data.training import load_training_data
from hbt.sampling import HybridBatchSampler, LanguageIndex, SamplerConfig


def cached_pass(data, tokenizer, spec: TextSpec, num_proc: int, cache: Path) -> float:
    (table,) = data.tables
    table = table.select_columns(["query", "positive"])
    tick = time.perf_counter()
    table.map(lambda b: {"q": tokenizer(b["query"], truncation=True, max_length=spec.max_query_length)["input_ids"],
                         "p": tokenizer(b["positive"], truncation=True, max_length=spec.max_passage_length)["input_ids"]},
              batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None, remove_columns=["query", "positive"],
              cache_file_name=str(cache / f"tok-{num_proc}-{time.time_ns()}.arrow"))
    return time.perf_counter() - tick


def per_batch_ms(data, tokenizer, spec: TextSpec, batches: int = 200) -> float:
    index = LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages)
    plan = HybridBatchSampler(index, SamplerConfig(batch_size=64, alpha=0.5)).plan(0)
    rank = RankBatches(plan, 0, 64, data, PairTokenizer(tokenizer, spec))
    times = []
    for b in range(min(batches, len(rank))):
        tick = time.perf_counter()
        rank[b]
        times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e4,1e5,1e6")
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared/models/multilingual-e5-small"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="hbt-tok-"))
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    spec = TextSpec("query: ", "passage: ", 32, 64)
    print(machine())
    print(f"tokenizer {Path(a.tokenizer).name}, queries <= 32, passages <= 64 pieces, medians over {a.rounds} rounds")
    print("| pairs | cached pass, 1 process (s) | cached pass, 2 processes (s) | per batch of 64 (ms) |")
    print("|---:|---:|---:|---:|")
    rates = []
    for size in (int(float(s)) for s in a.sizes.split(",")):
        corpus = work / f"corpus-{size}"
        if not corpus.exists():
            write_corpus(corpus, size)
        data = load_training_data([Source(path=str(corpus))], str(work / "cache"))
        one = statistics.median(cached_pass(data, tokenizer, spec, 1, work) for _ in range(a.rounds))
        two = statistics.median(cached_pass(data, tokenizer, spec, 2, work) for _ in range(a.rounds))
        batch = statistics.median(per_batch_ms(data, tokenizer, spec) for _ in range(a.rounds))
        rates.append(min(one, two) / size)
        print(f"| {size:,} | {one:.1f} | {two:.1f} | {batch:.1f} |", flush=True)
    print(f"| 10,000,000 (extrapolated from the largest size) | | {rates[-1] * 1e7:.0f} | same |")
    for f in work.glob("tok-*.arrow"):
        f.unlink()


if __name__ == "__main__":
    main()
