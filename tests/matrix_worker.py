"""One rank of the configuration matrix (tests/test_matrix.py), started by torchrun.

For every case in the spec it builds the real training stack (config, tokenised corpus,
rank-aware sampler, DeepSpeed engine) and runs ``Engine.fit`` for ``train.max_steps``
optimizer steps. :class:`GradientProbe` only watches: at the end of the first optimizer
step's last micro-step (after every backward, before ``engine.step()``) it reads the full
gradient of every parameter through DeepSpeed's ``safe_get_full_grad``, which assembles
ZeRO 1-3 partitions. Rank 0 saves, per case, those gradients and the per-step losses.

Usage: ``torchrun --nproc_per_node N tests/matrix_worker.py SPEC.json OUT.pt``
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(spec_path: str, out_path: str) -> None:
    from deepspeed.utils import safe_get_full_grad

    from hbt import dist as hdist
    from hbt.config import load_config
    from hbt.data.tokenize import PairTokenizer, TextSpec
    from hbt.engine import Engine
    from hbt.model import BiEncoder, load_pretrained
    from hbt.train import sampler_for, training_data

    class GradientProbe(Engine):
        """The engine, unchanged, plus a record of the first optimizer step's gradients."""

        grads: dict[str, torch.Tensor] | None = None

        def _micro_step(self, batch: dict) -> torch.Tensor:
            loss = super()._micro_step(batch)
            if self.grads is None and (self.state.micro + 1) % self.cfg.train.grad_accum == 0:
                self.grads = {name: safe_get_full_grad(p).detach().float().cpu().clone()
                              for name, p in self.module.named_parameters()}
            return loss

    from hbt import padding

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
        text_spec = TextSpec(m.query_prefix, m.passage_prefix, m.max_query_length, m.max_passage_length)
        data = training_data(cfg, env)
        sampler = sampler_for(cfg, data, env.world_size, env.rank)
        engine = GradientProbe(cfg, env, BiEncoder(encoder, m.pooling), data,
                               PairTokenizer(tokenizer, text_spec, cfg.train.hard_negatives), sampler, run_dir)
        state = engine.fit(None)
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] if env.is_main else []
        results[case["name"]] = {
            "grads": engine.grads, "losses": [s["loss"] for s in steps], "lrs": [s["lr"] for s in steps], "steps": state.step,
            "checkpoint": engine.checkpointer.latest(), "dtype": next(engine.module.parameters()).dtype, "seconds": time.perf_counter() - tick,
        }
        del engine
    if env.is_main:
        torch.save(results, out_path)
    hdist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
