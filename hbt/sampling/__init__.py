"""The rank-aware hybrid batch sampler (docs/sampler.md).

A *contrastive batch* is every pair whose embeddings meet in one loss: the per-rank
batch times the world size. The sampler plans each epoch's contrastive batches
globally, from the seed, the epoch, the contrastive batch size and the data alone, and
rank ``r`` reads slot range ``r`` of each, so the sequence of global batches is the same
on 1, 2 or 64 ranks. Every batch is *monolingual* (probability ``alpha``: one language,
every query and passage in it) or *cross-lingual* (every pair's query language differs
from its passage language), and holds at most one item per answer group, so no passage
(nor hard negative) of a batch is relevant to another query of it.

The settings are :class:`hbt.config.SamplerConfig` (re-exported here). The modules,
down the data path: :mod:`~hbt.sampling.csr` (CSR row operations),
:mod:`~hbt.sampling.blocking` (hard negatives kept apart), :mod:`~hbt.sampling.index`
(the arrays), :mod:`~hbt.sampling.policy` (the seeded draws), :mod:`~hbt.sampling.fill`
(greedy filling), :mod:`~hbt.sampling.plan` (one epoch's plan) and this facade: the
plans of a run, each rank's slice of them, the cursor and resume.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import numpy as np

from hbt.config import SamplerConfig
from hbt.errors import InputError
from hbt.sampling.index import LanguageIndex
from hbt.sampling.plan import EpochPlan, EpochPlanner, PairKey, RankPlan
from hbt.sampling.policy import language_weights

__all__ = ["EpochPlan", "EpochPlanner", "HybridBatchSampler", "LanguageIndex", "PairKey", "RankPlan", "SamplerConfig",
           "language_weights", "per_rank_batch"]


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the contrastive batch: the slots of every batch a rank reads
    (:class:`HybridBatchSampler` refuses a batch size the world size does not divide)."""
    return batch_size // world_size


def _check_pools(index: LanguageIndex, cfg: SamplerConfig) -> None:
    """Refuse a batch larger than a pool it draws from (one item per answer group)."""
    if cfg.alpha > 0:
        for lang, name in enumerate(index.languages):
            pool = index.distinct_groups(lang)
            if pool < cfg.batch_size:
                raise InputError("train.batch_size", f"contrastive batch {cfg.batch_size} is larger than language '{name}''s pool of {pool} items with distinct passages (items that share a passage text in any language count once)")
    if cfg.alpha < 1:
        multilingual = index.multilingual_groups()
        if multilingual < cfg.batch_size:
            raise InputError("train.batch_size", f"contrastive batch {cfg.batch_size} is larger than the {multilingual} items that exist in two or more languages, counting items that share a passage text once (cross-lingual batches need them; train.alpha=1 trains monolingual only)")


class HybridBatchSampler:
    """The epoch plans and this rank's place in them: what the rank reads of an epoch is
    ``plan(epoch).for_rank(*rank_slice())`` (:class:`hbt.batches.RankBatches` turns its
    batch ``b`` into token ids).

    Call :meth:`set_epoch` before each epoch; ``cursor`` counts the contrastive batches
    of the epoch trained on, and :meth:`state_dict` / :meth:`load_state_dict` resume there.
    """

    def __init__(self, index: LanguageIndex, cfg: SamplerConfig, world_size: int = 1, rank: int = 0):
        cfg.validate()
        if cfg.batch_size % world_size:
            raise InputError("train.batch_size", f"{cfg.batch_size} is not divisible by the world size {world_size}")
        _check_pools(index, cfg)
        self.index, self.cfg = index, cfg
        self.world_size, self.rank = world_size, rank
        self.per_rank = per_rank_batch(cfg.batch_size, world_size)
        self._planner = EpochPlanner(index, cfg)
        self._plans: dict[int, EpochPlan] = {}
        self.epoch = 0
        self.cursor = 0
        if not len(self.plan()):
            raise InputError("train.batch_size", f"no contrastive batch of {cfg.batch_size} can be formed from this data")

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The global contrastive batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            carried = self.plan(epoch - 1).leftover if self.cfg.remainder == "carry" and epoch > 0 else np.empty(0, np.int64)
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # keep memory flat
            self._plans[epoch] = self._planner.plan(epoch, carried)
        return self._plans[epoch]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.cursor = epoch, 0

    def __len__(self) -> int:
        return len(self.plan())

    def rank_slice(self) -> tuple[int, int]:
        """This rank's positions in every contrastive batch."""
        return self.rank * self.per_rank, (self.rank + 1) * self.per_rank

    def mix(self, epoch: int | None = None) -> Counter[str]:
        """Batch-type counts of an epoch: ``mono/<lang>`` per language, and ``cross``."""
        return self.plan(epoch).mix()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, **asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state[k] for k in asdict(self.cfg) if k in state}
        if saved != asdict(self.cfg):
            changed = sorted(k for k in saved if saved[k] != asdict(self.cfg)[k])
            raise InputError("resume", f"the checkpoint's sampler settings differ from this run's ({', '.join(changed)})")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
