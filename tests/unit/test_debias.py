"""Centring (hbt/eval/debias.py) against a plain-numpy reference: the per-language means,
the centred and re-normalised embeddings, a whole evaluation's centred metrics, the
training sample, and the refusals. Several ranks: tests/integration/test_debias.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.data import load_corpus
from hbt.dist import detect
from hbt.errors import InputError
from hbt.eval.debias import (PREFIX, Centering, TrainingTexts, center, centering_for, corpus_texts, language_means,
                             language_sums, sample_pairs)

ONE = detect({})  # a single process: no collective runs


def reference_center(emb: np.ndarray, lang: np.ndarray) -> np.ndarray:
    """Each language's rows less their own mean, then each row divided by its norm: a loop
    over languages in float64, nothing shared with hbt's code."""
    out = np.zeros(emb.shape)
    for code in set(lang.tolist()):
        rows = lang == code
        centred = emb[rows].astype(np.float64) - emb[rows].astype(np.float64).mean(axis=0)
        out[rows] = centred / np.maximum(np.sqrt((centred ** 2).sum(axis=1, keepdims=True)), 1e-12)
    return out


@st.composite
def embeddings(draw) -> tuple[np.ndarray, np.ndarray, int]:
    """Unit rows with a per-language offset (the bias centring removes), 1-4 languages,
    each with at least two rows, in any order (not sorted by language)."""
    n_lang = draw(st.integers(1, 4))
    dim = draw(st.integers(2, 12))
    sizes = draw(st.lists(st.integers(2, 15), min_size=n_lang, max_size=n_lang))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lang = rng.permutation(np.repeat(np.arange(n_lang), sizes))
    emb = rng.standard_normal((len(lang), dim)) + 3 * rng.standard_normal((n_lang, dim))[lang]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), lang, n_lang


