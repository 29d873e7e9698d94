"""Evaluation speed: (1) the full XQuAD-R evaluation (11 mono + 110 cross + 11
multilingual pools) of a model on 1 and 2 CPU ranks, split into encode / index / search /
exact-rank / metrics time; (2) FAISS search alone over a synthetic pool of 1,000,000
384-d vectors, sharded over 2 ranks versus one process; (3) with --encode-batches N,
encoding padded, packed and as hbt.padding.inference_packed chooses per batch (the
rule ``hbt eval`` and evaluation during training follow; ``hbt mine`` stays padded), all
through hbt.eval.encode.encode, on N batches of each XQuAD-R side (questions,
sentences), spread from the shortest batch to the longest: the batches evaluation cuts
(texts sorted by tokens) and those mining cuts (by characters), per model of
--encode-models (a model directory with e5's prefixes, or ``tiny``: the tiny preset's
shape and lengths, random weights, its tokenizer trained on XQuAD-R), in one process.
Also the padded token work per real token, per sampled batch too, and the largest
difference between the packed and the padded embeddings of the same texts.

Runs alternate between the contenders; medians over --rounds, ratios against 1 process
(against padded for the encoding).

    python bench/eval_speed.py --model runs/tiny/model --data ../shared/data/xquad-r [--rounds 5]
    python bench/eval_speed.py --skip-full --skip-search --encode-batches 6   # encoding alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

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


E5_PREFIXES = ("query: ", "passage: ")
TINY = {"vocab_size": 8000, "hidden_size": 64, "layers": 2, "heads": 4, "intermediate_size": 256}  # configs/tiny.yaml
TINY_LENGTHS = (16, 32)  # configs/tiny.yaml: model.max_query_length, model.max_passage_length


def encoder_and_sides(name: str, data: str) -> tuple[object, object, dict[str, tuple[list[str], int]]]:
    """The bi-encoder, its tokenizer and the two sides of XQuAD-R as ``hbt eval`` encodes
    them with it: every question and every candidate sentence (all languages), prefixed,
    with each side's token limit."""
    from hbt.data import load_corpus
    from hbt.dist import detect
    from hbt.eval.run import EvalLayout
    from hbt.eval.standalone import load_encoder, model_text_spec
    from hbt.model import BiEncoder, build_tiny

    layout = EvalLayout.of(load_corpus(data).retrieval)
    questions, sentences = layout.query_texts, layout.candidates.texts
    if name == "tiny":
        encoder, tokenizer = build_tiny(questions + sentences, max_length=TINY_LENGTHS[1], seed=0, **TINY)
        bi, (q_prefix, p_prefix), (q_len, p_len) = BiEncoder(encoder), ("", ""), TINY_LENGTHS
    else:
        spec, pooling = model_text_spec(name, *E5_PREFIXES)
        bi, tokenizer = load_encoder(name, pooling, detect({}))
        q_prefix, p_prefix, q_len, p_len = spec.query_prefix, spec.passage_prefix, spec.max_query_length, spec.max_passage_length
    return bi, tokenizer, {"questions": ([q_prefix + t for t in questions], q_len),
                           "sentences": ([p_prefix + t for t in sentences], p_len)}


def spread(batches: list[np.ndarray], n: int) -> list[np.ndarray]:
    """``n`` of ``batches`` (shortest first), evenly from the first to the last."""
    return [batches[i] for i in np.unique(np.linspace(0, len(batches) - 1, n).round().astype(int))]


def job_batches(texts: list[str], tokenizer, max_length: int, batch_size: int) -> dict[str, list[list[str]]]:
    """Every batch each job cuts from ``texts``: evaluation sorts by tokens
    (hbt.eval.encode), mining by characters (hbt.mine.encode.global_batches)."""
    from hbt.mine.encode import global_batches

    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    cuts = {"eval": [order[s:s + batch_size] for s in range(0, len(order), batch_size)],
            "mine": global_batches(texts, batch_size)}
    return {job: [[texts[i] for i in b] for b in batches] for job, batches in cuts.items()}


def token_work(batches: list[list[str]], tokenizer, max_length: int) -> float:
    """Tokens a padded pass computes per real token over ``batches``."""
    ids = [tokenizer(b, truncation=True, max_length=max_length)["input_ids"] for b in batches]
    return sum(len(b) * max(map(len, b)) for b in ids) / sum(len(x) for b in ids for x in b)


ENCODINGS = {"padded": False, "packed": True, "rule": None}  # None: as hbt.padding.inference_packed chooses per batch


def encode_run(bi, tokenizer, batches: list[list[str]], max_length: int, packed: bool | None) -> dict:
    """One encode call per batch, as ``hbt mine`` makes them (``hbt eval``'s single call
    cuts the same batches from its length-sorted texts)."""
    from hbt.eval.encode import encode

    emb, seconds = [], []
    for b in batches:
        tick = time.perf_counter()
        emb.append(encode(bi, tokenizer, b, max_length, len(b), packed=packed))
        seconds.append(time.perf_counter() - tick)
    return {"texts_s": sum(map(len, batches)) / sum(seconds), "batch_s": seconds, "emb": np.concatenate(emb)}


