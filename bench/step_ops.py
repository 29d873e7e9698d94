"""ATen operators dispatched per optimizer step outside the forward and the backward:
the bare loop against hbt at each ZeRO stage x precision, on an e5-small-sized encoder.

On a GPU each of these operators is (at least) one kernel launch that the step waits
for, whatever the batch size, so this count is a proxy, measurable on a CPU, for the
fixed overhead a trainer adds to every step: DeepSpeed's bf16 wrapper without ZeRO
checked every parameter tensor for overflow, thousands of tiny launches a step. What is
counted is every operator that reaches the ATen backend (a TorchDispatchMode, after
autograd and autocast), except those inside the model's forward and inside autograd's
backward; the loss, the optimizer, gradient clipping and whatever the engine does
between steps are in. Per step: the median over ``--steps`` steps after one warm-up
step; the bare loop runs the same batches (hbt's plan, one padded pass per side) and is
the baseline of the ratios. Views (reshapes, slices, detaches: metadata, no kernel on a
GPU) and host syncs (``.item()``, where the CPU stops queueing work until the GPU
catches up) are also given apart.

    python bench/step_ops.py                      # a random-weight e5-small-sized model
    python bench/step_ops.py --model ../shared/models/me5-small-xquad
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import benchlib
from benchlib import machine

import torch
from torch.utils._python_dispatch import TorchDispatchMode

CELLS = [("bare", None, p) for p in ("fp32", "bf16")] + [("hbt", s, p) for s in (0, 1, 2, 3) for p in ("fp32", "bf16")]


class OutsideOps(TorchDispatchMode):
    """Counts the ATen operators dispatched outside ``model``'s forward and outside
    autograd's backward, split into steps by :meth:`mark`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.depth = 0  # > 0 inside the model's forward
        self.steps: list[Counter] = [Counter()]
        model.register_forward_pre_hook(lambda *_: self._enter())
        model.register_forward_hook(lambda *_: self._leave())

    def _enter(self) -> None:
        self.depth += 1

    def _leave(self) -> None:
        self.depth -= 1

    def mark(self) -> None:
        self.steps.append(Counter())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and torch._C._current_autograd_node() is None:
            self.steps[-1][func] += 1
        return func(*args, **(kwargs or {}))


def preset(model: str, batch: int) -> dict:
    """bench/train_step.py's preset shape for this model (its bare loop reads it)."""
    return {"model": model, "data": "synthetic:items=2000,languages=4,seed=0", "prefixes": ("", ""), "lengths": (16, 32),
            "batch": batch}


