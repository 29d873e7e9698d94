"""Data layer: LAReQA and JSONL loaders, the synthetic corpus, title splits (``hbt data
stats`` is in tests/integration/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbt.data import holdout_titles, load_corpus, split_by_title
from hbt.data.synthetic import SyntheticSpec, synthetic_corpus
from tests.helpers import lareqa_doc, paragraph

XQUAD_CANDIDATES = {"ar": 1222, "de": 1276, "el": 1234, "en": 1180, "es": 1215, "hi": 1244,
                    "ru": 1219, "th": 852, "tr": 1167, "vi": 1209, "zh": 1196}


@pytest.fixture
def tiny_lareqa(tmp_path: Path) -> Path:
    """Two languages; q2 exists only in English; two questions share one sentence."""
    en = lareqa_doc([paragraph(["Alpha one.", "Beta two.", "Gamma three."],
                               [("q1", "what one?", 2), ("q2", "what two?", 12), ("q3", "two again?", 15)])])
    de = lareqa_doc([paragraph(["Eins alpha.", "Zwei beta."], [("q1", "was eins?", 0), ("q3", "was zwei?", 13)])])
    (tmp_path / "en.json").write_text(json.dumps(en))
    (tmp_path / "de.json").write_text(json.dumps(de))
    return tmp_path


def test_lareqa_pairs_candidates_and_relevance(tiny_lareqa: Path) -> None:
    corpus = load_corpus(str(tiny_lareqa))
    items = {item.id: item for item in corpus.items}
    assert sorted(items) == ["q1", "q2", "q3"]
    assert sorted(items["q1"].pairs) == ["de", "en"] and sorted(items["q2"].pairs) == ["en"]
    assert items["q1"].pairs["en"].passage == "Alpha one."
    assert items["q3"].pairs["en"].passage == "Beta two." and items["q3"].pairs["de"].passage == "Zwei beta."
    en = {c.text: c.item_ids for c in corpus.retrieval.candidates["en"]}
    assert en == {"Alpha one.": {"q1"}, "Beta two.": {"q2", "q3"}, "Gamma three.": frozenset()}
    assert [q.item_id for q in corpus.retrieval.queries["de"]] == ["q1", "q3"]


def test_xquad_r_counts(xquad_r: Path) -> None:
    corpus = load_corpus(str(xquad_r))
    assert len(corpus.items) == 1190
    assert {lang: len(q) for lang, q in corpus.retrieval.queries.items()} == {lang: 1190 for lang in XQUAD_CANDIDATES}
    assert {lang: len(c) for lang, c in corpus.retrieval.candidates.items()} == XQUAD_CANDIDATES
    # Every question has exactly one relevant candidate per language.
    for lang, cands in corpus.retrieval.candidates.items():
        assert sum(len(c.item_ids) for c in cands) == 1190, lang


def test_jsonl_loader(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "a", "lang": "en", "query": "q a", "positive": "p a", "negatives": ["n1"], "title": "t1"},
        {"id": "a", "lang": "fr", "query": "q a fr", "positive": "p a fr"},
        {"id": "b", "lang": "en", "query": "q b", "positive": "p a"},  # shares a's passage
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    corpus = load_corpus(str(path))
    assert corpus.languages == ["en", "fr"]
    a = next(i for i in corpus.items if i.id == "a")
    assert a.title == "t1" and a.pairs["en"].negatives == ("n1",)
    en = corpus.retrieval.candidates["en"]
    assert len(en) == 1 and en[0].item_ids == {"a", "b"}


def test_one_relevance_for_evaluation_and_mining(tmp_path: Path) -> None:
    """hbt.relevance: a shared positive is one candidate answering both items; the layout
    lists, per query, its relevant candidates in every language (evaluation) and, per
    pool, those of that pool alone (mining's exclusion)."""
    from hbt.relevance import CandidateLayout, positive_pools

    pools = positive_pools([("en", "a", "t1", "p"), ("fr", "a", "t1", "p fr"), ("en", "b", "t2", "p"), ("en", "c", "t3", "q")])
    assert pools == {"en": [("p", "t1", frozenset({"a", "b"})), ("q", "t3", frozenset({"c"}))],
                     "fr": [("p fr", "t1", frozenset({"a"}))]}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "lang": lang, "query": f"{i} {lang}", "positive": text, "title": t}) + "\n"
                            for lang, i, t, text in [("en", "a", "t1", "p"), ("fr", "a", "t1", "p fr"), ("en", "b", "t2", "p"),
                                                     ("en", "c", "t3", "q")]))
    rs = load_corpus(str(path)).retrieval
    layout = CandidateLayout.of(rs.candidates, ["a", "b", "c", "x"])
    assert layout.langs == ["en", "fr"] and layout.texts == ["p", "q", "p fr"] and layout.start.tolist() == [0, 2, 3]
    assert layout.lang.tolist() == [0, 0, 1] and layout.ids == ["en/0", "en/1", "fr/0"]
    assert layout.relevant.tolist() == [[0, 2], [0, -1], [1, -1], [-1, -1]]
    assert layout.relevant_in(0) == [[0], [0], [1], []] and layout.relevant_in(1, slice(0, 2)) == [[2], []]
    only_fr = CandidateLayout.of(rs.candidates, ["a"], ["fr"])
    assert only_fr.texts == ["p fr"] and only_fr.relevant.tolist() == [[0]]


