"""Training throughput of a config on 1 and 2 ranks (gloo on CPU, NCCL on GPUs) at the
same per-rank batch, and the share of the step spent in the cross-rank gather and in
collation.

Each run trains ``--steps`` optimizer steps with ``hbt train`` (torchrun for 2 ranks) and
reads samples/s from its metrics.jsonl, skipping the first ``--warmup`` steps. The
2-rank run's contrastive batch is twice the 1-rank one, so each rank encodes the same
number of pairs; efficiency = (2-rank samples/s) / (2 x 1-rank samples/s). The gather
share times the loss's own gather (hbt.loss.gather_with_grad: all-gather forward,
reduce-scatter backward) on 2 ranks for the embeddings of one step, median of 200
repeats, against the median 2-rank step time. Collation (reading one rank's pairs from
the table, tokenising, padding: ``RankBatches[b]``, median over 200 batches) runs in a
DataLoader worker while the step computes; what the step still pays is ``data_wait``
in metrics.jsonl (the share of the step spent waiting for its batch), reported per
rank count, beside what collation would cost inline.

    python bench/train_throughput.py [--config configs/tiny.yaml] [--steps 60] [--rounds 5]
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

from benchlib import alternate, child, machine, median_table


def run(config: str, ranks: int, per_rank: int, steps: int, warmup: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
        cmd = [*launcher, "-m", "hbt", "train", "--config", config, f"run.dir={tmp}/run", f"train.max_steps={steps}",
               f"train.batch_size={per_rank * ranks}", "train.epochs=1000", "train.checkpoint_every=100000",
               "eval.every_epoch=false", "eval.settings=mono", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        rate = statistics.median(r["samples_per_s"] for r in records[warmup:])
        wait = statistics.median(r["data_wait"] for r in records[warmup:])
        return {"samples_per_s": rate, "per_rank_samples_per_s": rate / ranks, "step_ms": 1000 * per_rank * ranks / rate,
                "data_wait_pct": 100 * wait}


def gather_child(per_rank: int, dim: int, repeats: int) -> None:
    """Under torchrun: time gather_with_grad of (per_rank, dim) query-side passages, forward
    and backward, as the loss does once per step; rank 0 prints the median in ms."""
    import torch
    import torch.distributed as dist

    from hbt.dist import detect
    from hbt.loss import gather_with_grad

    env = detect()  # torchrun's variables
    dist.init_process_group("gloo")
    times = []
    for i in range(repeats + 20):
        x = torch.randn(per_rank, dim, requires_grad=True)
        dist.barrier()
        tick = time.perf_counter()
        gather_with_grad(x, env.world_size).sum().backward()
        if i >= 20:  # warm-up
            times.append(time.perf_counter() - tick)
    if env.is_main:
        print(json.dumps({"gather_ms": 1000 * statistics.median(times)}), flush=True)
    dist.barrier()  # no rank tears down while another still has a collective in flight
    dist.destroy_process_group()


def collation_ms(config: str, overrides: list[str], per_rank: int, batches: int = 200) -> float:
    """Median ms to read, tokenise and pad one rank's pairs (``RankBatches[b]``), the work
    a DataLoader worker does per step."""
    from hbt.batches import RankBatches
    from hbt.config import load_config
    from hbt.data.tokenize import PairTokenizer
    from hbt.dist import detect
    from hbt.resolve import text_spec
    from hbt.train import build_model, sampler_for, training_data

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"run.dir={tmp}/run", f"data.cache_dir={tmp}/cache", f"train.batch_size={per_rank}"])
        data = training_data(cfg)
        _, tokenizer = build_model(cfg, data, Path(tmp, "run"), detect({}))
        tokenize = PairTokenizer(tokenizer, text_spec(cfg.model), cfg.train.hard_negatives)
        sampler = sampler_for(cfg, data)
        times, epoch = [], 0
        while len(times) < batches:
            rank = RankBatches(sampler.plan(epoch), 0, per_rank, data, tokenize)
            for b in range(min(len(rank), batches - len(times))):
                tick = time.perf_counter()
                rank[b]
                times.append(time.perf_counter() - tick)
            epoch += 1
        return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--per-rank", type=int, default=32, help="pairs per rank and step")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gather-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.gather_child:
        gather_child(*args.gather_child, repeats=200)
        return
    from hbt.config import load_config

    cfg = load_config(args.config, args.overrides)
    dim = cfg.model.tiny.hidden_size if cfg.model.name == "tiny" else 384
    print(f"{machine()}\n{args.config} {' '.join(args.overrides)}: {args.per_rank} pairs per rank, {args.steps} steps "
          f"({args.warmup} warm-up), medians of {args.rounds} rounds, 1 and 2 ranks alternating\n")
    runner = partial(run, args.config, per_rank=args.per_rank, steps=args.steps, warmup=args.warmup, extra=args.overrides)
    results = alternate({"1 rank": partial(runner, 1), "2 ranks": partial(runner, 2)}, args.rounds)
    print(median_table(results, {"samples_per_s": "samples/s", "per_rank_samples_per_s": "samples/s per rank", "step_ms": "step ms",
                                 "data_wait_pct": "step % waiting for data"},
                       ratios=["samples_per_s", "per_rank_samples_per_s"], label="ranks", runs_of="samples_per_s", digits=0))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    gather = child([*torchrun, "--gather-child", str(args.per_rank), str(dim)], env={"OMP_NUM_THREADS": "1"})["gather_ms"]
    step = statistics.median(r["step_ms"] for r in results["2 ranks"])
    print(f"\ncross-rank gather of {args.per_rank} x {dim} embeddings per rank (forward + backward): {gather:.2f} ms "
          f"= {100 * gather / step:.1f} % of the {step:.1f} ms 2-rank step")
    collation = collation_ms(args.config, args.overrides, args.per_rank)
    one = statistics.median(r["step_ms"] for r in results["1 rank"])
    print(f"collation of {args.per_rank} pairs (RankBatches[b]: read, tokenise, pad; median of 200): {collation:.2f} ms, "
          f"{100 * collation / one:.1f} % of the {one:.1f} ms 1-rank step if done inline; it runs in a DataLoader worker "
          f"(data.num_workers), so the step pays only the 'waiting for data' column")


if __name__ == "__main__":
    main()
