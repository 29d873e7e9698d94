"""What a user watches during training, on rank 0 only: a tqdm bar (loss, lr,
samples/s), one JSON line per step in ``metrics.jsonl`` and per evaluation in
``eval.jsonl``, and TensorBoard scalars, including the running batch-type mix (share of
mono batches per language, of cross) and the evaluations' headline numbers."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from tqdm import tqdm


def rewind(run_dir: Path, step: int, evaluated: int) -> None:
    """Drop what a run resumed from optimizer step ``step``'s checkpoint will log again,
    so that each step and each evaluation appears once: the lines of ``metrics.jsonl``
    after ``step``, and of ``eval.jsonl`` after ``evaluated``, the step of the latest
    evaluation the checkpoint knows of. Rank 0 only; the files are replaced atomically."""
    for name, last in (("metrics.jsonl", step), ("eval.jsonl", evaluated)):
        path = run_dir / name
        if not path.exists():
            continue
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if _step(line) is not None and _step(line) <= last]
        tmp = path.with_name(name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


def _step(line: str) -> int | None:
    """The step of a JSONL line; None for a line a kill cut short (or a blank one)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


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
        """Log one optimizer step: ``record`` has step, epoch, loss, lr, samples_per_s,
        data_wait (the share of the step spent waiting for batches), batch."""
        if not self.enabled:
            return
        self.mix[record["batch"]] += 1
        total = sum(self.mix.values())
        record = {**record, "mix": {k: round(v / total, 4) for k, v in sorted(self.mix.items())}}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        step = record["step"]
        for key in ("loss", "lr", "samples_per_s", "data_wait"):
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
