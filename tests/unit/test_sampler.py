"""The hybrid batch sampler's properties, property-based over world sizes 1-8, batch
sizes, alpha, language availability and shared answers, plus explicit cases:

1. batches are pure (mono: one language; cross: query language != passage language);
2. the exact mix is round(alpha * N);
3. the language policy sets the mono language mix;
4. no item and no passage text twice in a contrastive batch;
5. the global batch sequence does not depend on the world size;
6. an item is a query at most once per epoch, every rank reads as many batches;
7. state_dict resumes mid-epoch exactly;
8. epochs are deterministic whatever the order of set_epoch calls;
9. no false negatives: no passage of a batch is relevant to another pair's query of the
   batch, with relevance taken from the evaluation's own retrieval view;
10. nor is any hard negative of a batch (a mined negative that is another pair's positive).

What a rank reads is ``plan(epoch).for_rank(*rank_slice())`` from the cursor on, the view
``hbt.batches.RankBatches`` holds (:func:`rank_reads`). Data the sampler rightly refuses
(a batch larger than a pool) is checked and then rejected, so hypothesis counts it as
invalid rather than as a pass.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from hbt.data import load_corpus
from hbt.data.corpus import Corpus, Item, Pair, retrieval_from_pairs
from hbt.errors import InputError
from hbt.sampling import HybridBatchSampler, LanguageIndex, PairKey, SamplerConfig, language_weights
from hbt.sampling.policy import cross_languages
from tests.helpers import XQUAD_R, index_of_corpus, index_of_lists, need


@dataclass
class Data:
    """Generated data: the sampler's index, and the same data as a corpus whose
    retrieval view (what evaluation scores against) gives the relevance."""

    index: LanguageIndex
    item_langs: list[tuple[int, ...]]
    passage_ids: list[dict[int, int]]
    corpus: Corpus

    def relevant(self) -> dict[tuple[str, str], frozenset[int]]:
        """(language, passage text) -> the items whose queries that candidate is relevant
        to, from the corpus' retrieval view (the evaluation's relevance)."""
        index_of = {item.id: n for n, item in enumerate(self.corpus.items)}
        rel: dict[tuple[str, str], set[int]] = defaultdict(set)
        for lang, candidates in self.corpus.retrieval.candidates.items():
            for c in candidates:
                rel[(lang, c.text)].update(index_of[i] for i in c.item_ids)
        return {k: frozenset(v) for k, v in rel.items()}


def text(pid: int) -> str:
    return f"passage {pid}"


@st.composite
def datasets(draw) -> Data:
    """Items in random subsets of 1-5 languages. Answers are shared the way XQuAD-R shares
    them: an item may take an earlier item's passage (same text) in some or all of the
    languages both have; passages also repeat within a language at random, and now and
    then the same text appears in two languages."""
    n_langs = draw(st.integers(2, 5))
    n_items = draw(st.integers(8, 160))
    coverage = draw(st.floats(0.3, 1.0))
    share_rate = draw(st.sampled_from([0.0, 0.2, 0.5]))
    dup_rate = draw(st.sampled_from([0.0, 0.1, 0.3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    item_langs: list[tuple[int, ...]] = []
    passage_ids: list[dict[int, int]] = []
    for item in range(n_items):
        langs = tuple(int(x) for x in np.flatnonzero(rng.random(n_langs) < coverage)) or (int(rng.integers(n_langs)),)
        ids = {lang: lang * 10_000 + item for lang in langs}
        if item and rng.random() < share_rate:  # the same answer as an earlier item, in some languages
            other = int(rng.integers(item))
            every = rng.random() < 0.5
            for lang in langs:
                if lang in passage_ids[other] and (every or rng.random() < 0.5):
                    ids[lang] = passage_ids[other][lang]
        for lang in langs:
            if item and rng.random() < dup_rate:  # a repeated passage within the language
                ids[lang] = lang * 10_000 + int(rng.integers(item))
            if rng.random() < 0.02:  # the same text in another language (a name, a number)
                ids[lang] = int(rng.integers(n_langs)) * 10_000 + int(rng.integers(item + 1))
        item_langs.append(langs)
        passage_ids.append(ids)
    names = [f"l{i}" for i in range(n_langs)]
    items = [Item(id=f"i{n}", title=f"t{n % 7}", pairs={names[lang]: Pair(query=f"query {n} {lang}", passage=text(ids[lang]))
                                                        for lang in langs})
             for n, (langs, ids) in enumerate(zip(item_langs, passage_ids))]
    corpus = Corpus(name="generated", items=items, retrieval=retrieval_from_pairs(items))
    return Data(index_of_lists(names, item_langs, passage_ids), item_langs, passage_ids, corpus)


def brute_groups(data: Data) -> list[int]:
    """Answer groups by plain union-find over (passage id) -> items."""
    parent = list(range(len(data.item_langs)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    first: dict[int, int] = {}
    for item, ids in enumerate(data.passage_ids):
        for lang in data.item_langs[item]:
            other = first.setdefault(ids[lang], item)
            a, b = find(item), find(other)
            parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(parent))]


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


def checked_sampler(data: Data, c: dict) -> HybridBatchSampler:
    """The sampler; when it refuses the data, the refusal is checked here (with the answer
    groups recomputed by brute force) and the example rejected: nothing to test on it."""
    try:
        return make(data.index, c)
    except InputError as e:
        assert e.where == "train.batch_size"
        batch = c["per_rank"] * c["world"]
        groups = brute_groups(data)
        smallest = min(len({groups[i] for i, ls in enumerate(data.item_langs) if lang in ls}) for lang in range(len(data.index.languages)))
        multilingual = len({groups[i] for i, ls in enumerate(data.item_langs) if len(ls) >= 2})
        assert (c["alpha"] > 0 and smallest < batch) or (c["alpha"] < 1 and multilingual < batch) or "can be formed" in e.problem
        reject()


def rank_reads(sampler: HybridBatchSampler) -> list[list[PairKey]]:
    """The pairs the sampler's rank reads of the current epoch, batch by batch from the
    cursor on: the engine's view, ``plan().for_rank(*rank_slice())``."""
    part = sampler.plan().for_rank(*sampler.rank_slice())
    return [part.pairs(b) for b in range(sampler.cursor, len(part))]


