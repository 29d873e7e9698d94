"""Training-step throughput on one process: bare PyTorch loops, hbt's engine, and
sentence-transformers (SentenceTransformerTrainer + MultipleNegativesRankingLoss or
CachedMultipleNegativesRankingLoss).

Same model, same contrastive batch, same length limits, same pairs: the batches are
hbt's sampler plan for the config, and the bare loops and sentence-transformers get the
same (query, passage) texts. Contenders:

- bare: a plain padded loop (each side padded to its longest text, one forward each);
- bare chunked: the same loop with hbt's remedy for padding at ``--chunk-tokens``
  (``packed``: hbt.padding's packing; a number: length-sorted chunks,
  hbt.padding.encode_chunked), so the trick's own worth shows apart from hbt's engine;
  bare flex: bare chunked with packed attention through flex_attention, as where the
  cluster's torch lacks varlen_attn (on a GPU only; see hbt.padding.one_call);
- hbt: ``hbt train`` with ``train.chunk_tokens`` at ``--chunk-tokens``; hbt padded: with
  ``train.chunk_tokens=null`` (one padded pass per side);
- st MNRL / st CachedMNRL: sentence-transformers' trainer with each loss (CachedMNRL at
  its default mini-batch of 32 texts).

Every contender pays its own data path per step (hbt and the bare loops read
pre-tokenised ids, sentence-transformers tokenises in its collator): hbt and
sentence-transformers are timed from one step's end to the next, the bare loops from
padding to optimizer step. Each measurement is a fresh process; samples/s is the median
over the steps after --warmup; contenders alternate within each round; each table gives
medians over rounds, every round's value, and ratios against the bare loop, then the
ratios the targets are about. On a machine with a GPU every contender trains there in
bf16 (as ``hbt train``'s ``train.precision=auto`` does), else on the CPU in fp32.

    python bench/train_step.py --preset tiny,me5 --batch 32,128 --rounds 3   # me5 needs ../shared
    python bench/train_step.py --preset me5 --contenders bare,bare-chunked --chunk-tokens packed,256,512,1024
    python bench/train_step.py --preset e5-sized --batch 32,128,512   # random weights, no ../shared: the device check's

On a GPU whose bf16 peak is known (BF16_PEAK) each table also gives every contender's
model FLOPs utilisation: model FLOPs per step (:func:`model_flops_per_sample`) over the
step time and the peak.
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
from typing import Callable

from benchlib import alternate, child, machine, median_table

PRESETS = {
    # the tiny preset's model is configs/tiny.yaml's (hbt train --config configs/tiny.yaml), with its lengths
    "tiny": {"model": "runs/tiny/model", "data": "synthetic:items=4000,languages=4,seed=0", "prefixes": ("", ""),
             "lengths": (16, 32), "batch": 64, "steps": 40, "warmup": 5},
    "me5": {"model": "../shared/models/me5-small-xquad", "data": "../shared/data/xquad-r", "prefixes": ("query: ", "passage: "),
            "lengths": (32, 64), "batch": 32, "steps": 8, "warmup": 2},
    # e5-small's size with random weights (bench/e5_sized.py, written to a temporary
    # directory unless --model names one) and the built-in corpus: nothing needs ../shared
    "e5-sized": {"model": None, "data": "synthetic:items=5000,languages=4,seed=0", "prefixes": ("query: ", "passage: "),
                 "lengths": (32, 64), "batch": 128, "steps": 30, "warmup": 5},
}
# Dense bf16 peak of the GPUs whose MFU is printed (their data sheets, FLOP/s).
BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362.1e12}
LR, TEMP = 2e-5, 0.05
Budget = int | str | None  # a train.chunk_tokens value: tokens per chunk, "packed", or None (one padded pass)


def compute() -> tuple[str, bool]:
    """Where the bare loops and sentence-transformers train, and whether in bf16: the GPU
    when there is one, else the CPU, in what ``hbt train``'s ``train.precision=auto``
    resolves to there."""
    import torch

    from hbt.resolve import precision

    return "cuda" if torch.cuda.is_available() else "cpu", precision("auto") == "bf16"


def bf16_peak() -> float | None:
    """This GPU's dense bf16 peak, where :data:`BF16_PEAK` knows it (None on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for gpu, peak in BF16_PEAK.items() if gpu in name), None)


