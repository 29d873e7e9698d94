"""A deterministic synthetic parallel corpus: the offline default for the main job and tests.

Meaning is shared across languages, surface forms are not. Every item is a bag of
*concepts* (the passage) and a subset of them plus a distractor (the query); each
language renders a concept as a word written in its own script (Latin, Greek,
Cyrillic, ...), so no two languages share a character, let alone a token. A model can
only match a German query to a Thai passage by learning which words mean the same,
which is exactly the cross-lingual alignment that hybrid batches are meant to teach.
Items come in topics (the titles), each with its own favourite concepts, so that
retrieval within a topic is harder than across topics, as in real articles. Topics'
favourites overlap and the vocabulary is small enough (500 concepts) that a 2-layer
model sees every word in training often enough to align it across languages: a
held-out topic is new text, not new words, so what the strategies teach shows in the
zero-shot evaluation (README's first run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbt.data.corpus import Corpus, Item, Pair, retrieval_from_pairs
from hbt.data.languages import ISO_639_1
from hbt.errors import InputError

# (language code, first code point, alphabet size): one script per language, no overlap.
_SCRIPTS: list[tuple[str, int, int]] = [
    ("en", 0x61, 26),  # Latin
    ("el", 0x3B1, 25),  # Greek
    ("ru", 0x430, 32),  # Cyrillic
    ("hy", 0x561, 38),  # Armenian
    ("he", 0x5D0, 27),  # Hebrew
    ("ar", 0x627, 20),  # Arabic
    ("hi", 0x915, 37),  # Devanagari consonants
    ("th", 0xE01, 46),  # Thai
    ("ka", 0x10D0, 33),  # Georgian
    ("ko", 0x3131, 30),  # Hangul jamo
    ("ja", 0x3041, 80),  # Hiragana
]
_CJK_START, _CJK_SLICE = 0x4E00, 64  # further languages: disjoint slices of CJK ideographs


@dataclass(frozen=True)
class SyntheticSpec:
    items: int = 2000
    languages: int = 4
    seed: int = 0
    coverage: float = 1.0  # probability that an item exists in a given language
    concepts: int = 500
    topics: int = 40
    topic_words: int = 60  # each topic's favourite concepts, drawn independently: topics overlap
    passage_words: int = 12
    query_words: int = 4

    @classmethod
    def parse(cls, spec: str) -> "SyntheticSpec":
        """``synthetic`` or ``synthetic:items=2000,languages=6,seed=1,coverage=0.7``."""
        _, _, args = spec.partition(":")
        values: dict[str, int | float] = {}
        for part in filter(None, args.split(",")):
            key, eq, raw = part.partition("=")
            if not eq or key not in cls.__dataclass_fields__:
                known = ", ".join(cls.__dataclass_fields__)
                raise InputError(spec, f"unknown synthetic option {key!r} (known: {known})")
            kind = float if key == "coverage" else int
            try:
                values[key] = kind(raw)
            except ValueError:
                raise InputError(spec, f"synthetic option {key!r} should be {kind.__name__}, got {raw!r}") from None
        parsed = cls(**values)  # type: ignore[arg-type]
        parsed.validate(spec)
        return parsed

    def validate(self, where: str) -> None:
        if min(self.items, self.languages, self.topics, self.topic_words) < 1 or self.concepts < max(self.passage_words, self.topic_words):
            raise InputError(where, "synthetic items, languages, topics, topic_words must be >= 1 and concepts >= passage_words and topic_words")
        if not 0 < self.coverage <= 1:
            raise InputError(where, f"synthetic coverage must be in (0, 1], got {self.coverage}")
        if not 1 <= self.query_words <= self.passage_words:
            raise InputError(where, "synthetic query_words must be between 1 and passage_words")

    def language_codes(self) -> list[str]:
        named = [code for code, _, _ in _SCRIPTS]
        extra = sorted(ISO_639_1 - set(named))
        return (named + extra)[: self.languages]


def _alphabet(index: int) -> list[str]:
    if index < len(_SCRIPTS):
        _, start, size = _SCRIPTS[index]
    else:
        start, size = _CJK_START + _CJK_SLICE * (index - len(_SCRIPTS)), _CJK_SLICE
    return [chr(start + i) for i in range(size)]


def _lexicon(alphabet: list[str], concepts: int, rng: np.random.Generator) -> list[str]:
    """A distinct word (2-6 letters) per concept."""
    words: set[str] = set()
    lexicon: list[str] = []
    while len(lexicon) < concepts:
        length = int(rng.integers(2, 7))
        word = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=length))
        if word not in words:
            words.add(word)
            lexicon.append(word)
    return lexicon


def synthetic_corpus(spec: SyntheticSpec) -> Corpus:
    rng = np.random.default_rng(spec.seed)
    codes = spec.language_codes()
    lexicons = {code: _lexicon(_alphabet(i), spec.concepts, rng) for i, code in enumerate(codes)}
    # Each topic prefers its own set of concepts (70% of its words come from it). The sets
    # overlap, so a held-out topic's words are seen in training under other topics, as a
    # real test article's words are: alignment learned on training topics can transfer.
    topic_concepts = [rng.choice(spec.concepts, size=spec.topic_words, replace=False) for _ in range(spec.topics)]
    items: list[Item] = []
    for n in range(spec.items):
        topic = n % spec.topics
        from_topic = rng.random(spec.passage_words) < 0.7
        drawn = np.where(
            from_topic,
            rng.choice(topic_concepts[topic], spec.passage_words),
            rng.integers(0, spec.concepts, spec.passage_words),
        )
        passage = list(dict.fromkeys(drawn.tolist()))  # distinct, in order
        query = rng.choice(passage, size=min(spec.query_words, len(passage)), replace=False).tolist()
        query.append(int(rng.integers(0, spec.concepts)))  # one distractor word
        present = [code for code in codes if rng.random() < spec.coverage] or [codes[int(rng.integers(len(codes)))]]
        pairs = {}
        for code in present:
            lex = lexicons[code]
            order = rng.permutation(len(query))  # word order differs between languages
            pairs[code] = Pair(
                query=" ".join(lex[query[i]] for i in order),
                passage=" ".join(lex[c] for c in passage),
            )
        items.append(Item(id=f"syn{n:06d}", title=f"topic-{topic:03d}", pairs=pairs))
    return Corpus(name=f"synthetic-{spec.seed}", items=items, retrieval=retrieval_from_pairs(items))