def epoch_reads(sampler: HybridBatchSampler, epoch: int) -> list[list[PairKey]]:
    sampler.set_epoch(epoch)
    return rank_reads(sampler)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=datasets(), c=configs, epoch=st.integers(0, 3))
def test_batches_are_pure_distinct_and_each_item_is_used_once(data: Data, c: dict, epoch: int) -> None:
    sampler = checked_sampler(data, c)
    names = {name: i for i, name in enumerate(data.index.languages)}
    seen_items: set[int] = set()
    for batch in sampler.plan(epoch):
        assert len(batch.pairs) == sampler.cfg.batch_size
        items = [i for i, _, _ in batch.pairs]
        assert len(set(items)) == len(items)  # (4) no item twice in a contrastive batch
        passages = [data.passage_ids[i][names[p]] for i, _, p in batch.pairs]
        assert len(set(passages)) == len(passages)  # (4) no passage text twice
        for item, q, p in batch.pairs:  # the languages exist for that item
            assert {names[q], names[p]} <= set(data.item_langs[item])
        if batch.kind == "mono":  # (1) pure
            assert len({q for _, q, _ in batch.pairs} | {p for _, _, p in batch.pairs}) == 1
        else:
            assert all(q != p for _, q, p in batch.pairs)
        assert not seen_items & set(items)  # (6) an item is a query at most once per epoch
        seen_items.update(items)