def test_synthetic_is_deterministic_and_scripts_are_disjoint() -> None:
    spec = SyntheticSpec(items=300, languages=12, seed=3)
    a, b = synthetic_corpus(spec), synthetic_corpus(spec)
    assert a.fingerprint() == b.fingerprint()
    assert synthetic_corpus(SyntheticSpec(items=300, languages=12, seed=4)).fingerprint() != a.fingerprint()
    chars: dict[str, set[str]] = {}
    for item in a.items:
        for lang, pair in item.pairs.items():
            chars.setdefault(lang, set()).update((pair.query + pair.passage).replace(" ", ""))
    langs = sorted(chars)
    assert len(langs) == 12
    for i, x in enumerate(langs):
        for y in langs[i + 1:]:
            assert not chars[x] & chars[y], (x, y)


def test_synthetic_coverage_leaves_items_out_of_languages() -> None:
    corpus = load_corpus("synthetic:items=400,languages=5,coverage=0.5")
    sizes = [len(item.pairs) for item in corpus.items]
    assert min(sizes) >= 1 and max(sizes) <= 5 and 2.0 < sum(sizes) / len(sizes) < 3.0


def test_title_split_shares_no_item_or_candidate(xquad_r: Path) -> None:
    corpus = load_corpus(str(xquad_r))
    held = holdout_titles(corpus, "0.2", seed=0, key="data.holdout_titles")
    assert len(held) == 10 and held == holdout_titles(corpus, 0.2, seed=0, key="data.holdout_titles")
    train, test = split_by_title(corpus, held, key="data.holdout_titles")
    assert not {i.id for i in train.items} & {i.id for i in test.items}
    assert len(train.items) + len(test.items) == 1190
    train_cands = {c.id for cs in train.retrieval.candidates.values() for c in cs}
    test_cands = {c.id for cs in test.retrieval.candidates.values() for c in cs}
    assert not train_cands & test_cands and len(train_cands) + len(test_cands) == 13014
    test_items = {i.id for i in test.items}
    assert all(q.item_id in test_items for qs in test.retrieval.queries.values() for q in qs)
    explicit = holdout_titles(corpus, "Warsaw,Normans", key="data.holdout_titles")
    assert explicit == ["Normans", "Warsaw"]


REPLICATION_HELD_OUT = ["American_Broadcasting_Company", "Chloroplast", "Civil_disobedience", "Construction", "Genghis_Khan",
                        "Huguenot", "Imperialism", "Kenya", "Newcastle_upon_Tyne", "Normans"]


@pytest.mark.parametrize("seed", [0, 7])
def test_replication_split_is_the_documented_one_for_every_seed(xquad_r: Path, seed: int, tmp_path: Path) -> None:
    """configs/replication/xquad-r.yaml and docs/REPLICATION.md name these 10 titles; the
    split must not move with run.seed, or the seeds of a sweep would be tested on
    different articles."""
    from hbt.config import load_config
    from hbt.train import training_data

    for model in ("tiny", "me5-small", "minilm"):
        cfg = load_config(f"configs/replication/{model}.yaml", [f"run.seed={seed}", f"data.cache_dir={tmp_path}"])
        data = training_data(cfg)
        held = data.held_out
        assert held is not None and sorted(held.titles) == REPLICATION_HELD_OUT
        assert (data.n_items, len(held.items)) == (961, 229)


def test_eval_holdout_titles_evaluates_only_those_titles_of_eval_data() -> None:
    """``eval.holdout_titles`` is ``hbt eval --holdout-titles`` inside a run: the run trains on
    other data (e.g. pairs mined from the training titles) and evaluates the held-out ones."""
    from hbt.config import load_config
    from hbt.errors import InputError
    from hbt.train import evaluation_set

    data = "synthetic:items=200,languages=2"
    cfg = load_config(None, [f"eval.data={data}", "eval.holdout_titles=0.25", "data.holdout_seed=3"])
    rs = evaluation_set(cfg, data=None)  # type: ignore[arg-type]  # eval.data is set: the training data is not read
    corpus = load_corpus(data)
    held = set(holdout_titles(corpus, 0.25, seed=3, key="eval.holdout_titles"))
    title = {item.id: item.title for item in corpus.items}
    asked = {q.item_id for qs in rs.queries.values() for q in qs}
    assert len(held) == 10 and {title[i] for i in asked} == held
    assert len(asked) == sum(t in held for t in title.values())
    with pytest.raises(InputError, match="eval.holdout_titles.*needs eval.data"):
        load_config(None, ["eval.holdout_titles=0.25"])