def model_flops_per_sample(p: dict, steps: int) -> float:
    """Training FLOPs of one (query, passage) pair of the preset's batches, from their real
    token counts (padding is not model work): per text of L tokens, 6 x the encoder's
    linear weights x L (forward 2, backward 4) plus 12 x layers x hidden x L^2 (attention
    scores and their weighted sum, forward and backward). Embedding lookups and the loss
    are left out, as MFU conventionally does."""
    from transformers import AutoConfig, AutoTokenizer

    config, tok = AutoConfig.from_pretrained(p["model"]), AutoTokenizer.from_pretrained(p["model"])
    h, layers = config.hidden_size, config.num_hidden_layers
    linear = layers * (4 * h * h + 2 * h * config.intermediate_size)
    total = pairs = 0
    for queries, passages in text_batches(p, steps):
        for texts, limit in ((queries, p["lengths"][0]), (passages, p["lengths"][1])):
            lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=limit)["input_ids"]]
            total += sum(6 * linear * n + 12 * layers * h * n * n for n in lengths)
        pairs += len(queries)
    return total / pairs


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so the clock reads the step's end, not its launch."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def hbt_overrides(p: dict, tmp: str, steps: int) -> list[str]:
    return [f"run.dir={tmp}/run", f"data.train={p['data']}", f"model.name={p['model']}", f"model.query_prefix={p['prefixes'][0]}",
            f"model.passage_prefix={p['prefixes'][1]}", f"model.max_query_length={p['lengths'][0]}", f"model.max_passage_length={p['lengths'][1]}",
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


class BareLoop:
    """The bare loop: the model, a plain AdamW, the preset's batches as token ids, and one
    timed step (the bare contenders and ``--sweep`` share it)."""

    def __init__(self, p: dict, steps: int):
        import torch

        from hbt.model import BiEncoder, load_pretrained

        encoder, tok = load_pretrained(p["model"])
        self.device, self.bf16 = compute()
        self.model = BiEncoder(encoder, "mean").to(self.device).train()
        # torch's fused AdamW, as hbt's engine runs it: the update is the same kernel in every
        # contender, so what differs is what each adds around it
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.01, fused=True)
        self.pad_id = tok.pad_token_id
        self.batches = [(tok(q, truncation=True, max_length=p["lengths"][0])["input_ids"],
                         tok(d, truncation=True, max_length=p["lengths"][1])["input_ids"]) for q, d in text_batches(p, steps)]

    def step(self, q: list[list[int]], d: list[list[int]], chunk_tokens: Budget) -> float:
        """Seconds for one step, from padding to the optimizer step: each side one padded
        pass, packed, or in length-sorted chunks of ``chunk_tokens``."""
        import torch
        import torch.nn.functional as F

        from hbt.data.tokenize import pad
        from hbt.padding import encode_chunked

        if chunk_tokens == "packed" and not self.model.packed:
            self.model.pack()  # padded calls after this go through the same SDPA as before
        self.model.packed = chunk_tokens == "packed"

        def encode(ids: list[list[int]]) -> torch.Tensor:
            part = {k: v.to(self.device) for k, v in pad(ids, self.pad_id).items()}
            if chunk_tokens is None or chunk_tokens == "packed":
                return self.model(**part)
            return encode_chunked(lambda c: self.model(**c), part, chunk_tokens)

        tick = time.perf_counter()
        with torch.autocast(self.device, torch.bfloat16, enabled=self.bf16):
            qe, de = encode(q), encode(d)
            loss = F.cross_entropy(qe.float() @ de.float().T / TEMP, torch.arange(len(q), device=self.device))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - tick


def run_bare(p: dict, steps: int, warmup: int, chunk_tokens: Budget = None) -> float:
    """The bare loop; with ``chunk_tokens`` each side is encoded packed or in length-sorted chunks."""
    loop = BareLoop(p, steps)
    times = [loop.step(q, d, chunk_tokens) for q, d in loop.batches]
    return p["batch"] / statistics.median(times[warmup:])


def run_bare_flex(p: dict, steps: int, warmup: int, chunk_tokens: Budget = "packed") -> float:
    """The bare loop packed, with varlen_attn taken away so the one call is flex_attention."""
    from hbt import padding

    padding.varlen_attn = None  # this child process only
    return run_bare(p, steps, warmup, "packed")


