"""One rank of the configuration matrix (tests/integration/test_matrix.py), started by torchrun.

For every case in the spec it builds the real training stack (config, tokenised corpus,
rank-aware sampler, resolved settings, DeepSpeed engine) and runs ``Engine.fit`` for
``train.max_steps`` optimizer steps. Its ``on_gradients`` probe only watches: once the
first optimizer step's gradients are complete (after every backward, before the optimizer
step) it reads the full gradient of every parameter through DeepSpeed's
``safe_get_full_grad``, which assembles ZeRO 1-3 partitions. Rank 0 saves, per case,
those gradients, the per-step losses, the weights' dtype and the optimizer class DeepSpeed built.

Usage: ``torchrun --nproc_per_node N tests/integration/matrix_worker.py SPEC.json OUT.pt``
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(spec_path: str, out_path: str) -> None:
    from deepspeed.utils import safe_get_full_grad

    from hbt import dist as hdist
    from hbt.config import load_config
    from hbt.data.tokenize import PairTokenizer
    from hbt.engine import Engine
    from hbt.model import BiEncoder, load_pretrained
    from hbt.resolve import resolve
    from hbt.train import sampler_for, training_data
    from hbt import padding

    def record_first(grads: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
        """The first optimizer step's full gradients (every rank takes part: ZeRO-3 gathers)."""
        if not grads:
            grads.update({name: safe_get_full_grad(p).detach().float().cpu().clone() for name, p in module.named_parameters()})

    padding.ATTENTION_GROUP_TOKENS = 48  # several attention groups per packed side, as CHUNK_TOKENS gives several chunks
    spec = json.loads(Path(spec_path).read_text())
    env = hdist.init()
    torch.set_num_threads(1)
    results = {}
    for case in spec["cases"]:
        tick = time.perf_counter()
        run_dir = Path(spec["runs"]) / f"w{env.world_size}-{case['name']}"
        cfg = load_config(None, [*spec["common"], *case["overrides"], f"run.dir={run_dir}"])
        if env.is_main:
            run_dir.mkdir(parents=True)
        m = cfg.model
        encoder, tokenizer = load_pretrained(m.name, m.dropout)
        data = training_data(cfg, env)
        sampler = sampler_for(cfg, data, env.world_size, env.rank)
        resolved = resolve(cfg, env, encoder, sampler)
        engine = Engine(cfg, env, resolved, BiEncoder(encoder, m.pooling), data,
                        PairTokenizer(tokenizer, resolved.text, cfg.train.hard_negatives), sampler, run_dir)
        grads: dict[str, torch.Tensor] = {}
        state = engine.fit(None, on_gradients=partial(record_first, grads, engine.module))
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] if env.is_main else []
        results[case["name"]] = {
            "grads": grads or None, "losses": [s["loss"] for s in steps], "lrs": [s["lr"] for s in steps], "steps": state.step,
            "checkpoint": engine.checkpointer.latest(), "dtype": next(engine.module.parameters()).dtype,
            "optimizer": type(engine.engine.optimizer).__name__, "seconds": time.perf_counter() - tick,
        }
        del engine
    if env.is_main:
        torch.save(results, out_path)
    hdist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
