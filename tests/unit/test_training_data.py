"""Training data from shards, saved datasets and mixtures: one table, compact arrays.

Every format must give the sampler the same items, languages and answer groups as the
small in-memory path does for the same rows, so these tests write one corpus in each
format and compare what comes back. configs/paper-recipe.yaml trained on such shards is
tests/integration/test_paper_recipe.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from hbt.batches import RankBatches, stream
from hbt.data import load_corpus
from hbt.data.sources import Source
from hbt.data.tokenize import PairTokenizer, TextSpec
from hbt.data.training import load_training_data
from hbt.errors import InputError
from hbt.sampling import HybridBatchSampler, LanguageIndex, SamplerConfig
from tests.helpers import rows_of, write_parquet


def write_jsonl_shards(rows: list[dict], folder: Path, shards: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        (folder / f"part-{n}.jsonl").write_text("".join(json.dumps(rows[i]) + "\n" for i in part))
    return folder


def load(path: str | Path, tmp: Path, **source) -> "object":
    return load_training_data([Source(path=str(path), **source)], str(tmp / "cache"))


def groups_as_ids(data) -> list[frozenset[str]]:
    index = LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages)
    ids = data.item_ids(np.arange(data.n_items))
    groups: dict[int, set[str]] = {}
    for item, g in enumerate(index.group.tolist()):
        groups.setdefault(g, set()).add(ids[item])
    return sorted(frozenset(g) for g in groups.values())


def summary(data) -> tuple:
    ids = data.item_ids(np.arange(data.n_items))
    langs = [tuple(data.languages[c] for c in data.langs[data.offsets[i]:data.offsets[i + 1]]) for i in range(data.n_items)]
    return sorted(zip(ids, langs)), data.languages


def test_every_format_gives_the_same_items_and_languages(tmp_path: Path) -> None:
    rows = rows_of()
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = load(tmp_path / "one.jsonl", tmp_path)
    parquet = write_parquet(rows, tmp_path / "pq")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for path in (parquet, f"{parquet}/part-*.parquet", write_jsonl_shards(rows, tmp_path / "js"), tmp_path / "saved"):
        data = load(path, tmp_path)
        assert summary(data) == summary(reference), path
        assert groups_as_ids(data) == groups_as_ids(reference), path
        assert data.fingerprint != reference.fingerprint or path == tmp_path / "saved"


def test_sources_with_different_optional_columns_mix(tmp_path: Path) -> None:
    """A source with hard negatives and titles beside one without: each keeps its own
    columns; reads give the missing ones as empty negatives."""
    plain = [{k: v for k, v in r.items() if k != "title"} for r in rows_of("synthetic:items=100,languages=2,seed=3")]
    sources = [Source(path="synthetic:items=100,languages=2,seed=1", name="syn"),
               Source(path=str(write_parquet(plain, tmp_path / "plain")), name="plain")]
    data = load_training_data(sources, str(tmp_path / "cache"))
    first = data.rows[data.offsets[:-1][data.source == 0][:1]]
    last = data.rows[data.offsets[:-1][data.source == 1][:1]]
    assert data.column("negatives", np.r_[first, last]) == [[], []]
    assert data.column("title", np.r_[first, last])[1] is None and data.missing_negatives() == len(data.rows)


@pytest.mark.parametrize("sources, holdout, message", [
    ([Source(path="synthetic"), Source(path="synthetic:seed=2")], 0.2, "data.holdout_titles"),
    ([Source(path="synthetic", name="a"), Source(path="synthetic:seed=2", name="a")], None, "two sources named 'a'"),
])
def test_mixture_config_errors(tmp_path: Path, sources, holdout, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_training_data(sources, str(tmp_path / "cache"), holdout=holdout)


def test_column_mapping_and_missing_columns(tmp_path: Path) -> None:
    rows = rows_of()
    folder = write_parquet(rows, tmp_path / "pq", rename={"id": "qid", "positive": "answer"})
    data = load(folder, tmp_path, columns={"id": "qid", "positive": "answer"})
    assert data.n_items == len({r["id"] for r in rows})
    with pytest.raises(InputError, match=r"no column 'id'.*columns: \{id: <your column>\}"):
        load(folder, tmp_path)
    with pytest.raises(InputError, match="no column 'qid2'"):
        load(folder, tmp_path, columns={"id": "qid2", "positive": "answer"})
    with pytest.raises(InputError, match="unknown hbt column 'passage'"):
        load(folder, tmp_path, columns={"passage": "answer"})


@pytest.mark.parametrize("change, message", [
    (lambda r: r[5].update(query=""), "row 6: column 'query' is empty"),
    (lambda r: r[7].update(lang="xx"), "column 'lang': unknown language code 'xx'"),
    (lambda r: r.append(dict(r[0])), "item 'syn000000' already has a"),
])
def test_bad_rows_are_one_line_errors_naming_the_source(tmp_path: Path, change, message: str) -> None:
    rows = rows_of()
    change(rows)
    folder = write_parquet(rows, tmp_path / "pq", shards=1)
    with pytest.raises(InputError, match=message) as e:
        load(folder, tmp_path)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)


def test_language_filter_and_holdout_by_title(tmp_path: Path) -> None:
    rows = rows_of()
    folder = write_parquet(rows, tmp_path / "pq")
    data = load_training_data([Source(path=str(folder), languages="en,el")], str(tmp_path / "cache"),
                              holdout=0.25, holdout_seed=1)
    assert data.languages == ["el", "en"]
    held = data.held_out
    train_titles = set(data.column("title", data.rows))
    assert held is not None and train_titles and not train_titles & set(held.titles)
    assert {r["title"] for r in rows} == train_titles | set(held.titles)
    assert {q.item_id for qs in held.retrieval.queries.values() for q in qs} == {i.id for i in held.items}


def test_the_held_out_corpus_is_its_rows_read_as_one_jsonl_file(tmp_path: Path) -> None:
    """The held-out rows of a shard source become a corpus through the one table ->
    corpus converter: the same items and retrieval view as those rows in a JSONL file
    (whose loader checks every row), and the same checks: a bad language code in a
    held-out row (which training, reading only its own rows, never looks at) is an error."""
    rows = rows_of()
    folder = write_parquet(rows, tmp_path / "pq", shards=1)
    data = load_training_data([Source(path=str(folder))], str(tmp_path / "cache"), holdout=0.2)
    held = data.held_out
    titles = set(held.titles)
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["title"] in titles))
    expected = load_corpus(str(tmp_path / "held.jsonl"))
    assert held.name == f"{folder}-heldout" and held.items == expected.items and held.retrieval == expected.retrieval
    bad = next(n for n, r in enumerate(rows) if r["title"] in titles)
    rows[bad]["lang"] = "xx"
    folder = write_parquet(rows, tmp_path / "bad", shards=1)
    with pytest.raises(InputError, match=rf"bad row {bad + 1} field 'lang': unknown language code 'xx'"):  # rows count from 1
        load_training_data([Source(path=str(folder))], str(tmp_path / "cache"), holdout=sorted(titles))


def test_pair_rows_are_the_rows_of_those_items_and_languages(tmp_path: Path) -> None:
    data = load(write_parquet(rows_of(), tmp_path / "pq"), tmp_path)
    items = np.repeat(np.arange(data.n_items), np.diff(data.offsets))
    order = np.random.default_rng(0).permutation(len(items))
    items, langs = items[order], np.asarray(data.langs)[order]
    rows = data.pair_rows(items, langs)
    assert rows.dtype == np.int64 and len(data.pair_rows(items[:0], langs[:0])) == 0
    assert data.column("id", rows) == data.item_ids(items)
    assert data.column("lang", rows) == [data.languages[c] for c in langs]


def test_the_index_is_built_once_and_read_from_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first load builds the index and reports it (``indexed ...`` on stderr, the
    one-off line users see); the next load of the same data reads it from the cache
    without a report, and other data gets an index of its own."""
    folder = write_parquet(rows_of(), tmp_path / "pq")
    first = load(folder, tmp_path)
    assert "indexed " in capsys.readouterr().err
    second = load(folder, tmp_path)
    assert "indexed " not in capsys.readouterr().err, "rebuilt a cached index"
    assert np.array_equal(first.passages, second.passages) and isinstance(second.rows, np.ndarray)
    other = load(write_parquet(rows_of("synthetic:items=200,languages=3,seed=5"), tmp_path / "pq2"), tmp_path)
    assert other.fingerprint != first.fingerprint and "indexed " in capsys.readouterr().err


