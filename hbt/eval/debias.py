"""Centring (``eval.debias: center``, ``hbt eval --debias center``): the "demean"
baseline against language bias, scored beside the plain embeddings.

Why: the embeddings of one language share a component that other languages' lack, so a
query sits closer to every candidate of its own language than to those of another,
whatever they say, and in the multilingual pool its own language's answer comes first
(``own_language_first``, docs/metrics.md). Subtracting each language's mean embedding
removes that shared component without training anything; it is the usual inference-time
baseline of the debiasing literature (Libovický et al., 2020, "On the language
neutrality of pre-trained multilingual representations"), the cheap alternative that
hybrid batches have to beat.

What is subtracted, and how the result is scored:

* queries and candidates are centred apart: a query of language X loses the mean of X's
  queries, a candidate of language Y the mean of Y's candidates (the two sides are encoded
  with different prefixes and lengths, so their means differ);
* the means come from the **training data** (:class:`TrainingTexts`: a seeded sample of
  up to ``eval.debias_sample`` pairs per language, whose queries and positive passages the
  evaluated model encodes: what a deployment has) or from the **evaluated pool** itself
  (every query and candidate being scored: transductive, it looks at the test set, and
  every output says so);
* the centred embeddings are L2-normalised again, so a score stays a cosine, and the
  FAISS inner-product index and the exact ranks score them exactly as the plain ones
  (:func:`center`).

On several ranks each rank sums the embeddings it encoded per language; the sums and
counts (float64) are gathered and added in rank order, so every rank centres with the
same means, and a pool's means are the whole pool's, not its shard's (:func:`language_means`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from hbt.config import Debias, DebiasMeans
from hbt.data.corpus import Corpus, RetrievalSet
from hbt.dist import DistEnv, gather_objects
from hbt.errors import InputError
from hbt.eval.encode import shard_bounds

if TYPE_CHECKING:  # hbt.data.training imports datasets; only its arrays are read here
    from hbt.data.training import TrainingData

PREFIX = "centered_"  # the centred headline numbers in ``summary``: centered_mono_map, ...
SAMPLE_SEED = 0  # the training sample is the same for every run.seed: seeds differ only in training
EPS = 1e-12  # a centred vector shorter than this stays (near) zero instead of being blown up


@dataclass(frozen=True)
class TrainingTexts:
    """Per language, the training queries and positive passages the means are taken over."""

    queries: dict[str, list[str]]
    passages: dict[str, list[str]]

    @classmethod
    def of(cls, langs: Sequence[str], queries: Sequence[str], passages: Sequence[str]) -> "TrainingTexts":
        """Grouped by language from parallel lists of pairs."""
        q: dict[str, list[str]] = {}
        p: dict[str, list[str]] = {}
        for lang, query, passage in zip(langs, queries, passages):
            q.setdefault(lang, []).append(query)
            p.setdefault(lang, []).append(passage)
        return cls(q, p)


@dataclass(frozen=True)
class Centering:
    """How an evaluation centres: with the means of ``training`` (its texts encoded by the
    evaluated model at every evaluation), or with none, of the evaluated pool."""

    training: TrainingTexts | None = None
    sample: int | None = None  # the most pairs per language drawn for ``training``

    @property
    def means(self) -> DebiasMeans:
        return "pool" if self.training is None else "train"

    def describe(self) -> dict:
        """What metrics.json records beside the centred figures."""
        out: dict = {"method": "center", "means": self.means, "transductive": self.training is None, "renormalised": True,
                     "label": self.label()}
        if self.training is not None:
            out["sample_per_language"] = self.sample
            out["training_pairs"] = {lang: len(texts) for lang, texts in self.training.queries.items()}
        return out

    def label(self) -> str:
        """How the outputs name the centred rows."""
        if self.training is None:
            return "centered, means of the evaluated pool (transductive)"
        return f"centered, means of <= {self.sample} training pairs per language"


def sample_pairs(pair_lang: np.ndarray, per_language: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Ascending indices of up to ``per_language`` pairs of every language code in
    ``pair_lang``, drawn without replacement (all of a language that has no more)."""
    rng = np.random.default_rng(seed)
    picked = []
    for code in np.unique(pair_lang):
        rows = np.flatnonzero(pair_lang == code)
        picked.append(np.sort(rng.choice(rows, per_language, replace=False)) if len(rows) > per_language else rows)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def training_texts(data: "TrainingData", per_language: int) -> TrainingTexts:
    """A training run's sample: pairs of its training data (never a held-out title)."""
    pairs = sample_pairs(np.asarray(data.langs), per_language)
    rows = np.asarray(data.rows)[pairs]
    langs = [data.languages[code] for code in np.asarray(data.langs)[pairs].tolist()]
    return TrainingTexts.of(langs, data.column("query", rows), data.column("positive", rows))