def false_negatives(batch_pairs, corpus: Corpus, relevant: dict) -> list[tuple]:
    """Every (query pair, passage pair) of one contrastive batch where the passage is
    relevant to the other pair's query, by the evaluation's relevance."""
    found = []
    for b, (item_b, _, plang) in enumerate(batch_pairs):
        passage = corpus.items[item_b].pairs[plang].passage
        for a, (item_a, qlang, _) in enumerate(batch_pairs):
            if a != b and item_a in relevant.get((plang, passage), ()):
                found.append((corpus.items[item_a].id, qlang, corpus.items[item_b].id, plang))
    return found


@SETTINGS
@given(data=datasets(), c=configs, epoch=st.integers(0, 3))
def test_no_passage_is_relevant_to_another_query_of_its_batch(data: Data, c: dict, epoch: int) -> None:
    """(9) The rule: no false negative in any contrastive batch. Checked on what the ranks
    actually read (their slices put back together), not only on the plan."""
    checked_sampler(data, c)
    relevant = data.relevant()
    reads = [epoch_reads(make(data.index, c, rank=r), epoch) for r in range(c["world"])]
    assert len({len(batches) for batches in reads}) == 1
    for slices in zip(*reads):
        batch = [key for part in slices for key in part]
        assert false_negatives(batch, data.corpus, relevant) == []


