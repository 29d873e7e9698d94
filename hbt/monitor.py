"""What a user watches during training, on rank 0 only: a tqdm bar (loss, lr,
samples/s), one JSON line per step in ``metrics.jsonl`` and per evaluation in
``eval.jsonl``, and TensorBoard scalars, including the running batch-type mix (share of
mono batches per language, of cross) and the evaluations' headline numbers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tqdm import tqdm


class Monitor:
    def __init__(self, run_dir: Path, total_steps: int, initial_step: int, enabled: bool):
        self.enabled = enabled
        self.mix: Counter[str] = Counter()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.metrics = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.evals = (run_dir / "eval.jsonl").open("a", encoding="utf-8")
        self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True)

    def step(self, record: dict) -> None:
        """Log one optimizer step: ``record`` has step, epoch, loss, lr, samples_per_s, batch."""
        if not self.enabled:
            return
        self.mix[record["batch"]] += 1
        total = sum(self.mix.values())
        record = {**record, "mix": {k: round(v / total, 4) for k, v in sorted(self.mix.items())}}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        step = record["step"]
        for key in ("loss", "lr", "samples_per_s"):
            self.tb.add_scalar(f"train/{key}", record[key], step)
        for key, share in record["mix"].items():
            self.tb.add_scalar(f"mix/{key}", share, step)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                             sps=f"{record['samples_per_s']:.0f}", refresh=False)
        self.bar.update(1)

    def evaluation(self, step: int, label: str, summary: dict) -> None:
        """An evaluation's headline numbers: a line on the console, JSONL, TensorBoard."""
        if not self.enabled:
            return
        self.evals.write(json.dumps({"step": step, "eval": label, **summary}) + "\n")
        self.evals.flush()
        for key, value in summary.items():
            self.tb.add_scalar(f"eval/{key}", value, step)
        self.bar.write(f"eval {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))

    def event(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()
            self.metrics.close()
            self.evals.close()