def run_hbt(p: dict, steps: int, warmup: int, chunk_tokens: Budget = None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "hbt", "train", "--config", "configs/tiny.yaml", *hbt_overrides(p, tmp, steps), "eval.settings=mono",
               f"train.chunk_tokens={'null' if chunk_tokens is None else chunk_tokens}"]
        subprocess.run(cmd, check=True, capture_output=True)
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["samples_per_s"] for r in records[warmup:])


def run_st(p: dict, steps: int, warmup: int, cached: bool = False) -> float:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import TrainerCallback

    batches = text_batches(p, steps)
    transformer = Transformer(p["model"], max_seq_length=p["lengths"][1])
    device, bf16 = compute()
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_word_embedding_dimension(), "mean"), Normalize()], device=device)
    data = datasets.Dataset.from_dict({"anchor": [q for qs, _ in batches for q in qs], "positive": [d for _, ds in batches for d in ds]})
    ends: list[float] = []

    class Clock(TrainerCallback):
        """Step end to step end, like hbt's samples/s: includes fetching and collating."""

        def on_step_end(self, *args, **kwargs):
            ends.append(time.perf_counter())

    loss = (CachedMultipleNegativesRankingLoss if cached else MultipleNegativesRankingLoss)(model, scale=1 / TEMP)
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=p["batch"], max_steps=steps, learning_rate=LR, warmup_steps=0,
            report_to="none", save_strategy="no", logging_strategy="no", use_cpu=device == "cpu", bf16=bf16,
            dataloader_drop_last=True, seed=0)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Clock()])
        trainer.train()
    times = [b - a for a, b in zip(ends, ends[1:])]
    return p["batch"] / statistics.median(times[warmup:])


