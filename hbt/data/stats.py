"""``hbt data stats``: what a corpus holds, per language."""

from __future__ import annotations

import numpy as np

from hbt.data.corpus import Corpus


def _table(items: int, rows: list[tuple[str, int, int, int]]) -> str:
    total = ("all", items, sum(x[2] for x in rows), sum(x[3] for x in rows))
    lines = ["| language | items | queries | candidates |", "|---|---:|---:|---:|"]
    lines += [f"| {lang} | {a:,} | {b:,} | {c:,} |" for lang, a, b, c in [*rows, total]]
    return "\n".join(lines)


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
    return _table(len(corpus.items), rows)


def synthetic_stats(source: str, cache_dir: str) -> str:
    """What ``hbt data stats`` prints of a parsed corpus (its size line, then
    :func:`stats_table`), for the synthetic corpus ``source`` names, read from its table
    (generated into ``cache_dir`` the first time) with no Python object per pair: every
    pair is a query, and a language's candidates are its distinct positives (counted by
    their 64-bit hashes, as the sampler's answer groups are). Every item exists in some
    language and topics are dealt out in turn, so the spec gives the items and titles."""
    from hbt.data.synthetic import SyntheticSpec
    from hbt.data.table import synthetic_dataset
    from hbt.data.training import _codes, _hash_texts

    table = synthetic_dataset(source, cache_dir).data.table
    lang, names = _codes(table.column("lang"))
    passage = _hash_texts(table.column("positive"))
    order = np.lexsort((passage, lang))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (lang[order][1:] != lang[order][:-1]) | (passage[order][1:] != passage[order][:-1])
    pairs = np.bincount(lang, minlength=len(names))
    candidates = np.bincount(lang[order][first], minlength=len(names))
    rows = sorted((names[n], int(pairs[n]), int(pairs[n]), int(candidates[n])) for n in range(len(names)))
    spec = SyntheticSpec.parse(source)
    head = f"synthetic-{spec.seed}: {spec.items:,} items, {min(spec.items, spec.topics):,} titles, {len(rows)} languages"
    return head + "\n" + _table(spec.items, rows)


def pairs_table(languages: list[str], langs: np.ndarray, offsets: np.ndarray, groups: np.ndarray) -> str:
    """A Markdown table of training data read as a table (shards): pairs per language,
    items in two or more languages, and answer groups (items that share an answer)."""
    counts = np.bincount(langs, minlength=len(languages))
    lines = ["| language | pairs |", "|---|---:|"] + [f"| {lang} | {int(n):,} |" for lang, n in zip(languages, counts)]
    multi = int((np.diff(offsets) >= 2).sum())
    lines.append(f"| all | {int(counts.sum()):,} |")
    lines.append(f"\n{multi:,} items in two or more languages; {len(np.unique(groups)):,} answer groups")
    return "\n".join(lines)
