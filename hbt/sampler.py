"""The rank-aware hybrid batch sampler.

A *contrastive batch* is every pair whose embeddings meet in one loss: the per-rank
batch times the world size. The sampler plans each epoch's contrastive batches
globally, from the seed, the epoch, the contrastive batch size and the data alone,
and hands rank ``r`` slice ``r`` of each. So the sequence of global batches is the same
on 1, 2 or 64 ranks, and every contrastive batch is *pure*:

* **monolingual** (probability ``alpha``): one language X, every query and passage in X;
* **cross-lingual**: every pair has its query language != its passage language; each
  pair draws its own (X, Y) among the languages its item exists in, so one batch holds
  passages of many languages and its negatives look like a multilingual pool.

Policies (docs/sampler.md). The mono/cross mix is ``exact`` by default: an epoch of N
batches has ``round(alpha * N)`` monolingual ones, in shuffled order (``bernoulli``
draws each batch's type instead). The language of a monolingual batch, and the query
and passage languages of a cross-lingual pair, are drawn with weights from
``language_policy``: ``proportional`` to each language's item count (the paper's
"sampled based on dataset size"), ``uniform``, or ``temperature`` (count ** (1/T), T = ``language_temperature``).

An epoch is one pass over the items: an item id is used at most once as a query, in
whatever language its batch gives it. No contrastive batch holds an item twice or two
pairs with the same passage text (either would be a false negative). The items an
epoch cannot fit into a full batch are dropped, or with ``remainder="carry"`` put first
in the next epoch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterator, Literal

import numpy as np

from hbt.data.corpus import Corpus
from hbt.errors import InputError

PairKey = tuple[int, str, str]  # (item index, query language, passage language)


@dataclass(frozen=True)
class SamplerConfig:
    batch_size: int  # the contrastive batch: per-rank batch x world size
    alpha: float = 0.5
    mix: Literal["exact", "bernoulli"] = "exact"
    language_policy: Literal["proportional", "uniform", "temperature"] = "proportional"
    language_temperature: float = 1.0
    remainder: Literal["drop", "carry"] = "drop"
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError("train.batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError("train.alpha", f"must be in [0, 1], got {self.alpha}")
        if self.mix not in ("exact", "bernoulli"):
            raise InputError("train.mix", f"must be 'exact' or 'bernoulli', got {self.mix!r}")
        if self.language_policy not in ("proportional", "uniform", "temperature"):
            raise InputError("train.language_policy", f"must be proportional, uniform or temperature, got {self.language_policy!r}")
        if not self.language_temperature > 0:
            raise InputError("train.language_temperature", f"must be > 0, got {self.language_temperature}")
        if self.remainder not in ("drop", "carry"):
            raise InputError("train.remainder", f"must be 'drop' or 'carry', got {self.remainder!r}")


class LanguageIndex:
    """What the sampler needs to know of a corpus: which languages each item exists in,
    and an id per distinct passage text (to keep equal passages out of one batch)."""

    def __init__(self, languages: list[str], item_langs: list[tuple[int, ...]], passage_ids: list[dict[int, int]]):
        self.languages = languages
        self.item_langs = item_langs
        self.passage_ids = passage_ids
        self.counts = np.zeros(len(languages), dtype=np.int64)
        for langs in item_langs:
            self.counts[list(langs)] += 1

    @classmethod
    def from_corpus(cls, corpus: Corpus) -> "LanguageIndex":
        languages = corpus.languages
        code = {lang: i for i, lang in enumerate(languages)}
        text_ids: dict[str, int] = {}
        item_langs, passage_ids = [], []
        for item in corpus.items:
            langs = tuple(sorted(code[lang] for lang in item.pairs))
            item_langs.append(langs)
            passage_ids.append({code[lang]: text_ids.setdefault(pair.passage, len(text_ids)) for lang, pair in item.pairs.items()})
        return cls(languages, item_langs, passage_ids)

    def distinct_passages(self, lang: int) -> int:
        return len({p[lang] for p in self.passage_ids if lang in p})


@dataclass(frozen=True)
class ContrastiveBatch:
    kind: Literal["mono", "cross"]
    pairs: tuple[PairKey, ...]

    @property
    def label(self) -> str:
        """The batch type as logged: ``mono/<lang>`` or ``cross``."""
        return self.kind if self.kind == "cross" else f"mono/{self.pairs[0][1]}"


@dataclass
class _EpochPlan:
    batches: list[ContrastiveBatch]
    leftover: list[int]  # items no batch used, in pool order (what "carry" carries)


def language_weights(counts: np.ndarray, policy: str, temperature: float) -> np.ndarray:
    """Unnormalised sampling weight of each language under ``policy``."""
    counts = counts.astype(np.float64)
    if policy == "uniform":
        return (counts > 0).astype(np.float64)
    exponent = 1.0 if policy == "proportional" else 1.0 / temperature
    return np.where(counts > 0, counts**exponent, 0.0)


def _weighted_order(rng: np.random.Generator, options: list[int], weights: np.ndarray) -> list[int]:
    """``options`` in a random order where heavier ones tend to come first
    (Efraimidis-Spirakis): the first element is a draw with these weights."""
    w = weights[options]
    keys = rng.random(len(options)) ** (1.0 / w)
    return [options[i] for i in np.argsort(-keys, kind="stable")]


class _Planner:
    """Builds one epoch's contrastive batches; pure function of its inputs."""

    def __init__(self, index: LanguageIndex, cfg: SamplerConfig):
        self.index = index
        self.cfg = cfg
        self.weights = language_weights(index.counts, cfg.language_policy, cfg.language_temperature)

    def plan(self, epoch: int, carried: list[int]) -> _EpochPlan:
        rng = np.random.default_rng([self.cfg.seed, epoch, 0])
        carried_set = set(carried)
        rest = [int(i) for i in rng.permutation(len(self.index.item_langs)) if int(i) not in carried_set]
        order = carried + rest
        # Try the longest epoch first; an attempt fails only when the last batches cannot
        # be filled (a language or the multilingual items ran out), so few attempts run.
        for n in range(len(order) // self.cfg.batch_size, 0, -1):
            batches = self._attempt(epoch, order, n)
            if batches is not None:
                used = {key[0] for batch in batches for key in batch.pairs}
                return _EpochPlan(batches, [i for i in order if i not in used])
        return _EpochPlan([], order)

    def _kinds(self, rng: np.random.Generator, n: int) -> list[str]:
        if self.cfg.mix == "bernoulli":
            return ["mono" if u < self.cfg.alpha else "cross" for u in rng.random(n)]
        n_mono = math.floor(self.cfg.alpha * n + 0.5)
        return [["cross", "mono"][int(m)] for m in rng.permutation(np.arange(n) < n_mono)]

    def _attempt(self, epoch: int, order: list[int], n: int) -> list[ContrastiveBatch] | None:
        rng = np.random.default_rng([self.cfg.seed, epoch, n])
        used = np.zeros(len(self.index.item_langs), dtype=bool)
        remaining = self.index.counts.copy()  # unused items per language
        batches = []
        for kind in self._kinds(rng, n):
            if kind == "mono":
                feasible = [lang for lang in range(len(remaining)) if remaining[lang] >= self.cfg.batch_size and self.weights[lang] > 0]
                if not feasible:
                    return None
                lang = _weighted_order(rng, feasible, self.weights)[0]
                pairs = self._fill(order, used, lambda item, texts: self._mono_pair(item, lang, texts))
            else:
                pairs = self._fill(order, used, lambda item, texts: self._cross_pair(rng, item, texts))
            if pairs is None:
                return None
            for item, _, _ in pairs:
                used[item] = True
                remaining[list(self.index.item_langs[item])] -= 1
            names = self.index.languages
            batches.append(ContrastiveBatch(kind, tuple((i, names[q], names[p]) for i, q, p in pairs)))
        return batches

    def _fill(self, order, used, pick) -> list[tuple[int, int, int]] | None:
        """The first ``batch_size`` unused items in pool order that ``pick`` can place
        (``pick`` returns (query lang, passage lang) or None) with distinct passage texts."""
        texts: set[int] = set()
        pairs = []
        for item in order:
            if used[item]:
                continue
            langs = pick(item, texts)
            if langs is None:
                continue
            texts.add(self.index.passage_ids[item][langs[1]])
            pairs.append((item, *langs))
            if len(pairs) == self.cfg.batch_size:
                return pairs
        return None

    def _mono_pair(self, item: int, lang: int, texts: set[int]) -> tuple[int, int] | None:
        passage = self.index.passage_ids[item].get(lang)
        return None if passage is None or passage in texts else (lang, lang)

    def _cross_pair(self, rng: np.random.Generator, item: int, texts: set[int]) -> tuple[int, int] | None:
        langs = list(self.index.item_langs[item])
        if len(langs) < 2:
            return None
        query = _weighted_order(rng, langs, self.weights)[0]
        others = [lang for lang in langs if lang != query]
        for passage in _weighted_order(rng, others, self.weights):
            if self.index.passage_ids[item][passage] not in texts:
                return query, passage
        return None


class HybridBatchSampler:
    """A batch sampler (for ``DataLoader(batch_sampler=...)``) yielding this rank's slice
    of every contrastive batch, as ``(item index, query language, passage language)`` keys.

    Call :meth:`set_epoch` before each epoch; :meth:`state_dict` /
    :meth:`load_state_dict` resume mid-epoch (the cursor counts contrastive batches).
    """

    def __init__(self, index: LanguageIndex, cfg: SamplerConfig, world_size: int = 1, rank: int = 0):
        cfg.validate()
        if cfg.batch_size % world_size:
            raise InputError("train.batch_size", f"{cfg.batch_size} is not divisible by the world size {world_size}")
        self._check_pools(index, cfg)
        self.index, self.cfg = index, cfg
        self.world_size, self.rank = world_size, rank
        self.per_rank = cfg.batch_size // world_size
        self._planner = _Planner(index, cfg)
        self._plans: dict[int, _EpochPlan] = {}
        self.epoch = 0
        self.cursor = 0
        if not self.plan():
            raise InputError("train.batch_size", f"no contrastive batch of {cfg.batch_size} can be formed from this data")

    @staticmethod
    def _check_pools(index: LanguageIndex, cfg: SamplerConfig) -> None:
        if cfg.alpha > 0:
            for lang, name in enumerate(index.languages):
                pool = index.distinct_passages(lang)
                if pool < cfg.batch_size:
                    raise InputError("train.batch_size", f"contrastive batch {cfg.batch_size} is larger than language '{name}''s pool of {pool} distinct passages")
        if cfg.alpha < 1:
            multilingual = sum(len(langs) >= 2 for langs in index.item_langs)
            if multilingual < cfg.batch_size:
                raise InputError("train.batch_size", f"contrastive batch {cfg.batch_size} is larger than the {multilingual} items that exist in two or more languages (cross-lingual batches need them; train.alpha=1 trains monolingual only)")

    def plan(self, epoch: int | None = None) -> list[ContrastiveBatch]:
        """The global contrastive batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            carried = self._plan_record(epoch - 1).leftover if self.cfg.remainder == "carry" and epoch > 0 else []
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # keep memory flat
            self._plans[epoch] = self._planner.plan(epoch, carried)
        return self._plans[epoch].batches

    def _plan_record(self, epoch: int) -> _EpochPlan:
        self.plan(epoch)
        return self._plans[epoch]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.cursor = epoch, 0

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[list[PairKey]]:
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        batches = self.plan()
        while self.cursor < len(batches):
            batch = batches[self.cursor]
            self.cursor += 1
            yield list(batch.pairs[lo:hi])

    def mix(self, epoch: int | None = None) -> Counter[str]:
        """Batch-type counts of an epoch: ``mono/<lang>`` per language, and ``cross``."""
        return Counter(b.label for b in self.plan(epoch))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, **asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state[k] for k in asdict(self.cfg) if k in state}
        if saved != asdict(self.cfg):
            changed = sorted(k for k in saved if saved[k] != asdict(self.cfg)[k])
            raise InputError("resume", f"the checkpoint's sampler settings differ from this run's ({', '.join(changed)})")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