def mixture(tmp_path: Path, weights: tuple[float, float] = (1.0, 1.0)):
    translated = write_parquet(rows_of("synthetic:items=400,languages=3,seed=1"), tmp_path / "translated")
    english = [r for r in rows_of("synthetic:items=300,languages=1,seed=2")]
    en_only = write_parquet(english, tmp_path / "english")
    sources = [Source(path=str(translated), name="translated", weight=weights[0]),
               Source(path=str(en_only), name="english", weight=weights[1])]
    return load_training_data(sources, str(tmp_path / "cache"))


def sampler_of(data, same_source: bool, alpha: float = 0.5, batch: int = 16, seed: int = 0) -> HybridBatchSampler:
    index = LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages, data.source,
                                      data.source_names, data.weights)
    return HybridBatchSampler(index, SamplerConfig(batch_size=batch, alpha=alpha, seed=seed, same_source=same_source))


@pytest.mark.parametrize("same_source", [False, True])
def test_mixture_batches_are_pure_and_same_source_keeps_sources_apart(tmp_path: Path, same_source: bool) -> None:
    data = mixture(tmp_path)
    assert data.source_names == ["translated", "english"]
    # the same id in two sources is two items
    assert data.n_items == 700
    sampler = sampler_of(data, same_source)
    mixed = 0
    for epoch in range(2):
        plan = sampler.plan(epoch)
        for b in range(len(plan)):
            sources = set(data.source[plan.items[b]].tolist())
            mixed += len(sources) > 1
            if plan.mono[b]:
                assert len(set(plan.qlang[b].tolist()) | set(plan.plang[b].tolist())) == 1
            else:
                assert (plan.qlang[b] != plan.plang[b]).all() and sources == {0}  # English-only items cannot cross
        if same_source:
            assert mixed == 0
    assert same_source or mixed > 0
    english = set(np.flatnonzero(data.source == 1).tolist())
    used = set(sampler.plan(0).items.ravel().tolist()) & english
    assert len(used) >= (300 - 16 if same_source else 200)  # English-only items fill monolingual batches (not ~1 batch)