def per_step(counter: OutsideOps, steps: int) -> dict:
    """The median step of the ``steps`` whole steps after the warm-up: its operators, how
    many of them are views (metadata only: no kernel on a GPU), how many copy a value to
    the host (``.item()``: the CPU waits for the GPU there), and the most dispatched."""
    whole = counter.steps[2:2 + steps]  # [0]: before the first mark; [1]: the warm-up step
    counts = [sum(c.values()) for c in whole]
    step = whole[counts.index(sorted(counts)[len(counts) // 2])]
    names: Counter = Counter()
    for func, n in step.items():
        names[func.overloadpacket.__name__] += n
    return {"ops": sum(step.values()), "views": sum(n for func, n in step.items() if func.is_view),
            "syncs": names["_local_scalar_dense"], "top": names.most_common(4)}


def bare_ops(p: dict, steps: int, bf16: bool, grad_clip: float) -> dict:
    """The bare loop of bench/train_step.py (AdamW, autocast in bf16), each step marked
    after its optimizer step."""
    from train_step import BareLoop

    loop = BareLoop(p, steps + 1)
    loop.bf16 = bf16
    counter = OutsideOps(loop.model)
    if grad_clip:  # as hbt clips: before the optimizer step, over every gradient at once
        step = loop.opt.step
        loop.opt.step = lambda: (torch.nn.utils.clip_grad_norm_(loop.model.parameters(), grad_clip, foreach=True), step())
    with counter:
        counter.mark()
        for q, d in loop.batches:
            loop.step(q, d, None)
            counter.mark()
    return per_step(counter, steps)


def hbt_ops(p: dict, steps: int, stage: int, precision: str, grad_clip: float) -> dict:
    """hbt's engine on one rank (gloo), as ``hbt train`` builds it, each step marked when
    its gradients are complete (``Engine.fit``'s ``on_gradients``)."""
    from hbt import dist as hdist
    from hbt.config import load_config
    from hbt.data.tokenize import PairTokenizer
    from hbt.engine import Engine
    from hbt.model import BiEncoder, load_pretrained
    from hbt.resolve import resolve
    from hbt.train import sampler_for, training_data

    with tempfile.TemporaryDirectory() as tmp:
        from train_step import hbt_overrides

        overrides = [*hbt_overrides(p, tmp, steps + 2), f"train.deepspeed=configs/deepspeed/zero{stage}.json",
                     f"train.precision={precision}", "train.chunk_tokens=null", f"train.grad_clip={grad_clip}",
                     "data.num_workers=0", "eval.every_epoch=false"]
        cfg = load_config("configs/tiny.yaml", overrides)
        env = hdist.init()
        encoder, tokenizer = load_pretrained(cfg.model.name, cfg.model.dropout)
        data = training_data(cfg, env)
        sampler = sampler_for(cfg, data, env.world_size, env.rank)
        resolved = resolve(cfg, env, encoder, sampler)
        model = BiEncoder(encoder, cfg.model.pooling)
        Path(cfg.run.dir).mkdir(parents=True)
        engine = Engine(cfg, env, resolved, model, data, PairTokenizer(tokenizer, resolved.text, 0), sampler, Path(cfg.run.dir))
        counter = OutsideOps(model)
        with counter:
            engine.fit(None, on_gradients=counter.mark)
        return per_step(counter, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an encoder directory (default: a random-weight e5-small-sized one, bench/e5_sized.py)")
    parser.add_argument("--batch", type=int, default=8, help="contrastive batch (the count does not depend on it)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (hbt's train.grad_clip; "
                        "the bare loop then clips too)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        kind, stage, precision = args.cell.split(":")
        p = preset(args.model, args.batch)
        result = (bare_ops(p, args.steps, precision == "bf16", args.grad_clip) if kind == "bare" else
                  hbt_ops(p, args.steps, int(stage), precision, args.grad_clip))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from e5_sized import write_e5_sized

            model = str(write_e5_sized(Path(tmp) / "e5-sized"))
        print(f"{machine()}\n{model}, contrastive batch {args.batch}, grad clip {args.grad_clip or 'off'}; ATen operators "
              f"per optimizer step outside forward and backward (median of {args.steps} steps after 1 warm-up)\n")
        print("| contender | ZeRO | precision | operators / step | vs bare (same precision) | of which views | "
              "kernels (not views) vs bare | host syncs | most dispatched |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---|")
        bare: dict[str, dict] = {}
        for n, (kind, stage, precision) in enumerate(CELLS):
            # one rank of its own process group per cell (ZeRO needs one), on a port of its own
            env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29400 + n), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
            if not torch.cuda.is_available():
                env["DS_ACCELERATOR"] = "cpu"
            cmd = [sys.executable, __file__, "--model", model, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--grad-clip", str(args.grad_clip), "--cell", f"{kind}:{stage}:{precision}"]
            result = benchlib.child(cmd, env=env)
            if kind == "bare":
                bare[precision] = result
            base = bare[precision]
            kernels = (result["ops"] - result["views"]) / (base["ops"] - base["views"])
            top = ", ".join(f"{name} {count}" for name, count in result["top"])
            print(f"| {kind} | {'' if stage is None else stage} | {precision} | {result['ops']:,} | "
                  f"{result['ops'] / base['ops']:.2f} | {result['views']:,} | {kernels:.2f} | {result['syncs']} | {top} |", flush=True)


if __name__ == "__main__":
    main()