def corpus_texts(corpus: Corpus, per_language: int) -> TrainingTexts:
    """``hbt eval``'s sample: pairs of a parsed corpus (the titles of ``--data`` outside
    ``--holdout-titles``, or ``--debias-data``), drawn as :func:`training_texts` draws."""
    pairs = [(lang, pair) for item in corpus.items for lang, pair in sorted(item.pairs.items())]
    names = sorted({lang for lang, _ in pairs})
    picked = sample_pairs(np.array([names.index(lang) for lang, _ in pairs], dtype=np.int64), per_language)
    chosen = [pairs[i] for i in picked.tolist()]
    return TrainingTexts.of([lang for lang, _ in chosen], [p.query for _, p in chosen], [p.passage for _, p in chosen])


def centering_for(debias: Debias, means: DebiasMeans, rs: RetrievalSet, training: Callable[[], TrainingTexts] | None,
              sample: int, key: str) -> Centering | None:
    """The evaluation's centring, checked before anything is encoded: None for
    ``none``; for ``train``, ``training()`` must give a sample in every query and
    candidate language of ``rs`` (``training`` is None where there is no training data).
    ``key`` is the setting or option to name in a refusal."""
    if debias == "none":
        return None
    if means == "pool":
        return Centering()
    if training is None:
        raise InputError(key, "'train' needs training data to take the means of; or choose 'pool' (transductive)")
    texts = training()
    for side, wanted, have in (("queries", rs.queries, texts.queries), ("passages", rs.candidates, texts.passages)):
        missing = sorted(set(wanted) - set(have))
        if missing:
            raise InputError(key, f"the training data has no {side} in {', '.join(missing)} (evaluated); "
                                  "choose 'pool' (transductive) for languages it does not hold")
    return Centering(texts, sample)


def language_sums(emb: np.ndarray, lang: np.ndarray, n_lang: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_lang x dim) float64 sums of ``emb``'s rows per language code, and their counts."""
    sums = np.zeros((n_lang, emb.shape[1]))
    counts = np.bincount(np.asarray(lang, dtype=np.int64), minlength=n_lang)
    for y in np.flatnonzero(counts).tolist():
        sums[y] = emb[lang == y].sum(axis=0, dtype=np.float64)
    return sums, counts


def language_means(emb: np.ndarray, lang: np.ndarray, n_lang: int, env: DistEnv) -> tuple[np.ndarray, np.ndarray]:
    """The mean embedding of every language over the rows of every rank of ``env`` (each
    passes its own rows), and the counts: the same on every rank. A language no rank has
    a row of gets a zero mean (nothing is subtracted)."""
    parts = gather_objects(language_sums(emb, lang, n_lang), env)
    sums = np.sum([s for s, _ in parts], axis=0)
    counts = np.sum([c for _, c in parts], axis=0)
    return sums / np.maximum(counts, 1)[:, None], counts


def center(emb: np.ndarray, lang: np.ndarray, means: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``emb`` less the mean of each row's language (``means[lang]``), L2-normalised again:
    float64 arithmetic ``chunk`` rows at a time (a float64 copy of a whole shard would
    double its memory), float32 out, as evaluation scores embeddings."""
    out = np.empty(emb.shape, dtype=np.float32)
    for lo in range(0, len(emb), chunk):
        centred = emb[lo:lo + chunk].astype(np.float64) - means[lang[lo:lo + chunk]]
        norm = np.linalg.norm(centred, axis=1, keepdims=True)
        out[lo:lo + chunk] = centred / np.maximum(norm, EPS)
    return out


Encoder = Callable[[list[str], str], np.ndarray]  # (texts of one rank, "query" | "passage") -> embeddings


def training_means(texts: TrainingTexts, query_langs: list[str], cand_langs: list[str], encode: Encoder,
                   env: DistEnv) -> tuple[np.ndarray, np.ndarray]:
    """The query means (in ``query_langs`` order) and the candidate means (``cand_langs``)
    of the training sample, each rank encoding its contiguous share of each side."""
    out = []
    for side, by_lang, names in (("query", texts.queries, query_langs), ("passage", texts.passages, cand_langs)):
        flat = [(code, text) for code, name in enumerate(names) for text in by_lang.get(name, [])]
        a, b = shard_bounds(len(flat), env.rank, env.world_size)
        mine = flat[a:b]
        emb = encode([text for _, text in mine], side)
        out.append(language_means(emb, np.array([code for code, _ in mine], dtype=np.int64), len(names), env)[0])
    return out[0], out[1]
