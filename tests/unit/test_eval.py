"""Evaluation in one process: metrics agree with ir-measures (pytrec_eval) and top-k lists
with a brute-force ranking; language bias on a hand-computed case; blocked exact ranks
agree with a plain-Python definition, and block sizes change nothing. That 2 and 3 ranks
give these results is tests/integration/test_eval_ranks.py."""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_measures import AP, RR, R, nDCG

from hbt.data import load_corpus
from hbt.data.corpus import RetrievalSet
from hbt.dist import detect
from hbt.errors import InputError
from hbt.eval.bias import language_bias
from hbt.eval.encode import encode, shard_bounds
from hbt.eval.metrics import metrics_from_ranks
from hbt.eval.run import EvalLayout, evaluate
from hbt.eval.search import Block, exact_counts, relevant_scores, spans
from tests.helpers import EVAL_CORPUS, EVAL_SPEC, eval_model_and_tokenizer

pytestmark = pytest.mark.xdist_group("eval")  # one worker: its module fixture (single_eval) is built once


def test_shards_cover_every_index_once() -> None:
    for n in (0, 1, 7, 100, 101):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert [i for a, b in bounds for i in range(a, b)] == list(range(n))


def brute_force(model, tokenizer, rs: RetrievalSet):
    """Full rankings of every setting by a plain dense matrix: the independent reference."""
    layout = EvalLayout.of(rs)
    q_texts = [EVAL_SPEC.query_prefix + t for t in layout.query_texts]
    c_texts = [EVAL_SPEC.passage_prefix + t for t in layout.candidates.texts]
    q = encode(model, tokenizer, q_texts, EVAL_SPEC.max_query_length).astype(np.float64)
    c = encode(model, tokenizer, c_texts, EVAL_SPEC.max_passage_length).astype(np.float64)
    return layout, q @ c.T


def ir_measures_metrics(layout: EvalLayout, scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> dict:
    qrels, run = {}, {}
    col_set = set(cols.tolist())
    for row in rows:
        rel = [int(c) for c in layout.candidates.relevant[row] if c >= 0 and int(c) in col_set]
        if not rel:
            continue
        qid = f"q{row}"
        qrels[qid] = {f"d{c}": 1 for c in rel}
        run[qid] = {f"d{c}": float(scores[row, c]) for c in cols}
    measures = [AP, RR @ 10, nDCG @ 10, R @ 1, R @ 5, R @ 10, R @ 100]
    agg = ir_measures.calc_aggregate(measures, qrels, run)
    names = {"AP": "map", "RR@10": "mrr@10", "nDCG@10": "ndcg@10", "R@1": "recall@1", "R@5": "recall@5",
             "R@10": "recall@10", "R@100": "recall@100"}
    return {names[str(m)]: v for m, v in agg.items()} | {"queries": len(qrels)}


def test_metrics_match_ir_measures(single_eval: dict) -> None:
    model, tokenizer, rs = eval_model_and_tokenizer()
    layout, scores = brute_force(model, tokenizer, rs)
    result = single_eval["result"]
    checked = 0
    for x, xname in enumerate(layout.query_langs):
        rows = np.flatnonzero(layout.query_lang == x)
        for y, yname in enumerate(layout.candidates.langs):
            setting, key = ("mono", xname) if x == y else ("cross", f"{xname}-{yname}")
            ref = ir_measures_metrics(layout, scores, rows, np.flatnonzero(layout.candidates.lang == y))
            ours = result[setting][key]
            assert ours["queries"] == ref["queries"]
            for name, value in ref.items():
                assert abs(ours[name] - value) < 1e-6, (setting, key, name, ours[name], value)
            checked += 1
        ref = ir_measures_metrics(layout, scores, rows, np.arange(len(layout.candidates.texts)))
        for name, value in ref.items():
            assert abs(result["multi"][xname][name] - value) < 1e-6, ("multi", xname, name)
    assert checked == 9


def test_topk_lists_match_brute_force(single_eval: dict) -> None:
    model, tokenizer, rs = eval_model_and_tokenizer()
    layout, scores = brute_force(model, tokenizer, rs)
    for x, (top_scores, top_ids) in single_eval["result"]["topk"]["lists"].items():
        rows = np.flatnonzero(layout.query_lang == x)
        expected = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores[rows].shape), -scores[rows]), axis=1)[:, :10]
        assert (top_ids == expected).all()
        assert np.abs(top_scores - np.take_along_axis(scores[rows], expected, 1)).max() < 1e-5


def test_distributed_topk_single_process_is_brute_force(single_eval: dict) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1001, 16)).astype(np.float32)
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    exact = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :25]
    assert (single_eval["topk"][1] == order).all()


def test_metrics_from_ranks_hand_case() -> None:
    # query 1: relevant at ranks 1 and 3; query 2: relevant at rank 12 only.
    m = metrics_from_ranks(np.array([[3, 1], [12, 0]]))
    assert m["queries"] == 2
    assert m["map"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 1 / 12) / 2)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx(0.25) and m["recall@10"] == pytest.approx(0.5) and m["recall@100"] == 1.0
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@10"] == pytest.approx(((1 + 1 / np.log2(4)) / ideal + 0) / 2)


def test_language_bias_hand_case() -> None:
    # q0 (lang 0): relevant in langs 0,1,2 at ranks 1, 4, 10; q1 (lang 1): ranks 2 (lang 0), 3 (lang 1).
    ranks = np.array([[1, 4, 10], [2, 3, 0]])
    langs = np.array([[0, 1, 2], [0, 1, -1]])
    bias = language_bias(ranks, langs, np.array([0, 1]), {"a": 0.5, "b": 0.3})
    assert bias["rank_spread"] == pytest.approx((9 + 1) / 2)
    assert bias["pairwise_rank_distance"] == pytest.approx(((3 + 9 + 6) / 3 + 1) / 2)
    assert bias["own_language_first"] == pytest.approx(0.5)
    assert bias["map_std"] == pytest.approx(0.1)


