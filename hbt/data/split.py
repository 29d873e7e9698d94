"""Split a corpus by article title, so that no item id is in both train and held-out parts.

XQuAD-R has 48 articles; a development run trains on most of them and evaluates on the
rest. Splitting by title (not by question) keeps every candidate sentence of a
held-out paragraph out of training, so the evaluation is a true zero-shot one.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from hbt.data.corpus import Corpus
from hbt.errors import InputError


def holdout_titles(corpus: Corpus, spec: str | float | list[str], seed: int = 0, *, key: str) -> list[str]:
    """Titles of ``corpus`` to hold out (see :func:`choose_titles`)."""
    return choose_titles(corpus.titles, spec, seed, key=key)


def parse_holdout(spec: str | float | list[str], *, key: str) -> float | list[str]:
    """A hold-out as given, read into a fraction in (0, 1) or a list of titles: a number,
    a comma-separated list, a list, or ``@file`` with one title a line. The one reading of
    a hold-out, so a config is checked with it before any data is read and the split
    reads the same; errors name ``key``, the setting or option it came from (and the file)."""
    if isinstance(spec, str) and spec.startswith("@"):
        try:
            text = Path(spec[1:]).read_text(encoding="utf-8")
        except (OSError, ValueError) as e:  # ValueError: not UTF-8 (UnicodeDecodeError), or a NUL in the name
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InputError(key, f"{spec[1:]}: cannot read the list of titles ({reason})") from None
        spec = [t.strip() for t in text.splitlines() if t.strip()]
    if isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            spec = [t.strip() for t in spec.split(",") if t.strip()]
    if isinstance(spec, float):
        if not 0 < spec < 1:
            raise InputError(key, f"a fraction must be in (0, 1), got {spec}")
        return spec
    if not spec:
        raise InputError(key, "names no title")
    return list(spec)


def choose_titles(titles: list[str], spec: str | float | list[str], seed: int = 0, *, key: str) -> list[str]:
    """Titles to hold out (:func:`parse_holdout` reads ``spec``): for a fraction a seeded,
    order-free choice, else the titles named, each of which must be one of ``titles``."""
    spec = parse_holdout(spec, key=key)
    if isinstance(spec, float):
        count = max(1, math.floor(spec * len(titles) + 0.5))
        # Rank titles by a seeded hash: the choice does not depend on file or item order.
        ranked = sorted(titles, key=lambda t: hashlib.sha256(f"{seed}\0{t}".encode()).hexdigest())
        return sorted(ranked[:count])
    unknown = sorted(set(spec) - set(titles))
    if unknown:
        raise InputError(key, f"unknown title(s) {', '.join(unknown[:5])}")
    return sorted(set(spec))


def split_by_title(corpus: Corpus, held_out: list[str], *, key: str) -> tuple[Corpus, Corpus]:
    """(train, held-out) parts of ``corpus``; ``key`` names the hold-out's setting in an error."""
    rest = [t for t in corpus.titles if t not in set(held_out)]
    if not rest:
        raise InputError(key, "holds out every title; nothing is left to train on")
    return corpus.subset(rest, f"{corpus.name}-train"), corpus.subset(held_out, f"{corpus.name}-heldout")


def split_corpus(corpus: Corpus, spec: str | float | list[str], seed: int = 0, *, key: str) -> tuple[Corpus, Corpus]:
    """(train, held-out) parts of ``corpus`` for a hold-out ``spec``: one rule for every tool
    that splits (``hbt eval --holdout-titles``, ``hbt mine --holdout-titles``,
    ``eval.holdout_titles``); ``key`` is the one the user set, for errors."""
    return split_by_title(corpus, holdout_titles(corpus, spec, seed, key=key), key=key)
