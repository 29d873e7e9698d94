"""Every supported training configuration runs, and its gradient is the right one.

The matrix: ZeRO stage 0-3 x 1, 2 and 3 ranks x GradCache off/on x ``grad_accum`` 1/2 x
(plain InfoNCE | symmetric with hard negatives), plus bf16; every cell encodes packed
(``train.chunk_tokens=packed``, what ``auto`` runs on a CPU for this XLM-R encoder), and
a few cells instead in length-sorted chunks (small enough here for several chunks of
different widths per side) or in one padded pass. Each cell trains two optimizer
steps through ``Engine.fit`` (real DeepSpeed, real gloo processes, a checkpoint at the
end) and its first step's full gradient (read from DeepSpeed, ZeRO partitions assembled)
is compared with a single-process reference in plain PyTorch: the mean over the
accumulated contrastive batches of the loss over the *whole* contrastive batch. A wrong
1/world_size or 1/grad_accum, a lost negative or a dropped gradient fails it; the
tolerance, 1e-5, is far below any such error.

One torchrun per world size runs all its cells in one go (DeepSpeed starts once per
process), so the whole matrix costs a few minutes.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, index_of_corpus

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("matrix")]  # one worker: its module fixture is built once

BATCH = 12  # the contrastive batch: divisible by 1, 2 and 3 ranks
LR = 1e-3
GRAD_TOLERANCE = 1e-5
BF16_LOSS_TOLERANCE = 0.02  # relative; bf16 keeps 8 mantissa bits (measured figures: docs/training.md)
# The relative L2 distance of the whole bf16 gradient from the fp32 reference, by ZeRO stage:
# autocast without ZeRO keeps LayerNorm, softmax and the weights in fp32; the stages' bf16
# optimizers compute the whole backward in bf16, which puts the LayerNorm biases' gradients
# (sums over every token) furthest off. Both far below a factor 2 (0.5) or 1/3 (0.67).
BF16_GRAD_TOLERANCE = {0: 0.01, 1: 0.25, 2: 0.25, 3: 0.25}
# The optimizer DeepSpeed builds for each ZeRO stage and precision: torch's fused AdamW
# untouched without ZeRO (bf16 there is autocast), the stage's own optimizer under ZeRO;
# never FP16_UnfusedOptimizer, the per-tensor wrapper of DeepSpeed's bf16 mode without ZeRO.
OPTIMIZER = {(0, "fp32"): "AdamW", (0, "bf16"): "AdamW", **{(s, p): "DeepSpeedZeroOptimizer" for s in (1, 2) for p in ("fp32", "bf16")},
             **{(3, p): "DeepSpeedZeroOptimizer_Stage3" for p in ("fp32", "bf16")}}


@dataclass(frozen=True)
class Cell:
    stage: int
    grad_cache: bool
    accum: int
    negatives: bool  # symmetric loss with hard negatives, else plain InfoNCE
    precision: str = "fp32"
    padding: str = "packed"  # train.chunk_tokens: packed, "chunks" of CHUNK_TOKENS, or "padded" (one pass per side)

    @property
    def name(self) -> str:
        return (f"zero{self.stage}-{'gc' if self.grad_cache else 'plain'}-accum{self.accum}"
                f"-{'sym+hardneg' if self.negatives else 'infonce'}-{self.precision}{'' if self.padding == 'packed' else '-' + self.padding}")

    def overrides(self) -> list[str]:
        return [f"train.deepspeed=configs/deepspeed/zero{self.stage}.json", f"train.grad_accum={self.accum}",
                f"train.grad_cache_chunk={3 if self.grad_cache else 'null'}", f"train.precision={self.precision}",
                f"train.hard_negatives={2 if self.negatives else 0}", f"train.symmetric={self.negatives}",
                f"train.chunk_tokens={ {'packed': 'packed', 'chunks': CHUNK_TOKENS, 'padded': 'null'}[self.padding]}"]


CHUNK_TOKENS = 48  # max lengths 16/24: chunks of 2 to 3 texts (more for short ones), each at its own width
FP32 = [Cell(s, g, a, n) for s, g, a, n in itertools.product((0, 1, 2, 3), (False, True), (1, 2), (False, True))]
BF16 = [Cell(s, g, 2, True, "bf16") for s in (0, 1, 2, 3) for g in (False, True)]
OTHER_PADDING = [Cell(s, g, 2, True, padding=p) for p in ("chunks", "padded") for s in (0, 3) for g in (False, True)]
MATRIX = {1: FP32 + BF16 + OTHER_PADDING, 2: FP32 + BF16 + OTHER_PADDING, 3: [c for c in FP32 if c.accum == 2 and c.stage in (0, 3)]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A small JSONL corpus with hard negatives (4 languages) and a tiny encoder saved once."""
    from hbt.data import load_corpus
    from hbt.model import build_tiny

    tmp = tmp_path_factory.mktemp("matrix")
    corpus = load_corpus("synthetic:items=240,languages=4,seed=3")
    lines = []
    for n, item in enumerate(corpus.items):
        for lang, pair in item.pairs.items():
            others = [corpus.items[(n + d) % len(corpus.items)].pairs.get(lang) for d in (7, 13, 29)]
            lines.append({"id": item.id, "lang": lang, "query": pair.query, "positive": pair.passage,
                          "negatives": [o.passage for o in others if o is not None], "title": item.title})
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    texts = (t for item in corpus.items for p in item.pairs.values() for t in (p.query, p.passage))
    encoder, tokenizer = build_tiny(texts, 1500, 32, 2, 4, 64, 32, seed=0)
    encoder.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    common = [f"data.train={data}", f"model.name={tmp / 'model'}", "model.dropout=0.0", f"data.cache_dir={tmp / 'cache'}",
              f"train.batch_size={BATCH}", "train.max_steps=2", "train.checkpoint_every=1000", "train.warmup_ratio=0", f"train.lr={LR}",
              "model.max_query_length=16", "model.max_passage_length=24", "train.alpha=0.5", "eval.every_epoch=false"]
    return {"tmp": tmp, "common": common, "runs": {}, "references": {}}


