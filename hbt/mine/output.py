"""Rank 0's output of a mining job: the training rows (JSONL or Parquet shards) and
``mine.json``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from hbt.data.corpus import Corpus
from hbt.mine.layout import MineLayout


class Writer:
    """``train.jsonl`` (hbt's generic format), or Parquet shards with the same columns."""

    def __init__(self, out: Path, fmt: str, shard_rows: int = 100_000):
        self.out, self.fmt, self.shard_rows = out, fmt, shard_rows
        self.rows: list[dict] = []
        self.files: list[str] = []
        self.tmp = out / ".train.jsonl.tmp"
        self.f = self.tmp.open("w", encoding="utf-8") if fmt == "jsonl" else None

    def write(self, row: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self.rows.append(row)
        if len(self.rows) >= self.shard_rows:
            self._shard()

    def _shard(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"train-{len(self.files):05d}.parquet"
        table = pa.Table.from_pylist(self.rows)
        pq.write_table(table, self.out / (".tmp-" + name))
        self.files.append(name)
        self.rows = []

    def close(self) -> list[str]:
        if self.f is not None:
            self.f.close()
            self.tmp.replace(self.out / "train.jsonl")
            return ["train.jsonl"]
        if self.rows or not self.files:
            self._shard()
        for old in self.out.glob("train-*.parquet"):
            old.unlink()
        for name in self.files:
            (self.out / (".tmp-" + name)).replace(self.out / name)
        return self.files


def write_report(out: Path, report: dict) -> None:
    """Rank 0's end of a mining job: ``mine.json``, and a line when pairs came up short."""
    shutil.rmtree(out / ".mine-work", ignore_errors=True)
    (out / "mine.json").write_text(json.dumps(report, indent=2) + "\n")
    c, k = report["counts"], report["settings"]["k"]
    if c["short"] or c["dropped_no_negatives"]:
        print(f"hbt mine: {c['short']} of {c['pairs']} pairs got fewer than {k} negatives; "
              f"{c['dropped_no_negatives']} got none and were left out (see mine.json)", file=sys.stderr)


class RowWriter:
    """What rank 0 does with each pair's chosen negatives: one output row."""

    def __init__(self, out: Path, fmt: str, with_scores: bool, layout: MineLayout, corpus: Corpus):
        self.writer, self.layout, self.corpus, self.with_scores = Writer(out, fmt), layout, corpus, with_scores

    def __call__(self, q: int, neg_ids: list[int], neg_scores: list[float], neg_ranks: list[int], pos_score: float) -> None:
        item_index, lang = self.layout.pairs[q]
        item = self.corpus.items[item_index]
        pair = item.pairs[lang]
        row = {"id": item.id, "lang": lang, "query": pair.query, "positive": pair.passage,
               "negatives": [self.layout.candidates.texts[c] for c in neg_ids], "title": item.title}
        if self.with_scores:
            row.update(positive_score=pos_score, negative_scores=neg_scores, negative_ranks=neg_ranks)
        self.writer.write(row)

    def close(self) -> list[str]:
        return self.writer.close()
