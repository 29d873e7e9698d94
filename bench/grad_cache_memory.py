"""GradCache: peak resident memory and samples/s against the plain step, as the
contrastive batch grows (64, 256, 1024 pairs by default).

Each measurement runs in a fresh process (peak RSS is per process) doing a warm-up step
and timed training steps (forward both sides, InfoNCE, backward, AdamW) of a randomly
initialised XLM-R-architecture encoder. Plain and GradCache alternate within each round;
the table gives medians over rounds and the GradCache/plain ratios.

    python bench/grad_cache_memory.py [--batches 64 256 1024] [--chunk 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, chunk = json.loads(args.child)
        print(json.dumps(one(batch, chunk, args.seq, args.steps)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoder 4x256, seq {args.seq}, chunk {args.chunk}")
    print("| contrastive batch | plain peak MiB | GradCache peak MiB | memory ratio | plain samples/s | GradCache samples/s | speed ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        results: dict[str, list[dict]] = {"plain": [], "gc": []}
        for _ in range(args.rounds):
            for name, chunk in (("plain", None), ("gc", args.chunk)):
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps([batch, chunk]), "--seq", str(args.seq),
                                      "--steps", str(args.steps)], capture_output=True, text=True, check=True)
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
        p, g = med["plain"], med["gc"]
        print(f"| {batch} | {p['peak_rss_mib']:.0f} | {g['peak_rss_mib']:.0f} | {g['peak_rss_mib'] / p['peak_rss_mib']:.2f} "
              f"| {p['samples_per_s']:.1f} | {g['samples_per_s']:.1f} | {g['samples_per_s'] / p['samples_per_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