def run_world(ws: dict, world: int) -> dict:
    """All cells of one world size, in one torchrun (cached for the module)."""
    if world not in ws["runs"]:
        tmp: Path = ws["tmp"]
        spec = {"data": ws["common"][0].split("=", 1)[1], "common": ws["common"], "runs": str(tmp / "runs"),
                "cases": [{"name": c.name, "overrides": c.overrides()} for c in MATRIX[world]]}
        spec_file, out_file = tmp / f"spec-{world}.json", tmp / f"out-{world}.pt"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               str(Path(__file__).with_name("matrix_worker.py")), str(spec_file), str(out_file)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        ws["runs"][world] = torch.load(out_file, weights_only=False) if out.returncode == 0 else out.stderr[-4000:]
    result = ws["runs"][world]
    assert isinstance(result, dict), result  # a failed torchrun fails each of its cells, and runs once
    return result


def reference(ws: dict, cell: Cell) -> dict[str, torch.Tensor]:
    """The gradient of the mean, over the first ``accum`` contrastive batches, of the loss
    over each whole batch: one process, plain PyTorch autograd, no DeepSpeed."""
    key = (cell.accum, cell.negatives)
    if key not in ws["references"]:
        from hbt.config import load_config
        from hbt.data import load_corpus
        from hbt.data.tokenize import PairTokenizer, TextSpec
        from hbt.loss import ContrastiveLoss
        from hbt.model import BiEncoder, load_pretrained
        from hbt.sampling import HybridBatchSampler

        cfg = load_config(None, [*ws["common"], *cell.overrides(), f"run.dir={ws['tmp'] / 'ref'}"])
        m, t = cfg.model, cfg.train
        corpus = load_corpus(cfg.data.train)
        encoder, tokenizer = load_pretrained(m.name, m.dropout)
        model = BiEncoder(encoder, m.pooling)
        index = index_of_corpus(corpus, t.hard_negatives)  # the same plan as training: negatives kept apart
        batches = HybridBatchSampler(index, t.sampler(cfg.run.seed)).plan(0)[: t.grad_accum]
        tokenize = PairTokenizer(tokenizer, TextSpec("", "", m.max_query_length, m.max_passage_length), t.hard_negatives)
        items = corpus.items
        loss_fn = ContrastiveLoss(t.temperature, t.symmetric)
        total = 0.0
        for b in batches:
            parts = tokenize([items[i].pairs[q].query for i, q, _ in b.pairs], [items[i].pairs[p].passage for i, _, p in b.pairs],
                             [list(items[i].pairs[p].negatives) for i, _, p in b.pairs])
            negatives = model(**parts["negatives"]) if "negatives" in parts else None
            total = total + loss_fn(model(**parts["query"]), model(**parts["passage"]), negatives)
        (total / len(batches)).backward()
        ws["references"][key] = {n: p.grad.clone() for n, p in model.named_parameters()}
    return ws["references"][key]


def cells() -> list:
    return [pytest.param(world, cell, id=f"{world}rank-{cell.name}") for world, cs in MATRIX.items() for cell in cs]


@pytest.mark.parametrize("world,cell", cells())
def test_cell_trains_and_its_gradient_is_the_single_process_one(workspace: dict, world: int, cell: Cell) -> None:
    got = run_world(workspace, world)[cell.name]
    assert got["steps"] == 2 and got["checkpoint"] == "step-00000002"
    assert len(got["losses"]) == 2 and all(torch.isfinite(torch.tensor(got["losses"])))
    assert got["lrs"][0] == LR  # no warm-up asked for: the first step learns at the full rate
    assert got["optimizer"] == OPTIMIZER[cell.stage, cell.precision]
    # bf16 without ZeRO keeps fp32 weights and runs the forward under autocast
    assert got["dtype"] == (torch.bfloat16 if cell.precision == "bf16" and cell.stage > 0 else torch.float32)
    ref = reference(workspace, cell)
    if cell.precision == "bf16":
        fp32 = run_world(workspace, world)[Cell(cell.stage, cell.grad_cache, cell.accum, cell.negatives).name]
        rel = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], fp32["losses"]))
        grad_rel = (torch.cat([(got["grads"][n] - ref[n]).flatten() for n in ref]).norm()
                    / torch.cat([ref[n].flatten() for n in ref]).norm()).item()
        print(f"{world} rank(s) {cell.name}: losses {got['losses']} vs fp32 {fp32['losses']}, max relative difference "
              f"{rel:.2e}; |grad - reference| / |reference| {grad_rel:.2e}")
        assert rel <= BF16_LOSS_TOLERANCE and grad_rel <= BF16_GRAD_TOLERANCE[cell.stage]
        assert grad_rel >= 1e-5  # bf16 did run: fp32 lands within 1e-7 of the reference
        return
    assert got["grads"].keys() == ref.keys()
    diff = max((got["grads"][n] - ref[n]).abs().max().item() for n in ref)
    scale = max(ref[n].abs().max().item() for n in ref)
    print(f"{world} rank(s) {cell.name}: max |grad - reference| {diff:.2e} (largest reference entry {scale:.2e}), "
          f"{got['seconds']:.1f} s")
    assert scale > 100 * GRAD_TOLERANCE  # a gradient this test can tell from a wrongly scaled one
    assert diff <= GRAD_TOLERANCE