@settings(max_examples=60, deadline=None)
@given(embeddings(), st.integers(1, 7))
def test_centring_matches_the_numpy_reference(case, chunk: int) -> None:
    emb, lang, n_lang = case
    means, counts = language_means(emb, lang, n_lang, ONE)
    assert counts.tolist() == np.bincount(lang, minlength=n_lang).tolist()
    got = center(emb, lang, means, chunk=chunk)  # in chunks of any size: the same rows
    assert got.dtype == np.float32 and got.shape == emb.shape
    np.testing.assert_allclose(got, reference_center(emb, lang), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # cosines again: FAISS inner product scores them
    for code in range(n_lang):  # what centring is for: no language keeps a shared direction
        assert np.abs((got[lang == code] * np.linalg.norm(emb[lang == code] - means[code], axis=1)[:, None]).sum(0)).max() < 1e-4


@settings(max_examples=40, deadline=None)
@given(embeddings(), st.integers(1, 4))
def test_shards_sums_add_up_to_the_pool_means(case, world: int) -> None:
    """What the ranks gather: each contiguous shard's sums and counts; their totals are
    the whole pool's means, whatever a shard holds (even no row of some language)."""
    emb, lang, n_lang = case
    parts = [language_sums(emb[a:b], lang[a:b], n_lang) for a, b in
             (np.linspace(0, len(lang), world + 1).astype(int)[i:i + 2] for i in range(world))]
    sums, counts = np.sum([s for s, _ in parts], axis=0), np.sum([c for _, c in parts], axis=0)
    whole, _ = language_means(emb, lang, n_lang, ONE)
    np.testing.assert_allclose(sums / counts[:, None], whole, atol=1e-12)
    np.testing.assert_allclose(whole, [emb[lang == c].astype(np.float64).mean(0) for c in range(n_lang)], atol=1e-12)


def test_a_language_without_rows_is_left_as_it_is() -> None:
    emb = np.eye(3, dtype=np.float32)
    means, counts = language_means(emb, np.zeros(3, dtype=np.int64), 2, ONE)
    assert counts.tolist() == [3, 0] and not means[1].any()


def test_evaluation_centres_queries_and_candidates_by_their_own_language() -> None:
    """A whole evaluation's centred metrics are those of the reference-centred embeddings
    ranked as the plain ones are, and its plain metrics are the uncentred evaluation's."""
    from hbt.eval.encode import encode
    from hbt.eval.run import EvalLayout, evaluate, metrics_of, search_and_rank, summarize
    from tests.helpers import EVAL_SPEC, eval_model_and_tokenizer

    model, tokenizer, rs = eval_model_and_tokenizer()
    plain = evaluate(model, tokenizer, rs, EVAL_SPEC, ONE, k=10, progress=False)
    got = evaluate(model, tokenizer, rs, EVAL_SPEC, ONE, k=10, progress=False, centering=Centering())
    for key in ("mono", "cross", "multi", "bias"):
        assert got[key] == plain[key]
    assert (got["topk"]["lists"][0][1] == plain["topk"]["lists"][0][1]).all()

    layout = EvalLayout.of(rs)
    cands = layout.candidates
    queries = encode(model, tokenizer, layout.query_texts, EVAL_SPEC.max_query_length)
    passages = encode(model, tokenizer, cands.texts, EVAL_SPEC.max_passage_length)
    q, c = reference_center(queries, layout.query_lang), reference_center(passages, cands.lang)
    counts, _, _ = search_and_rank(q.astype(np.float32), c.astype(np.float32), 0, layout.query_lang, cands.lang,
                                   cands.relevant, ONE, k=0)
    want = metrics_of(layout, counts, ("mono", "cross", "multi"))
    for key in ("mono", "cross", "multi", "bias"):
        assert got["centered"][key] == want[key]
    assert got["centered"]["means"] == "pool" and got["centered"]["transductive"] is True
    assert {PREFIX + k: v for k, v in summarize(want).items()}.items() <= got["summary"].items()
    assert set(got["summary"]) == set(plain["summary"]) | {PREFIX + k for k in plain["summary"]}


def test_the_training_sample_is_seeded_and_per_language() -> None:
    langs = np.repeat([0, 1, 2], [10, 3, 7])
    picked = sample_pairs(langs, 5)
    assert np.bincount(langs[picked]).tolist() == [5, 3, 5]  # all of a language with fewer
    assert (np.diff(picked) > 0).all() and (sample_pairs(langs, 5) == picked).all()
    assert not (sample_pairs(langs, 5, seed=1) == picked).all()
    corpus = load_corpus("synthetic:items=60,languages=3,seed=1")
    texts = corpus_texts(corpus, 4)
    assert sorted(texts.queries) == ["el", "en", "ru"] and all(len(v) == 4 for v in texts.passages.values())
    known = {(lang, p.query, p.passage) for item in corpus.items for lang, p in item.pairs.items()}
    assert all((lang, q, p) in known for lang in texts.queries for q, p in zip(texts.queries[lang], texts.passages[lang]))


def test_centering_choices_and_refusals() -> None:
    rs = load_corpus("synthetic:items=40,languages=3").retrieval
    two = TrainingTexts({"el": ["q"], "en": ["q"]}, {"el": ["p"], "en": ["p"], "ru": ["p"]})
    assert centering_for("none", "train", rs, None, 8, "k") is None
    assert centering_for("center", "pool", rs, None, 8, "k").means == "pool"
    made = centering_for("center", "train", rs, lambda: corpus_texts(load_corpus("synthetic:items=40,languages=3"), 8), 8, "k")
    assert made.means == "train" and made.describe()["transductive"] is False and "<= 8 training pairs" in made.label()
    with pytest.raises(InputError, match=r"^eval.debias_means: the training data has no queries in ru \(evaluated\)"):
        centering_for("center", "train", rs, lambda: two, 8, "eval.debias_means")
    with pytest.raises(InputError, match="^--debias-means: 'train' needs training data"):
        centering_for("center", "train", rs, None, 8, "--debias-means")


def test_the_training_sample_of_the_replication_split_never_holds_a_test_title(xquad_r) -> None:
    """On XQuAD-R's replication split (``--holdout-titles 0.2``, seed 0): 512 pairs in each
    of the 11 languages, all from the 38 training articles, none from the 10 test ones."""
    from hbt.data import split_corpus

    train, test = split_corpus(load_corpus(str(xquad_r)), 0.2, 0, key="--holdout-titles")
    texts = corpus_texts(train, 512)
    assert len(texts.queries) == 11 and all(len(v) == 512 for v in texts.queries.values())
    test_queries = {p.query for item in test.items for p in item.pairs.values()}
    assert not test_queries & {q for qs in texts.queries.values() for q in qs}
    made = centering_for("center", "train", test.retrieval, lambda: texts, 512, "--debias-means")
    assert made.describe()["training_pairs"] == {lang: 512 for lang in texts.queries}