def sweep(p: dict, steps: int, warmup: int, budgets: list[Budget]) -> dict[str, float]:
    """The bare loop in one process, the budgets taking turns on every batch (same model,
    same batches, so only the remedy for padding differs): samples/s per budget, median over the
    steps after ``warmup`` rounds. Cheaper than a fresh process per budget, for choosing
    ``train.chunk_tokens``."""
    loop = BareLoop(p, steps)
    times: dict[str, list[float]] = {str(b): [] for b in budgets}
    for n, (q, d) in enumerate(loop.batches):
        for budget in budgets:
            seconds = loop.step(q, d, budget)
            if n >= warmup:
                times[str(budget)].append(seconds)
            print(f"batch {n} chunk_tokens={budget}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return {b: p["batch"] / statistics.median(t) for b, t in times.items()}


Runner = Callable[[dict, int, int, Budget], float]  # (preset, steps, warm-up, --chunk-tokens budget) -> samples/s
CONTENDERS: dict[str, Runner] = {
    "bare": lambda p, steps, warmup, budget: run_bare(p, steps, warmup),
    "bare-chunked": run_bare,
    "bare-flex": run_bare_flex,
    "hbt": run_hbt,
    "hbt-padded": lambda p, steps, warmup, budget: run_hbt(p, steps, warmup),
    "st-mnrl": lambda p, steps, warmup, budget: run_st(p, steps, warmup),
    "st-cachedmnrl": lambda p, steps, warmup, budget: run_st(p, steps, warmup, cached=True),
}
CHUNKED = {"bare-chunked", "hbt"}  # the contenders that take --chunk-tokens


def summary(results: dict[str, list[dict]]) -> str:
    """The ratios of medians the targets are about: what chunking is worth (bare and hbt),
    and hbt against sentence-transformers."""
    med = {n: statistics.median(r["samples_per_s"] for r in runs) for n, runs in results.items()}
    pairs = [("bare chunked", "bare"), ("bare flex", "bare chunked"), ("bare flex", "bare"), ("hbt", "hbt padded"), ("hbt padded", "bare"), ("hbt", "st MNRL"),
             ("hbt", "st CachedMNRL"), ("st MNRL", "bare")]
    of = lambda name: [n for n in med if n.split(" (")[0] == name]  # noqa: E731  (a chunked contender per budget)
    return "; ".join(f"{a} / {b} {med[a] / med[b]:.2f}" for x, y in pairs for a in of(x) for b in of(y))


def label(name: str, budget: Budget, several: bool) -> str:
    text = {"bare": "bare", "bare-chunked": "bare chunked", "bare-flex": "bare flex", "hbt": "hbt", "hbt-padded": "hbt padded",
            "st-mnrl": "st MNRL", "st-cachedmnrl": "st CachedMNRL"}[name]
    return f"{text} ({budget if budget == 'packed' else f'{budget} tokens'})" if several and name in CHUNKED else text


def main() -> None:
    from hbt.config import TrainConfig
    from hbt.resolve import padding

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help=f"comma-separated, of {', '.join(PRESETS)}")
    parser.add_argument("--model", help="the encoder directory (default: the preset's; e5-sized: one written to a temporary directory)")
    parser.add_argument("--batch", help="contrastive batch sizes, comma-separated (default: the preset's)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {', '.join(CONTENDERS)}")
    import torch

    auto = padding(TrainConfig().chunk_tokens, gpu=torch.cuda.is_available(), packs=True)  # both presets' encoders pack
    parser.add_argument("--chunk-tokens", default="null" if auto is None else str(auto),
                        help="train.chunk_tokens value(s) of the chunked contenders, comma-separated: packed, a "
                             "token budget, or null: one padded pass (default: what auto runs on this machine)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--sweep", action="store_true", help="only the bare loop, one process, the --chunk-tokens budgets "
                        "(and 'null': one padded pass) taking turns on each batch")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    budgets: list[Budget] = [None if b == "null" else b if b == "packed" else int(b) for b in args.chunk_tokens.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run(args, budgets, tmp)


def preset_of(name: str, model: str | None, tmp: str) -> dict:
    """The preset, its model from --model, or for e5-sized one written under ``tmp``."""
    p = dict(PRESETS[name])
    if model:
        p["model"] = model
    elif p["model"] is None:
        from e5_sized import write_e5_sized

        p["model"] = str(write_e5_sized(Path(tmp) / name))
    return p


def run(args: argparse.Namespace, budgets: list[Budget], tmp: str) -> None:
    """The measurements ``args`` ask for (models written into ``tmp`` where needed)."""
    if args.sweep:
        p = preset_of(args.preset, args.model, tmp)
        p["batch"] = int(args.batch or p["batch"])
        steps, warmup = args.steps or p["steps"], args.warmup or p["warmup"]
        rates = sweep(p, steps, warmup, budgets)
        print(f"{machine()}\n{p['model']}, contrastive batch {p['batch']}, bare loop, {steps} batches ({warmup} warm-up), "
              f"budgets taking turns on each batch; samples/s (vs one padded pass):")
        for b, rate in rates.items():
            print(f"  chunk_tokens={b}: {rate:.1f} ({rate / rates.get('None', rate):.2f})")
        return
    if args.child:
        p = {**preset_of(args.preset, args.model, tmp), "batch": int(args.batch)}
        print(json.dumps({"samples_per_s": CONTENDERS[args.child](p, args.steps, args.warmup, budgets[0])}))
        return
    print(machine())
    names = args.contenders.split(",")
    peak = bf16_peak()
    for preset in args.preset.split(","):
        p = preset_of(preset, args.model, tmp)
        steps, warmup = args.steps or p["steps"], args.warmup or p["warmup"]
        for batch in [int(b) for b in args.batch.split(",")] if args.batch else [p["batch"]]:
            flops = model_flops_per_sample({**p, "batch": batch}, steps) if peak else None
            print(f"\n{p['model']}, contrastive batch {batch}, max lengths {p['lengths'][0]}/{p['lengths'][1]}, {steps} steps ({warmup} warm-up), "
                  f"chunks of {args.chunk_tokens} tokens, medians of {args.rounds} rounds, contenders alternating"
                  + (f"; MFU: {flops / 1e9:.2f} model GFLOPs per pair / bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "") + "\n")
            command = [sys.executable, __file__, "--preset", preset, "--model", p["model"], "--batch", str(batch), "--steps", str(steps),
                       "--warmup", str(warmup), "--child"]
            contenders = {label(name, budget, len(budgets) > 1): partial(child, [*command, name, "--chunk-tokens", "null" if budget is None else str(budget)])
                          for name in names for budget in (budgets if name in CHUNKED else budgets[:1])}
            results = alternate(contenders, args.rounds)
            columns = {"samples_per_s": "samples/s"}
            if peak:
                for run_result in (r for runs in results.values() for r in runs):
                    run_result["mfu"] = 100 * run_result["samples_per_s"] * flops / peak
                columns["mfu"] = "MFU %"
            print(median_table(results, columns, ratios=["samples_per_s"], label="contender",
                               runs_of="samples_per_s", digits=1))
            print(f"\n{summary(results)}", flush=True)


if __name__ == "__main__":
    main()
