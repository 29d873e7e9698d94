"""``hbt data stats``: what a corpus holds, per language."""

from __future__ import annotations

import numpy as np

from hbt.data.corpus import Corpus


def stats_table(corpus: Corpus) -> str:
    """A Markdown table: items (training pairs), queries and candidates per language."""
    r = corpus.retrieval
    items = {lang: 0 for lang in corpus.languages}
    for item in corpus.items:
        for lang in item.pairs:
            items[lang] += 1
    rows = [
        (lang, items[lang], len(r.queries.get(lang, [])), len(r.candidates.get(lang, [])))
        for lang in corpus.languages
    ]
    total = ("all", len(corpus.items), sum(x[2] for x in rows), sum(x[3] for x in rows))
    lines = ["| language | items | queries | candidates |", "|---|---:|---:|---:|"]
    lines += [f"| {lang} | {a:,} | {b:,} | {c:,} |" for lang, a, b, c in [*rows, total]]
    return "\n".join(lines)


def pairs_table(languages: list[str], langs: np.ndarray, offsets: np.ndarray, groups: np.ndarray) -> str:
    """A Markdown table of training data read as a table (shards): pairs per language,
    items in two or more languages, and answer groups (items that share an answer)."""
    counts = np.bincount(langs, minlength=len(languages))
    lines = ["| language | pairs |", "|---|---:|"] + [f"| {lang} | {int(n):,} |" for lang, n in zip(languages, counts)]
    multi = int((np.diff(offsets) >= 2).sum())
    lines.append(f"| all | {int(counts.sum()):,} |")
    lines.append(f"\n{multi:,} items in two or more languages; {len(np.unique(groups)):,} answer groups")
    return "\n".join(lines)
