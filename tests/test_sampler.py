"""The hybrid batch sampler's eight properties, property-based over world sizes 1-8,
batch sizes, alpha and language availability, plus explicit cases."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt.data import load_corpus
from hbt.errors import InputError
from hbt.sampler import HybridBatchSampler, LanguageIndex, SamplerConfig, language_weights


@st.composite
def language_indexes(draw) -> LanguageIndex:
    """Items in random subsets of 2-5 languages; some passages repeat within a language."""
    n_langs = draw(st.integers(2, 5))
    n_items = draw(st.integers(8, 160))
    coverage = draw(st.floats(0.3, 1.0))
    dup_rate = draw(st.sampled_from([0.0, 0.1, 0.3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    item_langs, passage_ids = [], []
    for item in range(n_items):
        langs = tuple(int(x) for x in np.flatnonzero(rng.random(n_langs) < coverage)) or (int(rng.integers(n_langs)),)
        item_langs.append(langs)
        # a repeated passage reuses an earlier item's text in that language
        passage_ids.append({lang: (lang * 10_000 + int(rng.integers(max(1, item))) if rng.random() < dup_rate else lang * 10_000 + item) for lang in langs})
    return LanguageIndex([f"l{i}" for i in range(n_langs)], item_langs, passage_ids)


configs = st.builds(
    dict,
    per_rank=st.integers(1, 6),
    world=st.integers(1, 8),
    alpha=st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0]) | st.floats(0, 1),
    mix=st.sampled_from(["exact", "bernoulli"]),
    language_policy=st.sampled_from(["proportional", "uniform", "temperature"]),
    temperature=st.sampled_from([0.5, 2.0, 5.0]),
    remainder=st.sampled_from(["drop", "carry"]),
    seed=st.integers(0, 1000),
)


def make(index: LanguageIndex, c: dict, world: int | None = None, rank: int = 0) -> HybridBatchSampler:
    world = c["world"] if world is None else world
    cfg = SamplerConfig(batch_size=c["per_rank"] * c["world"], alpha=c["alpha"], mix=c["mix"],
                        language_policy=c["language_policy"], language_temperature=c["temperature"],
                        remainder=c["remainder"], seed=c["seed"])
    return HybridBatchSampler(index, cfg, world_size=world, rank=rank)


def make_or_explain(index: LanguageIndex, c: dict) -> HybridBatchSampler | None:
    """The sampler, or None when it rightly refused the data (checked here)."""
    try:
        return make(index, c)
    except InputError as e:
        assert e.where == "train.batch_size"
        batch = c["per_rank"] * c["world"]
        smallest = min(index.distinct_passages(lang) for lang in range(len(index.languages)))
        multilingual = sum(len(langs) >= 2 for langs in index.item_langs)
        assert (c["alpha"] > 0 and smallest < batch) or (c["alpha"] < 1 and multilingual < batch) or "can be formed" in e.problem
        return None


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(index=language_indexes(), c=configs, epoch=st.integers(0, 3))
def test_batches_are_pure_distinct_and_each_item_is_used_once(index: LanguageIndex, c: dict, epoch: int) -> None:
    sampler = make_or_explain(index, c)
    if sampler is None:
        return
    names = {name: i for i, name in enumerate(index.languages)}
    seen_items: set[int] = set()
    for batch in sampler.plan(epoch):
        assert len(batch.pairs) == sampler.cfg.batch_size
        items = [i for i, _, _ in batch.pairs]
        assert len(set(items)) == len(items)  # (4) no item twice in a contrastive batch
        passages = [index.passage_ids[i][names[p]] for i, _, p in batch.pairs]
        assert len(set(passages)) == len(passages)  # (4) no passage text twice
        for item, q, p in batch.pairs:  # the languages exist for that item
            assert {names[q], names[p]} <= set(index.item_langs[item])
        if batch.kind == "mono":  # (1) pure
            assert len({q for _, q, _ in batch.pairs} | {p for _, _, p in batch.pairs}) == 1
        else:
            assert all(q != p for _, q, p in batch.pairs)
        assert not seen_items & set(items)  # (6) an item is a query at most once per epoch
        seen_items.update(items)


@SETTINGS
@given(index=language_indexes(), c=configs)
def test_exact_mix_is_round_alpha_n(index: LanguageIndex, c: dict) -> None:
    c = {**c, "mix": "exact"}
    sampler = make_or_explain(index, c)
    if sampler is None:
        return
    for epoch in range(3):
        batches = sampler.plan(epoch)
        mono = sum(b.kind == "mono" for b in batches)
        assert mono == math.floor(c["alpha"] * len(batches) + 0.5)  # (2)


@SETTINGS
@given(index=language_indexes(), c=configs, epoch=st.integers(0, 2))
def test_global_sequence_is_independent_of_world_size(index: LanguageIndex, c: dict, epoch: int) -> None:
    c = {**c, "world": 4 * max(1, c["world"] // 4) if c["world"] >= 4 else 4, "per_rank": max(1, c["per_rank"] // 2)}
    sampler = make_or_explain(index, c)
    if sampler is None:
        return
    sequences = []
    for world in (1, 2, 4):  # (5) the same contrastive batches whatever the world size
        per_rank = [list(iter_epoch(make(index, c, world=world, rank=r), epoch)) for r in range(world)]
        lengths = {len(batches) for batches in per_rank}
        assert len(lengths) == 1  # (6) every rank yields the same number of batches
        sequences.append([sum((per_rank[r][b] for r in range(world)), []) for b in range(lengths.pop())])
    assert sequences[0] == sequences[1] == sequences[2]
    assert sequences[0] == [list(b.pairs) for b in sampler.plan(epoch)]


def iter_epoch(sampler: HybridBatchSampler, epoch: int):
    sampler.set_epoch(epoch)
    return iter(sampler)


@SETTINGS
@given(index=language_indexes(), c=configs, epoch=st.integers(0, 3), stop=st.integers(0, 40))
def test_state_dict_resumes_mid_epoch(index: LanguageIndex, c: dict, epoch: int, stop: int) -> None:
    sampler = make_or_explain(index, c)
    if sampler is None:
        return
    rank = c["world"] - 1
    full = list(iter_epoch(make(index, c, rank=rank), epoch))
    first = make(index, c, rank=rank)
    it = iter_epoch(first, epoch)
    head = [batch for _, batch in zip(range(stop), it)]
    state = first.state_dict()
    resumed = make(index, c, rank=rank)  # (7) a fresh process loads the state
    resumed.load_state_dict(state)
    assert head + list(resumed) == full


@SETTINGS
@given(index=language_indexes(), c=configs, epoch=st.integers(0, 5))
def test_set_epoch_reshuffles_deterministically(index: LanguageIndex, c: dict, epoch: int) -> None:
    sampler = make_or_explain(index, c)
    if sampler is None:
        return
    again = make(index, c)
    for e in (epoch, 0, epoch):  # (8) any order of set_epoch calls gives the same epoch
        assert list(iter_epoch(sampler, e)) == list(iter_epoch(again, epoch if e == epoch else 0))


def xquad_like(n_items: int = 1200, n_langs: int = 6) -> LanguageIndex:
    return LanguageIndex([f"l{i}" for i in range(n_langs)], [tuple(range(n_langs))] * n_items,
                         [{lang: lang * 100_000 + item for lang in range(n_langs)} for item in range(n_items)])


def test_epochs_differ_and_cover_the_items() -> None:
    sampler = HybridBatchSampler(xquad_like(), SamplerConfig(batch_size=32, alpha=0.5))
    e0, e1 = sampler.plan(0), sampler.plan(1)
    assert [b.pairs for b in e0] != [b.pairs for b in e1]
    assert len(e0) == 1200 // 32 and len({i for b in e0 for i, _, _ in b.pairs}) == 37 * 32


def test_alpha_one_and_zero_are_the_baselines() -> None:
    for alpha, kind in ((1.0, "mono"), (0.0, "cross")):
        sampler = HybridBatchSampler(xquad_like(), SamplerConfig(batch_size=16, alpha=alpha))
        assert {b.kind for b in sampler.plan(0)} == {kind}


def test_bernoulli_mix_matches_alpha_on_average() -> None:
    sampler = HybridBatchSampler(xquad_like(4000), SamplerConfig(batch_size=8, alpha=0.3, mix="bernoulli", seed=1))
    kinds = [b.kind for e in range(5) for b in sampler.plan(e)]
    share = kinds.count("mono") / len(kinds)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(kinds))
    exact_counts = {sum(b.kind == "mono" for b in sampler.plan(e)) for e in range(5)}
    assert len(exact_counts) > 1  # Bernoulli: the count varies from epoch to epoch


@pytest.mark.parametrize("policy,temperature", [("proportional", 1.0), ("uniform", 1.0), ("temperature", 3.0)])
def test_language_policy_sets_the_mono_language_mix(policy: str, temperature: float) -> None:
    """(3) Languages of sizes 4000/2000/1000: the mono batches of many epochs follow the policy."""
    sizes = [4000, 2000, 1000]
    item_langs = [(0,)] * 2000 + [(0, 1)] * 1000 + [(0, 1, 2)] * 1000
    index = LanguageIndex(["a", "b", "c"], item_langs,
                          [{lang: lang * 10**6 + i for lang in langs} for i, langs in enumerate(item_langs)])
    assert index.counts.tolist() == sizes
    sampler = HybridBatchSampler(index, SamplerConfig(batch_size=4, alpha=1.0, language_policy=policy, language_temperature=temperature))
    mix = Counter()
    for epoch in range(4):  # early batches, before any language runs short
        mix.update(f"mono/{b.pairs[0][1]}" for b in sampler.plan(epoch)[:150])
    weights = language_weights(np.array(sizes), policy, temperature)
    expected = weights / weights.sum()
    observed = np.array([mix["mono/a"], mix["mono/b"], mix["mono/c"]]) / sum(mix.values())
    assert np.abs(observed - expected).max() < 0.05, (observed, expected)


def test_language_weights() -> None:
    counts = np.array([100, 25, 0])
    assert language_weights(counts, "proportional", 1.0).tolist() == [100, 25, 0]
    assert language_weights(counts, "uniform", 1.0).tolist() == [1, 1, 0]
    assert language_weights(counts, "temperature", 2.0).tolist() == [10, 5, 0]


def test_carry_puts_last_epochs_leftover_first() -> None:
    index = xquad_like(100, 3)
    drop = HybridBatchSampler(index, SamplerConfig(batch_size=16, alpha=0.5, remainder="drop"))
    carry = HybridBatchSampler(index, SamplerConfig(batch_size=16, alpha=0.5, remainder="carry"))
    assert [b.pairs for b in drop.plan(0)] == [b.pairs for b in carry.plan(0)]
    used0 = {i for b in carry.plan(0) for i, _, _ in b.pairs}
    leftover = set(range(100)) - used0
    assert len(leftover) == 100 - 6 * 16
    first = {i for b in carry.plan(1)[:1] for i, _, _ in b.pairs}
    assert leftover <= first


def test_mixed_availability_corpus_end_to_end() -> None:
    corpus = load_corpus("synthetic:items=600,languages=4,coverage=0.5,seed=2")
    index = LanguageIndex.from_corpus(corpus)
    sampler = HybridBatchSampler(index, SamplerConfig(batch_size=24, alpha=0.5), world_size=3, rank=1)
    batches = list(sampler)
    assert batches and all(len(b) == 8 for b in batches)
    for item, q, p in (key for b in batches for key in b):
        assert q in corpus.items[item].pairs and p in corpus.items[item].pairs


def test_mismatched_resume_is_refused() -> None:
    sampler = HybridBatchSampler(xquad_like(), SamplerConfig(batch_size=16, alpha=0.5))
    other = HybridBatchSampler(xquad_like(), SamplerConfig(batch_size=16, alpha=0.25))
    with pytest.raises(InputError, match="alpha"):
        other.load_state_dict(sampler.state_dict())