@st.composite
def with_negatives(draw) -> tuple[Data, list[dict[int, list[int]]], int]:
    """Generated data plus ``k`` hard negatives per pair, in the pair's passage language: a
    share of them another item's passage (as mining an article's other answers gives),
    the rest texts no item has as a positive."""
    data = draw(datasets())
    k = draw(st.integers(1, 3))
    rate = draw(st.sampled_from([0.1, 0.3, 0.6]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    by_lang: dict[int, list[int]] = defaultdict(list)
    for ids in data.passage_ids:
        for lang, pid in ids.items():
            by_lang[lang].append(pid)
    negatives = [{lang: [int(rng.choice(by_lang[lang])) if rng.random() < rate else 900_000 + int(rng.integers(10**5))
                         for _ in range(k)] for lang in langs} for langs in data.item_langs]
    return data, negatives, k


@SETTINGS
@given(drawn=with_negatives(), c=configs, epoch=st.integers(0, 3))
def test_no_hard_negative_is_relevant_to_another_query_of_its_batch(drawn, c: dict, epoch: int) -> None:
    """(10) with the properties (1), (2), (4), (6) still holding after the planner moved
    items apart. A plan it cannot mend is refused with a train.hard_negatives line; on
    these small generated pools that is common, and such examples count as invalid."""
    data, negatives, k = drawn
    index = index_of_lists(data.index.languages, data.item_langs, data.passage_ids, negatives)
    try:
        sampler = make(index, c)
        plan = sampler.plan(epoch)
    except InputError as e:
        assume(e.where != "train.hard_negatives")
        checked_sampler(data, c)  # the batch-size refusal, which the data without negatives gets too
        raise AssertionError(f"refused with hard negatives only: {e}") from e
    relevant = data.relevant()
    names = index.languages
    seen: set[int] = set()
    for batch in plan:
        items = [i for i, _, _ in batch.pairs]
        assert len(set(items)) == len(items) and not seen & set(items)
        seen.update(items)
        if batch.kind == "mono":
            assert len({q for _, q, _ in batch.pairs} | {p for _, _, p in batch.pairs}) == 1
        else:
            assert all(q != p for _, q, p in batch.pairs)
        assert false_negatives(batch.pairs, data.corpus, relevant) == []
        for a, (item_a, _, plang) in enumerate(batch.pairs):
            for neg in negatives[item_a][names.index(plang)]:
                hit = relevant.get((plang, text(neg)), frozenset()) - {item_a}
                assert not hit & set(items), (item_a, plang, neg, hit & set(items))
    if c["mix"] == "exact":
        assert sum(b.kind == "mono" for b in plan) == math.floor(c["alpha"] * len(plan) + 0.5)
    plain = make(data.index, c)  # the same batches as without negatives, up to the moves
    assert len(plain.plan(epoch)) == len(plan) and plain.mix(epoch) == sampler.mix(epoch)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_a_pair_is_kept_from_what_its_own_passage_languages_negatives_answer(alpha: float) -> None:
    """A pair trains with the negatives of its passage language, so those are the ones kept
    apart from the queries they answer: here item i's English negative is item i+1's
    English passage and its German one item i+2's German passage (every passage its own
    answer group), so a pair trained into German must not meet item i+2 and one into
    English not item i+1, over every epoch's moved items. Blocking by the query's language
    instead fails this."""
    n, en, de = 48, 0, 1
    negatives = [{en: [2 * ((i + 1) % n)], de: [2 * ((i + 2) % n) + 1]} for i in range(n)]
    index = index_of_lists(["en", "de"], [(en, de)] * n, [{en: 2 * i, de: 2 * i + 1} for i in range(n)], negatives)
    sampler = HybridBatchSampler(index, SamplerConfig(batch_size=8, alpha=alpha, seed=3))
    for epoch in range(6):
        for batch in sampler.plan(epoch):
            items = {i for i, _, _ in batch.pairs}
            for i, _, plang in batch.pairs:
                answered = (i + 1) % n if plang == "en" else (i + 2) % n
                assert answered not in items, (epoch, batch.label, i, plang)


@SETTINGS
@given(data=datasets())
def test_answer_groups_are_the_connected_items(data: Data) -> None:
    """The index's groups are exactly the components of "shares a passage text"."""
    assert data.index.group.tolist() == brute_groups(data)
    for item, langs in enumerate(data.item_langs):
        assert data.index.langs_of(item) == tuple(sorted(langs))
        for lang in range(len(data.index.languages)):
            assert data.index.passage_of(item, lang) == data.passage_ids[item].get(lang)


def test_the_index_takes_each_items_languages_ascending() -> None:
    """The training data arrives with each item's pairs sorted by language code, and every
    pair-aligned array (table rows, negatives) follows that order, so the index refuses
    any other order instead of re-sorting the pairs out of line with those arrays."""
    offsets, passages = np.array([0, 2, 3]), np.array([10, 11, 12])
    with pytest.raises(InputError, match="sorted by language code"):
        LanguageIndex.from_arrays(["a", "b"], offsets, np.array([1, 0, 0]), passages)
    with pytest.raises(InputError, match="lists a language twice"):
        LanguageIndex.from_arrays(["a", "b"], offsets, np.array([1, 1, 0]), passages)
    index = LanguageIndex.from_arrays(["a", "b"], offsets, np.array([0, 1, 0]), passages)  # a new item may start lower
    assert index.langs_of(0) == (0, 1) and index.langs_of(1) == (0,) and index.counts.tolist() == [2, 1]


@SETTINGS
@given(data=datasets(), c=configs)
def test_exact_mix_is_round_alpha_n(data: Data, c: dict) -> None:
    c = {**c, "mix": "exact"}
    sampler = checked_sampler(data, c)
    for epoch in range(3):
        batches = sampler.plan(epoch)
        mono = sum(b.kind == "mono" for b in batches)
        assert mono == math.floor(c["alpha"] * len(batches) + 0.5)  # (2)
        assert sampler.mix(epoch) == Counter(b.label for b in batches)


@SETTINGS
@given(data=datasets(), c=configs, epoch=st.integers(0, 2))
def test_global_sequence_is_independent_of_world_size(data: Data, c: dict, epoch: int) -> None:
    c = {**c, "world": 4 * max(1, c["world"] // 4) if c["world"] >= 4 else 4, "per_rank": max(1, c["per_rank"] // 2)}
    sampler = checked_sampler(data, c)
    sequences = []
    for world in (1, 2, 4):  # (5) the same contrastive batches whatever the world size
        per_rank = [epoch_reads(make(data.index, c, world=world, rank=r), epoch) for r in range(world)]
        lengths = {len(batches) for batches in per_rank}
        assert len(lengths) == 1  # (6) every rank reads the same number of batches
        sequences.append([sum((per_rank[r][b] for r in range(world)), []) for b in range(lengths.pop())])
    assert sequences[0] == sequences[1] == sequences[2]
    assert sequences[0] == [list(b.pairs) for b in sampler.plan(epoch)]


@SETTINGS
@given(data=datasets(), c=configs, epoch=st.integers(0, 3), stop=st.integers(0, 40))
def test_state_dict_resumes_mid_epoch(data: Data, c: dict, epoch: int, stop: int) -> None:
    checked_sampler(data, c)
    rank = c["world"] - 1
    full = epoch_reads(make(data.index, c, rank=rank), epoch)
    first = make(data.index, c, rank=rank)
    head = epoch_reads(first, epoch)[:stop]
    first.cursor = len(head)  # the engine moves the cursor past every batch it trained on
    resumed = make(data.index, c, rank=rank)  # (7) a fresh process loads the state
    resumed.load_state_dict(first.state_dict())
    assert head + rank_reads(resumed) == full


@SETTINGS
@given(data=datasets(), c=configs, epoch=st.integers(0, 5))
def test_set_epoch_reshuffles_deterministically(data: Data, c: dict, epoch: int) -> None:
    """(8) An epoch read after other epochs (and the carried items their plans left) is
    the epoch a fresh sampler reads first."""
    sampler = checked_sampler(data, c)
    fresh = {e: epoch_reads(make(data.index, c), e) for e in (0, epoch)}
    for e in (epoch, 0, epoch):
        assert epoch_reads(sampler, e) == fresh[e]


def xquad_like(n_items: int = 1200, n_langs: int = 6) -> LanguageIndex:
    return index_of_lists([f"l{i}" for i in range(n_langs)], [tuple(range(n_langs))] * n_items,
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
    index = index_of_lists(["a", "b", "c"], item_langs,
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


def test_cross_pair_languages_follow_the_policy() -> None:
    """(3) A cross pair's query language is a weighted draw among its item's languages,
    its passage language a weighted draw among the others: every item's draw of 3 epochs,
    with weights no policy gives equal counts (a policy on equal counts would be uniform)."""
    item_langs = [(0, 1, 2)] * 3000
    index = index_of_lists(["a", "b", "c"], item_langs, [{lang: lang * 10**6 + i for lang in range(3)} for i in range(3000)])
    weights = np.array([3.0, 2.0, 1.0])
    draws = [cross_languages(index, weights, seed=0, epoch=e) for e in range(3)]
    pairs = Counter(("abc"[q], "abc"[p]) for qlang, plang in draws for q, p in zip(qlang.tolist(), plang.tolist()))
    total = sum(pairs.values())
    w = dict(zip("abc", weights / weights.sum()))
    for (q, p), n in pairs.items():
        expected = w[q] * w[p] / (1 - w[q])
        assert abs(n / total - expected) < 0.02, (q, p, n / total, expected)


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
    sampler = HybridBatchSampler(index_of_corpus(corpus), SamplerConfig(batch_size=24, alpha=0.5), world_size=3, rank=1)
    batches = rank_reads(sampler)
    assert batches and all(len(b) == 8 for b in batches)
    for item, q, p in (key for b in batches for key in b):
        assert q in corpus.items[item].pairs and p in corpus.items[item].pairs


def test_mismatched_resume_is_refused() -> None:
    sampler = HybridBatchSampler(xquad_like(), SamplerConfig(batch_size=16, alpha=0.5))
    other = HybridBatchSampler(xquad_like(), SamplerConfig(batch_size=16, alpha=0.25))
    with pytest.raises(InputError, match="alpha"):
        other.load_state_dict(sampler.state_dict())


def test_one_huge_answer_group_is_spread_one_per_batch() -> None:
    """A quarter of 40,000 items share one passage in one language: each batch takes at
    most one of them, the rest of the epoch is unaffected, and planning stays fast."""
    n, rng = 40_000, np.random.default_rng(0)
    offsets = np.arange(0, 4 * n + 1, 4)
    langs = np.tile(np.arange(4), n)
    passages = np.arange(4 * n)
    huge = rng.choice(n, n // 4, replace=False)
    passages[huge * 4 + 2] = -1
    index = LanguageIndex.from_arrays(["a", "b", "c", "d"], offsets, langs, passages)
    assert len(np.unique(index.group[huge])) == 1 and len(np.unique(index.group)) == n - n // 4 + 1
    sampler = HybridBatchSampler(index, SamplerConfig(batch_size=64, alpha=0.5))
    plan = sampler.plan(0)
    in_huge = np.isin(plan.items, huge).sum(axis=1)
    assert in_huge.max() == 1
    assert 0.98 * (n - n // 4) / 63 <= len(plan) <= (n - n // 4) / 63 + 1


def test_items_sharing_an_answer_are_never_in_one_batch() -> None:
    """Pairs of items share their passage in one language only (as XQuAD-R's
    translations of one answer do): they never meet, in mono batches of any language
    or in cross batches."""
    n = 2000
    item_langs = [(0, 1, 2)] * n
    passage_ids = [{lang: lang * 10**6 + i for lang in range(3)} for i in range(n)]
    for i in range(0, n, 2):
        passage_ids[i + 1][2] = passage_ids[i][2]  # i and i + 1 share their answer in language 2
    index = index_of_lists(["a", "b", "c"], item_langs, passage_ids)
    for alpha in (0.0, 0.5, 1.0):
        sampler = HybridBatchSampler(index, SamplerConfig(batch_size=50, alpha=alpha))
        for epoch in range(3):
            plan = sampler.plan(epoch)
            assert len(plan) >= n // 50 - 1  # greedy: the last batch may meet both items of a pair
            for batch in plan:
                assert len({i // 2 for i, _, _ in batch.pairs}) == 50


def test_xquad_r_has_no_false_negatives() -> None:
    """XQuAD-R shares answer sentences between questions (656 of 1,190). Relevance is the
    evaluation's own (hbt.eval.run.EvalLayout over the corpus' retrieval view); 3 epochs of
    batch 32 at alpha 0, 0.5 and 1 hold no passage relevant to another query of its batch."""
    path = need(XQUAD_R)
    from hbt.eval.run import EvalLayout

    corpus = load_corpus(str(path))
    rs = corpus.retrieval
    layout = EvalLayout.of(rs)
    item_of_query = {q.id: q.item_id for qs in rs.queries.values() for q in qs}
    relevant: dict[str, set[int]] = {}
    for row, qid in enumerate(layout.query_ids):
        relevant.setdefault(item_of_query[qid], set(int(g) for g in layout.candidates.relevant[row] if g >= 0))
    candidates: dict[tuple[str, str], set[int]] = defaultdict(set)
    for gid, (t, lang) in enumerate(zip(layout.candidates.texts, layout.candidates.lang)):
        candidates[(layout.candidates.langs[lang], t)].add(gid)
    assert any(len(c.item_ids) > 1 for cs in rs.candidates.values() for c in cs), "no shared answers: the test would prove nothing"
    index = index_of_corpus(corpus)
    for alpha in (0.0, 0.5, 1.0):
        sampler = HybridBatchSampler(index, SamplerConfig(batch_size=32, alpha=alpha, seed=0))
        bad = []
        for epoch in range(3):
            plan = sampler.plan(epoch)
            assert len(plan) == 1190 // 32  # the rule costs no batch here
            for batch in plan:
                for b_item, _, plang in batch.pairs:
                    gids = candidates[(plang, corpus.items[b_item].pairs[plang].passage)]
                    bad += [(a_item, b_item, plang) for a_item, _, _ in batch.pairs
                            if a_item != b_item and relevant[corpus.items[a_item].id] & gids]
        assert bad == [], f"alpha {alpha}: {len(bad)} false-negative pairs"
