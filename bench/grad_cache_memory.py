"""GradCache: peak resident memory and samples/s against the plain step, as the
contrastive batch grows (64, 256, 1024 pairs by default).

Each measurement runs in a fresh process (peak RSS is per process) doing a warm-up step
and timed training steps (forward both sides, InfoNCE, backward, AdamW) of a randomly
initialised XLM-R-architecture encoder. Plain and GradCache alternate within each round;
the table gives medians over rounds and the GradCache/plain ratios.

    python bench/grad_cache_memory.py [--batches 64 256 1024] [--chunk 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from functools import partial

from benchlib import alternate, child, machine, median_table


def one(batch: int, chunk: int | None, seq: int, steps: int) -> dict:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from hbt.loss import ContrastiveLoss, grad_cache_step
    from hbt.model import BiEncoder

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                              intermediate_size=1024, max_position_embeddings=seq + 2, type_vocab_size=1)
    model = BiEncoder(XLMRobertaModel(config, add_pooling_layer=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ContrastiveLoss(0.05)
    ids = lambda: {"input_ids": torch.randint(5, 8000, (batch, seq)), "attention_mask": torch.ones(batch, seq, dtype=torch.long)}  # noqa: E731
    data = {"query": ids(), "passage": ids()}
    times = []
    for step in range(steps + 1):
        tick = time.perf_counter()
        if chunk:
            grad_cache_step(lambda part: model(**part), lambda s, last: s.backward(), loss_fn, data, chunk)
        else:
            loss_fn(model(**data["query"]), model(**data["passage"])).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step is the warm-up
            times.append(time.perf_counter() - tick)
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "samples_per_s": batch / statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, chunk = json.loads(args.child)
        print(json.dumps(one(batch, chunk, args.seq, args.steps)))
        return
    print(f"{machine()}\nencoder 4x256, seq {args.seq}, chunk {args.chunk}, {args.steps} timed steps after 1 warm-up, "
          f"medians of {args.rounds} rounds, plain and GradCache alternating")
    for batch in args.batches:
        command = [sys.executable, __file__, "--seq", str(args.seq), "--steps", str(args.steps), "--child"]
        results = alternate({"plain": partial(child, [*command, json.dumps([batch, None])]),
                             "GradCache": partial(child, [*command, json.dumps([batch, args.chunk])])}, args.rounds)
        print(f"\ncontrastive batch {batch}\n" + median_table(
            results, {"peak_rss_mib": "peak RSS MiB", "samples_per_s": "samples/s"}, ratios=["peak_rss_mib", "samples_per_s"], label="step",
            runs_of="samples_per_s", digits=1), flush=True)


if __name__ == "__main__":
    main()