def packed_encoding(models: list[str], data: str, batch_size: int, n: int, rounds: int) -> str:
    """Two tables: per model, job and side, the median texts/s padded, packed and as
    hbt.padding.inference_packed chooses (``hbt eval``'s rule; ``hbt mine`` stays padded),
    ratios against padded (and each round's packed one), the padded token work of the
    sampled batches and of all of the side's, and max |packed - padded|; then per sampled
    batch, its padded token work against packed's time ratio (where packing pays)."""
    totals = ["| model | batches of | side | padded texts/s | packed texts/s | rule texts/s | packed vs padded "
              "| runs (packed vs padded) | rule vs padded | padded tokens per real token (these batches) "
              "| (all batches of the side) | max abs diff |", "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    per_batch = ["| model | batches of | side | texts | padded tokens per real token | padded ms | packed ms | packed vs padded "
                 "| rule packs |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for name in models:
        bi, tokenizer, sides = encoder_and_sides(name, data)
        work = {}
        for side, (texts, max_length) in sides.items():
            for job, batches in job_batches(texts, tokenizer, max_length, batch_size).items():
                work[job, side] = (spread(batches, n), max_length, token_work(batches, tokenizer, max_length))
        contenders = {(job, side, how): partial(encode_run, bi, tokenizer, batches, max_length, packed)
                      for (job, side), (batches, max_length, _) in work.items() for how, packed in ENCODINGS.items()}
        for batches, max_length, _ in work.values():
            for packed in ENCODINGS.values():
                encode_run(bi, tokenizer, batches[:1], max_length, packed)  # warm-up
        results = alternate(contenders, rounds)
        label = "tiny preset (random)" if name == "tiny" else Path(name).name
        for (job, side), (batches, max_length, whole) in work.items():
            runs = {how: results[job, side, how] for how in ENCODINGS}
            med = {how: statistics.median(r["texts_s"] for r in runs[how]) for how in ENCODINGS}
            ratios = ", ".join(f"{b['texts_s'] / a['texts_s']:.2f}" for a, b in zip(runs["padded"], runs["packed"]))
            diff = max(float(np.abs(a["emb"] - b["emb"]).max()) for a, b in zip(runs["padded"], runs["packed"]))
            totals.append(f"| {label} | {job} | {side} | {med['padded']:,.1f} | {med['packed']:,.1f} | {med['rule']:,.1f} "
                          f"| {med['packed'] / med['padded']:.2f} | {ratios} | {med['rule'] / med['padded']:.2f} "
                          f"| {token_work(batches, tokenizer, max_length):.3f} | {whole:.3f} | {diff:.1e} |")
            for i, b in enumerate(batches):
                ms = {how: 1000 * statistics.median(r["batch_s"][i] for r in runs[how]) for how in ("padded", "packed")}
                per_batch.append(f"| {label} | {job} | {side} | {len(b)} | {token_work([b], tokenizer, max_length):.3f} "
                                 f"| {ms['padded']:,.1f} | {ms['packed']:,.1f} | {ms['padded'] / ms['packed']:.2f} "
                                 f"| {'yes' if rule_packs(bi, tokenizer, b, max_length) else 'no'} |")
    return "\n".join(totals) + "\n\nPer sampled batch (medians)\n" + "\n".join(per_batch)


def rule_packs(bi, tokenizer, texts: list[str], max_length: int) -> bool:
    """Whether hbt.padding.inference_packed packs ``texts`` as one batch."""
    from hbt.data.tokenize import pad
    from hbt.padding import inference_packed

    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return inference_packed(bi.encoder, pad(ids, tokenizer.pad_token_id))


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
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--encode-batches", type=int, default=0, help="time padded vs packed encoding on this many batches a side")
    parser.add_argument("--encode-models", default=f"{Path(__file__).resolve().parents[2] / 'shared' / 'models' / 'me5-small-xquad'},tiny")
    parser.add_argument("--batch-size", type=int, default=128, help="encoding batch (eval.batch_size's and hbt mine's default)")
    args = parser.parse_args()
    print(f"{machine()}\nmedians of {args.rounds} rounds, contenders alternating")
    if not args.skip_full:
        full = alternate({f"{n} rank{'s' * (n > 1)}": partial(full_eval, args.model, args.data, n) for n in (1, 2)}, args.rounds)
        columns = {"wall_s": "wall", "encode_s": "encode", "rank_s": "exact ranks", "index_s": "index", "search_s": "search",
                   "metrics_s": "metrics"}
        print(f"\nFull evaluation of {args.model} on {args.data} (seconds)\n"
              + median_table(full, columns, ratios=["wall_s"], label="ranks", runs_of="wall_s"))
    if not args.skip_search:
        search = alternate({f"{n} rank{'s' * (n > 1)}": partial(sharded_search, n, args.vectors, args.dim, args.queries, args.k)
                            for n in (1, 2)}, args.rounds)
        print(f"\nFAISS flat search, {args.vectors:,} x {args.dim}-d vectors, {args.queries} queries, top-{args.k} (seconds)\n"
              + median_table(search, {"search_s": "search"}, ratios=["search_s"], label="ranks", runs_of="search_s"))
    if args.encode_batches:
        print(f"\nEncoding padded vs packed on {args.data}: {args.encode_batches} batches of {args.batch_size} per side, "
              f"shortest to longest, one process\n"
              + packed_encoding(args.encode_models.split(","), args.data, args.batch_size, args.encode_batches, args.rounds))


if __name__ == "__main__":
    main()
