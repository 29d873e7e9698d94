"""The validation split of a tuning sweep (``hbt sweep --validation-titles 0.2``): titles of
the training data held out of training and scored, never the test titles.

A config's test titles are those its runs are evaluated on when nothing is tuned: the
hold-out ``data.holdout_titles`` of its training source (drawn with ``data.holdout_seed``),
and ``eval.holdout_titles`` where ``eval.data`` is that same source. The validation
titles are drawn from the rest, by the one rule every hold-out follows
(:func:`hbt.data.split.choose_titles`, seeded by ``data.holdout_seed``). Each job of the
sweep then holds out the test and the validation titles (``data.holdout_titles``, as a
file) and evaluates the validation titles only (``eval.data`` is the training source,
``eval.holdout_titles`` the file): nothing here decides what a title or an item is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hbt.data.split import choose_titles, parse_holdout
from hbt.errors import InputError

KEY = "--validation-titles"


@dataclass(frozen=True)
class Split:
    """One config's split: the titles files and the overrides each of its jobs gets."""

    test: tuple[str, ...]
    validation: tuple[str, ...]
    training: int  # titles left to train on
    overrides: tuple[str, ...]


def _write_titles(path: Path, titles: list[str]) -> None:
    """One title a line, read back through the hold-out's own reader: a title that a
    line cannot carry (a line break, spaces at an end) is refused, not silently changed."""
    path.write_text("".join(f"{t}\n" for t in titles), encoding="utf-8")
    if parse_holdout(f"@{path}", key=KEY) != list(titles):
        raise InputError(KEY, f"a title of the training data does not fit on one line of {path}")


def make_split(config: str, overrides: list[str], spec: str | float, out: Path) -> Split:
    """Draw ``config``'s validation titles (``spec``: a fraction, titles or ``@file``, as
    ``data.holdout_titles``) from its training titles, write ``OUT/validation/STEM-*.txt``
    and return the overrides of its jobs."""
    from hbt.config import load_config
    from hbt.data.table import any_corpus

    cfg = load_config(config, overrides)
    d = cfg.data
    if d.sources is not None:
        raise InputError(KEY, f"{config} trains on data.sources; the split is made from one training source (data.train)")
    source = d.train or "synthetic"
    titles = any_corpus(source, d.cache_dir).titles
    test: set[str] = set()
    if d.holdout_titles is not None:
        test |= set(choose_titles(titles, d.holdout_titles, d.holdout_seed, key="data.holdout_titles"))
    if cfg.eval.data == source and cfg.eval.holdout_titles is not None:
        test |= set(choose_titles(titles, cfg.eval.holdout_titles, d.holdout_seed, key="eval.holdout_titles"))
    rest = [t for t in titles if t not in test]
    validation = choose_titles(rest, spec, d.holdout_seed, key=KEY) if rest else []
    if len(validation) >= len(rest):
        raise InputError(KEY, f"holds out all {len(rest)} training title(s) of {source}; nothing is left to train on")
    folder = out / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(config).stem
    held, scored = folder / f"{stem}-held-out.txt", folder / f"{stem}-validation.txt"
    _write_titles(held, sorted(test | set(validation)))
    _write_titles(scored, validation)
    quoted = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731  a YAML double-quoted scalar
    split_overrides = (f"data.holdout_titles={quoted(f'@{held.resolve()}')}", f"eval.data={quoted(source)}",
                       f"eval.holdout_titles={quoted(f'@{scored.resolve()}')}")
    return Split(tuple(sorted(test)), tuple(validation), len(rest) - len(validation), split_overrides)
