"""Training-step throughput on one process: a bare PyTorch loop, hbt's engine, and
sentence-transformers (SentenceTransformerTrainer + MultipleNegativesRankingLoss).

Same model, same contrastive batch, same length limits, same pairs: the batches are
hbt's sampler plan for the config, and the bare loop and sentence-transformers get the
same (query, passage) texts. Every contender pays its own data path per step (hbt and
the bare loop read pre-tokenised ids, sentence-transformers tokenises in its collator):
hbt and sentence-transformers are timed from one step's end to the next, the bare loop
from padding to optimizer step.
Each measurement is a fresh process; samples/s is the median over the steps after
--warmup; contenders alternate within each round; the table gives medians over rounds
and ratios against the bare loop.

    python bench/train_step.py --preset tiny --rounds 5
    python bench/train_step.py --preset me5 --rounds 5 --steps 8 --warmup 2   # needs ../shared
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from benchlib import alternate, child, machine, median_table

PRESETS = {
    "tiny": {"model": "runs/tiny/model", "data": "synthetic:items=4000,languages=4,seed=0", "prefixes": ("", ""),
             "batch": 64, "steps": 40, "warmup": 5},
    "me5": {"model": "../shared/models/me5-small-xquad", "data": "../shared/data/xquad-r", "prefixes": ("query: ", "passage: "),
            "batch": 32, "steps": 8, "warmup": 2},
}
MAXQ, MAXP, LR, TEMP = 32, 64, 2e-5, 0.05


def hbt_overrides(p: dict, tmp: str, steps: int) -> list[str]:
    return [f"run.dir={tmp}/run", f"data.train={p['data']}", f"model.name={p['model']}", f"model.query_prefix={p['prefixes'][0]}",
            f"model.passage_prefix={p['prefixes'][1]}", f"model.max_query_length={MAXQ}", f"model.max_passage_length={MAXP}",
            f"train.batch_size={p['batch']}", f"train.max_steps={steps}", f"train.lr={LR}", f"train.temperature={TEMP}",
            "train.checkpoint_every=100000", "train.grad_clip=0", "data.holdout_titles=null", f"data.cache_dir={tmp}/cache",
            "train.warmup_ratio=0", "model.dropout=0.1", "train.epochs=100"]


def text_batches(p: dict, steps: int) -> list[tuple[list[str], list[str]]]:
    """The (queries, passages) of hbt's first ``steps`` contrastive batches, prefixes applied."""
    from hbt.batches import RankBatches
    from hbt.config import load_config
    from hbt.data.tokenize import PairTokenizer, TextSpec
    from hbt.train import sampler_for, training_data

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("configs/tiny.yaml", hbt_overrides(p, tmp, steps))
        data = training_data(cfg)
    sampler = sampler_for(cfg, data)
    out = []
    for epoch in range(10**6):
        batches = RankBatches(sampler.plan(epoch), 0, cfg.train.batch_size, data, PairTokenizer(None, TextSpec()))
        for b in range(len(batches)):
            queries, passages, _ = batches.texts(b)
            out.append(([p["prefixes"][0] + q for q in queries], [p["prefixes"][1] + x for x in passages]))
            if len(out) == steps:
                return out
    return out


def run_bare(p: dict, steps: int, warmup: int) -> float:
    import torch
    import torch.nn.functional as F

    from hbt.data.tokenize import pad
    from hbt.model import BiEncoder, load_pretrained

    batches = text_batches(p, steps)
    encoder, tok = load_pretrained(p["model"])
    model = BiEncoder(encoder, "mean").train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    ids = [(tok(q, truncation=True, max_length=MAXQ)["input_ids"], tok(d, truncation=True, max_length=MAXP)["input_ids"]) for q, d in batches]
    times = []
    for q, d in ids:
        tick = time.perf_counter()
        qe, de = model(**pad(q, tok.pad_token_id)), model(**pad(d, tok.pad_token_id))
        F.cross_entropy(qe @ de.T / TEMP, torch.arange(len(q))).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tick)
    return p["batch"] / statistics.median(times[warmup:])


def run_hbt(p: dict, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "hbt", "train", "--config", "configs/tiny.yaml", *hbt_overrides(p, tmp, steps), "eval.settings=mono"]
        subprocess.run(cmd, check=True, capture_output=True)
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["samples_per_s"] for r in records[warmup:])


def run_st(p: dict, steps: int, warmup: int) -> float:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import TrainerCallback

    batches = text_batches(p, steps)
    transformer = Transformer(p["model"], max_seq_length=MAXP)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_word_embedding_dimension(), "mean"), Normalize()], device="cpu")
    data = datasets.Dataset.from_dict({"anchor": [q for qs, _ in batches for q in qs], "positive": [d for _, ds in batches for d in ds]})
    ends: list[float] = []

    class Clock(TrainerCallback):
        """Step end to step end, like hbt's samples/s: includes fetching and collating."""

        def on_step_end(self, *args, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=p["batch"], max_steps=steps, learning_rate=LR, warmup_steps=0,
            report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_drop_last=True, seed=0)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model, scale=1 / TEMP), callbacks=[Clock()])
        trainer.train()
    times = [b - a for a, b in zip(ends, ends[1:])]
    return p["batch"] / statistics.median(times[warmup:])


CONTENDERS = {"bare": run_bare, "hbt": run_hbt, "sentence-transformers": run_st}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    p = PRESETS[args.preset]
    steps, warmup = args.steps or p["steps"], args.warmup or p["warmup"]
    if args.child:
        print(json.dumps({"samples_per_s": CONTENDERS[args.child](p, steps, warmup)}))
        return
    print(f"{machine()}\n{p['model']}, contrastive batch {p['batch']}, max lengths {MAXQ}/{MAXP}, {steps} steps "
          f"({warmup} warm-up), medians of {args.rounds} rounds, contenders alternating\n")
    command = [sys.executable, __file__, "--preset", args.preset, "--steps", str(steps), "--warmup", str(warmup), "--child"]
    results = alternate({name: partial(child, [*command, name]) for name in CONTENDERS}, args.rounds)
    print(median_table(results, {"samples_per_s": "samples/s"}, ratios=["samples_per_s"], label="contender",
                       runs_of="samples_per_s", digits=1))


if __name__ == "__main__":
    main()
