"""What a user watches during training, on rank 0 only: a tqdm bar (loss, lr,
samples/s), one JSON line per step in ``metrics.jsonl`` and per evaluation in
``eval.jsonl``, and TensorBoard scalars, including the running batch-type mix (share of
mono batches per language, of cross) and the evaluations' headline numbers."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from hbt.errors import writing


def rewind(run_dir: Path, step: int, evaluated: int) -> None:
    """Drop what a run resumed from optimizer step ``step``'s checkpoint will log again,
    so that each step and each evaluation appears once: the lines of ``metrics.jsonl``
    after ``step``, and of ``eval.jsonl`` after ``evaluated``, the step of the latest
    evaluation the checkpoint knows of. Lines that cannot be read (a kill or a full disk
    cut the last one short) go too, and a warning on stderr names how many and the steps
    up to ``step`` that ``metrics.jsonl`` no longer has: nothing logs those again.
    Rank 0 only; the files are replaced atomically."""
    for name, last in (("metrics.jsonl", step), ("eval.jsonl", evaluated)):
        path = run_dir / name
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        steps = [_step(line) for line in lines]
        kept = [line for line, n in zip(lines, steps) if n is not None and n <= last]
        unreadable = sum(n is None and bool(line.strip()) for line, n in zip(lines, steps))
        missing = sorted(set(range(1, last + 1)) - set(steps)) if name == "metrics.jsonl" else []
        if unreadable or missing:
            print(f"hbt: warning: {path}: {_lost(unreadable, missing)}", file=sys.stderr)
        tmp = path.with_name(name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


def _lost(unreadable: int, missing: list[int]) -> str:
    """What :func:`rewind` could not keep, in words (``...; no line for steps 24-25, 30, ...``)."""
    parts = [f"{unreadable} unreadable line{'s' if unreadable != 1 else ''} dropped (cut short?)"] if unreadable else []
    if missing:
        runs: list[list[int]] = []
        for n in missing:
            if runs and n == runs[-1][1] + 1:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        spans = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
        parts.append(f"no line for step{'s' if len(missing) > 1 else ''} {spans}, which the resumed run does not log again")
    return "; ".join(parts)


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
        with writing(Path(self.metrics.name)):
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
        with writing(Path(self.evals.name)):
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