def test_source_weight_uses_a_fresh_share_of_its_items_each_epoch(tmp_path: Path) -> None:
    data = mixture(tmp_path, weights=(1.0, 0.5))
    sampler = sampler_of(data, same_source=True, alpha=1.0)
    english = np.flatnonzero(data.source == 1)
    used = [set(sampler.plan(e).items.ravel().tolist()) & set(english.tolist()) for e in range(2)]
    assert all(len(u) <= 150 for u in used) and all(len(u) >= 150 - 16 for u in used)  # round(0.5 * 300), less a batch
    assert used[0] != used[1]
    with pytest.raises(InputError, match="weight"):
        load_training_data([Source(path="synthetic", weight=1.5)], str(tmp_path / "c"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 11), min_size=60, max_size=60), st.integers(0, 2**16))
def test_no_batch_holds_a_passage_relevant_to_another_pairs_query(tmp_path_factory, answers: list[int], seed: int) -> None:
    """Items with equal answers (in any language) stay apart in every batch, through
    the Parquet path and its hashed passage ids."""
    rows = []
    for n, answer in enumerate(answers):
        for lang in ("de", "en", "fr"):
            text = f"answer {answer} in {lang}" if (n + answer) % 3 else f"answer {n} in {lang}"
            rows.append({"id": f"q{n}", "lang": lang, "query": f"question {n} {lang}", "positive": text})
    tmp = tmp_path_factory.mktemp("fn")
    data = load(write_parquet(rows, tmp / "pq", shards=2), tmp)
    try:
        sampler = sampler_of(data, same_source=False, alpha=0.5, batch=4, seed=seed)
    except InputError as e:
        # Rightly refused only when the items (each in every language) form fewer answer
        # groups than a batch holds: nothing to test on, so the example counts as invalid.
        groups = len({a if (n + a) % 3 else n for n, a in enumerate(answers)})  # item n's texts say this number
        assert e.where == "train.batch_size" and groups < 4, (e, groups)
        reject()
    passages_of = {}
    for r in rows:
        passages_of.setdefault(r["id"], set()).add(r["positive"])
    for epoch in range(2):
        plan = sampler.plan(epoch)
        for b in range(len(plan)):
            ids = data.item_ids(plan.items[b])
            for i, a in enumerate(ids):
                for c in ids[i + 1:]:
                    assert not passages_of[a] & passages_of[c], (a, c)