def test_empty_language_is_an_input_error() -> None:
    rs = load_corpus(EVAL_CORPUS).retrieval
    rs.queries["ru"] = []
    with pytest.raises(InputError, match="language 'ru': has no queries"):
        EvalLayout.of(rs)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_most_true_neighbours(kind: str) -> None:
    from hbt.eval.search import build_index, local_topk

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    queries = vectors[:200] + 0.1 * rng.standard_normal((200, 32)).astype(np.float32)
    _, exact = local_topk(build_index(vectors, detect({}), "flat"), queries, np.arange(4000), 10)
    _, approx = local_topk(build_index(vectors, detect({}), kind), queries, np.arange(4000), 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert (approx[:, 0] == np.arange(200)).mean() > 0.95 and recall > 0.5, recall


def faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


@pytest.mark.skipif(faiss_gpus() == 0, reason="needs faiss-gpu and a GPU (the flat index moves there)")
def test_a_gpu_index_answers_deeper_than_faiss_gpu_selects() -> None:
    from hbt.eval.search import GPU_MAX_K, build_index, local_topk

    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3 * GPU_MAX_K, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    k = GPU_MAX_K + 500
    scores, ids = local_topk(build_index(vectors, detect({}), "flat"), queries, np.arange(len(vectors)), k)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    assert ids.shape == (5, k) and np.mean(ids == exact) > 0.99  # ties aside, the exact order


def reference_counts(queries: np.ndarray, cands: np.ndarray, relevant: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The definition, one candidate at a time: candidate c ranks above relevant candidate
    r of query i when its score beats r's threshold, or equals it and c < r; r never counts."""
    counts = np.zeros(relevant.shape, dtype=np.int64)
    for (i, j), rel in np.ndenumerate(relevant):
        if rel < 0:
            continue
        t = thresholds[i, j]
        for c in range(len(cands)):
            score = sum(int(a) * int(b) for a, b in zip(queries[i], cands[c]))  # exact: small integers
            counts[i, j] += c != rel and (score > t or (score == t and c < rel))
    return counts


@st.composite
def ranking_problems(draw):
    """Small pools of small-integer vectors (many exact ties, scores exact in float64 in any
    order), split over 1-3 ranks, scored in tiny blocks; a relevant candidate's threshold may
    sit one ulp off its own score, as it does when another product rounded it."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_q, n_c, dim, width = draw(st.integers(1, 9)), draw(st.integers(1, 25)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    queries = rng.integers(-1, 2, (n_q, dim)).astype(np.float32)
    cands = rng.integers(-1, 2, (n_c, dim)).astype(np.float32)
    query_lang = np.sort(rng.integers(0, draw(st.integers(1, 3)), n_q))
    relevant = np.full((n_q, width), -1, dtype=np.int64)
    for i in range(n_q):
        chosen = rng.choice(n_c, size=rng.integers(0, min(width, n_c) + 1), replace=False)
        relevant[i, rng.choice(width, size=len(chosen), replace=False)] = chosen  # -1 pads anywhere
    world = draw(st.integers(1, 3))
    block = Block(draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    nudge = rng.integers(-1, 2, relevant.shape)  # -1, 0, +1 ulp
    return queries, cands, query_lang, relevant, world, block, nudge


@settings(max_examples=300, deadline=None)
@given(problem=ranking_problems())
def test_blocked_exact_counts_match_the_definition(problem) -> None:
    queries, cands, query_lang, relevant, world, block, nudge = problem
    shards = [shard_bounds(len(cands), r, world) for r in range(world)]
    thresholds = np.sum([relevant_scores(queries, cands[a:b], a, relevant) for a, b in shards], axis=0)
    exact = np.array([[queries[i] @ cands[r] if r >= 0 else 0 for r in row] for i, row in enumerate(relevant)], dtype=np.float64)
    assert (thresholds == exact).all()
    thresholds = np.where(nudge > 0, np.nextafter(thresholds, np.inf), np.where(nudge < 0, np.nextafter(thresholds, -np.inf), thresholds))
    got = sum(exact_counts(queries, query_lang, cands[a:b], np.arange(a, b), relevant, thresholds, block) for a, b in shards)
    assert (got == reference_counts(queries, cands, relevant, thresholds)).all()


def test_spans_are_near_equal_and_cover_every_index_once() -> None:
    for n in (0, 1, 5, 4096, 4097, 10_000):
        for size in (1, 3, 4096):
            pieces = spans(n, size)
            assert [i for a, b in pieces for i in range(a, b)] == list(range(n))
            assert all(b - a <= size for a, b in pieces) and len(pieces) == -(-n // size)
            assert max((b - a for a, b in pieces), default=0) - min((b - a for a, b in pieces), default=0) <= 1


def test_tiny_blocks_give_exactly_the_default_results(single_eval: dict) -> None:
    model, tokenizer, rs = eval_model_and_tokenizer()  # encoded as in ``single_eval`` (same process, same threads)
    got = evaluate(model, tokenizer, rs, EVAL_SPEC, detect({}), k=10, progress=False, block=Block(queries=3, candidates=5))
    ref = single_eval["result"]
    for key in ("mono", "cross", "multi", "bias", "summary"):
        assert got[key] == ref[key]  # exact: ranks are integers, metrics their functions
    for x in ref["topk"]["lists"]:
        assert (got["topk"]["lists"][x][1] == ref["topk"]["lists"][x][1]).all()
