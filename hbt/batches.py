"""This rank's training batches: the plan's slice -> texts -> token ids, ahead of the step.

The sampler plans every global contrastive batch; this module turns batch ``b`` of an
epoch into what one rank feeds its encoder: the rank's slice of the pairs, their texts
read from the memory-mapped tables (``fast_gather``), tokenised and padded.
A ``torch.utils.data.DataLoader`` does that in ``data.num_workers`` processes, each
``data.prefetch`` batches ahead, so reading, tokenising and collating are off the step's
critical path. Batches arrive tagged with their index: the engine's resume cursor
follows what was trained on, not how far the workers have read ahead.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from hbt import signals
from hbt.data.tokenize import PairTokenizer
from hbt.data.training import TrainingData
from hbt.sampling import EpochPlan


class RankBatches(Dataset):
    """Batch ``b`` of one epoch's plan, as this rank's padded token ids: the rank reads
    ``plan.for_rank(lo, hi)``, its slots of every contrastive batch."""

    def __init__(self, plan: EpochPlan, lo: int, hi: int, data: TrainingData, tokenize: PairTokenizer):
        self.part = plan.for_rank(lo, hi)
        self.data, self.tokenize = data, tokenize

    def __len__(self) -> int:
        return len(self.part)

    def texts(self, b: int) -> tuple[list[str], list[str], list[list[str]] | None]:
        """Queries, positives and (when the run uses them) hard negatives of batch ``b``."""
        data, part = self.data, self.part
        q_rows, p_rows = data.pair_rows(part.items[b], part.qlang[b]), data.pair_rows(part.items[b], part.plang[b])
        negatives = data.column("negatives", p_rows) if self.tokenize.hard_negatives else None
        return data.column("query", q_rows), data.column("positive", p_rows), negatives

    def __getitem__(self, b: int) -> tuple[int, dict[str, dict[str, torch.Tensor]]]:
        return b, self.tokenize(*self.texts(b))


def stream(batches: RankBatches, start: int, workers: int, prefetch: int) -> Iterator[tuple[int, dict, float]]:
    """``(b, batch, waited)`` for ``b`` from ``start`` to the end of the epoch, prepared by
    ``workers`` processes (0: in this one); ``waited`` is the seconds the caller spent
    waiting for the batch (the data path's share of the step: ~0 when workers keep up)."""
    if workers:  # the fast tokenizer's own threads must not be used across the fork (it would warn and disable them)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Its own generator: a DataLoader iterator otherwise draws its workers' base seed from
    # the global torch RNG, which would shift the dropout masks of a resumed run.
    loader = DataLoader(batches, sampler=range(start, len(batches)), batch_size=None, num_workers=workers,
                        prefetch_factor=prefetch if workers else None, persistent_workers=False,
                        generator=torch.Generator().manual_seed(0), worker_init_fn=signals.ignore_in_worker)
    batches_ = iter(loader)
    while True:
        tick = time.perf_counter()
        try:
            b, batch = next(batches_)
        except StopIteration:
            return
        yield b, batch, time.perf_counter() - tick