@pytest.mark.parametrize("same_source", [False, True])
def test_hard_negatives_never_share_a_batch_with_the_query_they_answer(tmp_path: Path, same_source: bool) -> None:
    """Mined-style negatives (other items' answers in the same language, as mining an
    article gives) through Parquet: with train.hard_negatives k the sampler keeps each
    pair's first k negatives out of every batch holding an item they answer, in any
    language; negatives beyond k are not what training sees, so they do not count."""
    rng = np.random.default_rng(0)
    rows = rows_of("synthetic:items=240,languages=3,seed=5")
    by_lang: dict[str, list[str]] = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).append(r["positive"])
    for r in rows:  # two negatives: an answer of another item, then a text no item answers with
        r["negatives"] = [str(rng.choice(by_lang[r["lang"]])), f"unrelated {r['id']} {r['lang']}"]
    half = len(rows) // 2
    sources = [Source(path=str(write_parquet(rows[:half], tmp_path / "a")), name="a"),
               Source(path=str(write_parquet(rows[half:], tmp_path / "b")), name="b")]
    data = load_training_data(sources, str(tmp_path / "cache"), hard_negatives=1)
    answered_by = {}
    for r in rows:
        answered_by.setdefault(r["positive"], set()).add(r["id"])
    index = LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages, data.source,
                                      data.source_names, data.weights, data.negatives)
    assert len(index.blocks) > 100  # most items' first negative is someone's answer
    sampler = HybridBatchSampler(index, SamplerConfig(batch_size=16, alpha=0.5, seed=3, same_source=same_source))
    plain = sampler_of(data, same_source, seed=3)
    moved = 0
    for epoch in range(3):
        plan = sampler.plan(epoch)
        for b in range(len(plan)):
            ids = data.item_ids(plan.items[b])
            rows_b = [int(data.rows[data.offsets[i] + np.searchsorted(data.langs[data.offsets[i]:data.offsets[i + 1]], p)])
                      for i, p in zip(plan.items[b].tolist(), plan.plang[b].tolist())]
            for item_id, negs in zip(ids, data.column("negatives", np.array(rows_b))):
                assert not (answered_by.get(negs[0], set()) - {item_id}) & set(ids), (item_id, negs[0])
            assert not same_source or len(set(data.source[plan.items[b]].tolist())) == 1
        moved += int((plan.items != plain.plan(epoch).items).any(axis=1).sum())
        assert plan.mix() == plain.plan(epoch).mix()
    # what a rank reads: every pair's negatives are its passage language's row's (the second
    # negative names that row), in cross-lingual pairs too
    plan, cross = sampler.plan(0), 0
    batches = RankBatches(plan, 0, 16, data, PairTokenizer(None, TextSpec(), hard_negatives=1))
    for b in range(len(plan)):
        _, _, negatives = batches.texts(b)
        ids, plangs = data.item_ids(plan.items[b]), [data.languages[p] for p in plan.plang[b].tolist()]
        assert [negs[1] for negs in negatives] == [f"unrelated {i} {lang}" for i, lang in zip(ids, plangs)]
        cross += int((plan.qlang[b] != plan.plang[b]).sum())
    assert cross > 50
    assert moved > 0  # the rule had work to do here
    # the hashes are cached beside the index, per k
    assert sorted(p.name for p in Path(tmp_path / "cache").glob("index-*/negatives-*")) == [
        "negatives-1-hashes.npy", "negatives-1-offsets.npy"]


def test_workers_deliver_the_same_batches_in_order(tmp_path: Path) -> None:
    from hbt.model import train_tokenizer

    data = load(write_parquet(rows_of(), tmp_path / "pq"), tmp_path)
    plan = sampler_of(data, same_source=False).plan(0)
    tokenizer = train_tokenizer(data.texts(data.rows), 300, 64)
    batches = RankBatches(plan, 8, 16, data, PairTokenizer(tokenizer, TextSpec()))
    inline = [(b, batch) for b, batch, _ in stream(batches, 3, workers=0, prefetch=1)]
    forked = [(b, batch) for b, batch, _ in stream(batches, 3, workers=2, prefetch=2)]
    assert [b for b, _ in inline] == [b for b, _ in forked] == list(range(3, len(plan)))
    for (_, x), (_, y) in zip(inline, forked):
        assert all((x[k]["input_ids"] == y[k]["input_ids"]).all() for k in ("query", "passage"))
    queries, _, _ = batches.texts(3)
    ids = data.item_ids(plan.items[3, 8:16])
    by_key = {(r["id"], r["lang"]): r["query"] for r in rows_of()}
    assert queries == [by_key[(i, data.languages[q])] for i, q in zip(ids, plan.qlang[3, 8:16].tolist())]


def test_shards_as_a_corpus_for_mining_map_columns_like_a_source(tmp_path: Path) -> None:
    """``hbt mine --data SHARDS --columns ...`` reads what a training source with that
    mapping reads: the same items, languages and texts."""
    from hbt.commands import parse_columns
    from hbt.data.table import table_corpus

    rows = rows_of("synthetic:items=60,languages=2,seed=6")
    folder = write_parquet(rows, tmp_path / "renamed", rename={"id": "qid", "query": "question"})
    corpus = table_corpus(f"{folder}/*.parquet", str(tmp_path / "cache"), parse_columns("id=qid, query=question"))
    got = sorted((item.id, lang, p.query, p.passage) for item in corpus.items for lang, p in item.pairs.items())
    assert got == sorted((r["id"], r["lang"], r["query"], r["positive"]) for r in rows) and corpus.name == "renamed"
    with pytest.raises(InputError, match="no column 'id'; map it"):  # unmapped: the error says how
        table_corpus(str(folder), str(tmp_path / "cache"))
    with pytest.raises(InputError, match="--columns"):
        parse_columns("id")
