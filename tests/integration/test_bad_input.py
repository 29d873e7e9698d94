"""Bad input: one line on stderr naming the file, field or option; exit 2; no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, lareqa_doc, paragraph, run_hbt


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


GOOD = paragraph(["One sentence.", "Two sentence."], [("q1", "which?", 3)])


@pytest.mark.parametrize(
    "name,doc,needles",
    [
        ("en.json", '{"data": [', ["en.json", "malformed JSON", "line 1"]),
        ("en.json", {"data": [{"paragraphs": [GOOD]}]}, ["en.json", "data[0].title"]),
        ("en.json", {"data": [{"title": "T", "paragraphs": [{**GOOD, "qas": [{"id": "q", "answers": []}]}]}]},
         ["en.json", "data[0].paragraphs[0].qas[0].question"]),
        ("en.json", lareqa_doc([paragraph(["Short."], [("q9", "far?", 500)])]), ["en.json", "q9", "outside every"]),
        ("xx.json", lareqa_doc([GOOD]), ["xx.json", "unknown language code 'xx'"]),
        ("en.json", {"data": [{"title": "T", "paragraphs": [{**GOOD, "qas": []}]}]}, ["en.json", "no questions"]),
    ],
    ids=["malformed", "missing-title", "missing-question", "answer-outside", "unknown-lang", "empty-lang"],
)
def test_lareqa_bad_input(tmp_path: Path, name: str, doc, needles: list[str]) -> None:
    out = run_hbt("data", "stats", str(write(tmp_path / name, doc)))
    assert_one_line_error(out, *needles)


@pytest.mark.parametrize(
    "line,needles",
    [
        ('{"id": "a", "lang": "en", "query": "q"', ["pairs.jsonl:2", "malformed JSON"]),
        ('{"id": "a", "lang": "en", "query": "q"}', ["pairs.jsonl:2", "'positive'"]),
        ('{"id": "a", "lang": "english", "query": "q", "positive": "p"}', ["pairs.jsonl:2", "'english'"]),
    ],
    ids=["malformed", "missing-positive", "unknown-lang"],
)
def test_jsonl_bad_input(tmp_path: Path, line: str, needles: list[str]) -> None:
    good = '{"id": "b", "lang": "en", "query": "q", "positive": "p"}'
    out = run_hbt("data", "stats", str(write(tmp_path / "pairs.jsonl", good + "\n" + line + "\n")))
    assert_one_line_error(out, *needles)


def test_missing_path_and_bad_synthetic_option() -> None:
    assert_one_line_error(run_hbt("data", "stats", "no/such/dir"), "no/such/dir", "no such file")
    assert_one_line_error(run_hbt("data", "stats", "synthetic:itemz=3"), "unknown synthetic option 'itemz'")


def test_sampler_options(tmp_path: Path) -> None:
    """With a fresh cache, so the index is built (and reported) before the error, as on a new clone."""
    cache = ("--cache-dir", str(tmp_path))
    assert_one_line_error(run_hbt("data", "sample", "synthetic:items=200", "--alpha", "1.5", *cache),
                          "train.alpha", "[0, 1]")
    assert_one_line_error(run_hbt("data", "sample", "synthetic:items=50", "--batch-size", "64", *cache),
                          "train.batch_size", "larger than language")


def test_shard_sources_bad_input(tmp_path: Path) -> None:
    """Shards: a pattern that matches nothing, mixed formats, an unreachable hub dataset,
    a bad row and a missing mapped column all end in one line naming the source (after
    datasets' conversion progress bar, where shards were converted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = f"--cache-dir={tmp_path / 'cache'}"
    assert_one_line_error(run_hbt("data", "stats", str(tmp_path / "none" / "*.parquet"), cache), "matches no file")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    row = {"id": "a", "lang": "en", "query": "q", "positive": "p"}
    pq.write_table(pa.Table.from_pylist([row]), mixed / "a.parquet")
    (mixed / "b.jsonl").write_text(json.dumps(row) + "\n")
    assert_one_line_error(run_hbt("data", "stats", str(mixed), cache), str(mixed), "shards must all be .parquet")
    assert_one_line_error(run_hbt("data", "stats", "hf:nobody/nothing", cache, env={"HF_HUB_OFFLINE": "1"}),
                          "hf:nobody/nothing", "cannot read")
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist([row, {**row, "id": "b", "positive": None}]), bad / "part-0.parquet")
    out = run_hbt("data", "stats", str(bad), cache)
    assert_one_line_error(out, str(bad), "row 2: column 'positive' is empty")
    out = run_hbt("train", "data.train=null", f"data.sources=[{{path: {bad}, columns: {{query: question}}}}]",
                  f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}")
    assert_one_line_error(out, str(bad), "no column 'question'")

