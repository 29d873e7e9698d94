"""Centred evaluation (``eval.debias: center``, ``hbt eval --debias center``) as users run
it: on 2 ranks (the means are the whole pool's, the same bits on every rank), during
training (eval.jsonl, metrics.json, the model card), from ``hbt eval`` with the means of
training data or of the pool, and its bad input. The centring itself is checked against a
plain-numpy reference in tests/unit/test_debias.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_one_line_error, debias_world, run_hbt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("debias")]  # one worker: the module fixtures are built once

DATA = "synthetic:items=300,languages=3,seed=2"
PLAIN = ("mono_map", "cross_map", "multi_map", "rank_spread", "own_language_first", "map_std")
CENTERED = tuple("centered_" + key for key in PLAIN)
TRAIN_LABEL = "centered, means of <= 512 training pairs per language"
POOL_LABEL = "centered, means of the evaluated pool (transductive)"


def test_two_ranks_centre_with_the_whole_pools_means() -> None:
    from hbt.eval.debias import language_sums

    single, got = debias_world(1), debias_world(2)
    (means0, counts0), (means1, counts1) = got["means"]
    assert (means0 == means1).all() and (counts0 == counts1).all()  # every rank subtracts the same bits
    vectors, lang = got["vectors"], got["lang"]
    whole = np.array([vectors[lang == y].astype(np.float64).mean(0) for y in range(4)])
    np.testing.assert_allclose(means0, whole, atol=1e-12)
    assert counts0.tolist() == np.bincount(lang, minlength=4).tolist()
    sums, counts = language_sums(vectors[:151], lang[:151], 4)  # rank 0's shard alone: not the pool's means
    assert counts[3] == 0 and np.abs(sums[0] / counts[0] - whole[0]).max() > 1e-3
    for name in ("pool", "train"):  # and a whole centred evaluation is the single process's
        for key in ("mono", "cross", "multi", "bias"):
            assert got[name]["centered"][key] == single[name]["centered"][key], (name, key)
            assert got[name][key] == single[name][key]
        assert got[name]["centered"]["means"] == name


def headline(stdout: str) -> list[str]:
    """``hbt eval``'s plain line and the one after it (DeepSpeed may log before them)."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("mono_map "))
    return lines[first:first + 2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A few steps of the tiny preset with eval.debias=center (means of the training data)."""
    tmp = tmp_path_factory.mktemp("debias")
    out = run_hbt("train", "--config", "configs/tiny.yaml", f"run.dir={tmp / 'run'}", f"data.cache_dir={tmp / 'cache'}",
                  f"data.train={DATA}", "train.batch_size=16", "train.max_steps=6", "model.tiny.vocab_size=2000",
                  "eval.debias=center")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def test_training_reports_centred_figures_beside_the_plain_ones(trained: Path) -> None:
    (row,) = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert set(PLAIN + CENTERED) <= set(row)
    metrics = json.loads((trained / "eval" / row["eval"] / "metrics.json").read_text())
    centred = metrics["centered"]
    assert (centred["means"], centred["transductive"], centred["renormalised"]) == ("train", False, True)
    assert centred["training_pairs"] == {"el": 238, "en": 238, "ru": 238}  # every training pair (fewer than 512), no held-out one
    assert len(centred["multi"]) == 3 and len(centred["cross"]) == 6 and "own_language_first" in centred["bias"]
    summary = (trained / "eval" / row["eval"] / "summary.md").read_text()
    assert "| embeddings | mean mono mAP |" in summary and f"| {TRAIN_LABEL} |" in summary and "| plain |" in summary
    card = (trained / "model" / "README.md").read_text()
    assert f"| {TRAIN_LABEL} |" in card and "taken over at most 512 training pairs per language" in card


def test_hbt_eval_debias_center_reproduces_training_and_says_which_means(trained: Path, tmp_path: Path) -> None:
    args = ("eval", "--model", str(trained / "model"), "--data", DATA, "--holdout-titles", "0.2", "--debias", "center")
    out = run_hbt(*args, "--out", str(tmp_path / "train"))
    assert out.returncode == 0, out.stderr[-3000:]
    plain_line, centred_line = headline(out.stdout)
    assert "centered" not in plain_line and centred_line.startswith(f"{TRAIN_LABEL}: mono_map ")
    ours = json.loads((tmp_path / "train" / "metrics.json").read_text())["summary"]
    during = json.loads((trained / "eval" / "step-6" / "metrics.json").read_text())["summary"]
    assert ours.keys() == during.keys()
    assert all(abs(ours[k] - during[k]) < 1e-4 for k in ours)  # the same training pairs: the titles outside the hold-out

    out = run_hbt(*args, "--debias-means", "pool", "--out", str(tmp_path / "pool"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert headline(out.stdout)[1].startswith(f"{POOL_LABEL}: mono_map ")
    pool = json.loads((tmp_path / "pool" / "metrics.json").read_text())
    assert pool["centered"]["transductive"] is True and f"| {POOL_LABEL} |" in (tmp_path / "pool" / "summary.md").read_text()
    assert {k: pool["summary"][k] for k in PLAIN} == {k: ours[k] for k in PLAIN}  # the plain figures do not move
    assert any(pool["summary"][k] != ours[k] for k in CENTERED)

    out = run_hbt("eval", "--model", str(trained / "model"), "--data", DATA, "--debias", "center", "--debias-data",
                  "synthetic:items=120,languages=3,seed=7", "--debias-sample", "30", "--settings", "multi", "--out",
                  str(tmp_path / "other"))
    assert out.returncode == 0, out.stderr[-3000:]
    other = json.loads((tmp_path / "other" / "metrics.json").read_text())["centered"]
    assert other["training_pairs"] == {"el": 30, "en": 30, "ru": 30} and set(other) >= {"multi", "bias"}


def test_debias_bad_input(tmp_path: Path, trained: Path) -> None:
    train = ("train", "--config", "configs/tiny.yaml", "train.max_steps=2", f"run.dir={tmp_path / 'run'}",
             f"data.cache_dir={tmp_path / 'cache'}")
    assert_one_line_error(run_hbt(*train, "eval.debias=bogus"), "eval.debias", "'none', 'center'", "'bogus'")
    assert_one_line_error(run_hbt(*train, "eval.debias_means=test"), "eval.debias_means", "'train', 'pool'")
    assert_one_line_error(run_hbt(*train, "eval.debias_sample=0"), "eval.debias_sample", ">= 1")
    assert not (tmp_path / "cache").exists()  # refused before any data was read
    out = run_hbt(*train, "data.train=synthetic:items=80,languages=2", "eval.data=synthetic:items=40,languages=3",
                  "eval.debias=center")
    assert_one_line_error(out, "eval.debias_means", "no queries in ru (evaluated)", "'pool'")
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "launch.json").exists()

    ev = ("eval", "--model", str(trained / "model"), "--data", DATA)
    assert_one_line_error(run_hbt(*ev, "--debias", "bogus"), "--debias", "bogus")
    assert_one_line_error(run_hbt(*ev, "--debias", "center"), "--debias-means", "--debias-data", "--holdout-titles", "pool")
    assert_one_line_error(run_hbt(*ev, "--debias-data", DATA), "--debias-data", "only with --debias center --debias-means train")
    assert_one_line_error(run_hbt(*ev, "--debias", "center", "--debias-means", "pool", "--debias-data", DATA), "--debias-data")
    assert_one_line_error(run_hbt(*ev, "--debias", "center", "--holdout-titles", "0.2", "--debias-sample", "0"),
                          "--debias-sample", ">= 1")
