"""The exported model's card (hbt/card.py) for the configs users publish from: named
sources, globs of shards, a mined file, a hub base model, an evaluation restricted to
held-out titles, and a sweep's untrained zero-shot baseline. The card of a real run is
checked end to end in tests/integration/test_train.py::test_export_carries_a_model_card."""

from __future__ import annotations

from pathlib import Path

import yaml

from hbt.card import write_card
from hbt.config import load_config


def card(tmp_path: Path, tree: dict, steps: int, summary: str | None = None) -> tuple[dict, str]:
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tree))
    cfg = load_config(tmp_path / "exp.yaml")
    evaluation = None
    if summary is not None:
        evaluation = tmp_path / "eval"
        evaluation.mkdir()
        (evaluation / "summary.md").write_text(f"# title\n{summary}\n")
    out = tmp_path / "model"
    out.mkdir()
    _, header, body = write_card(out, cfg, ["de", "en"], steps, evaluation).read_text().split("---\n", 2)
    return yaml.safe_load(header), body


def test_sources_are_named_as_users_know_them(tmp_path: Path) -> None:
    tree = {"model": {"name": "intfloat/multilingual-e5-small"},
            "data": {"sources": [{"path": "/data/qa-a/*.parquet"}, {"path": "/data/mined/qa-b/train.jsonl"},
                                 {"path": "/data/mmarco/*.parquet", "name": "mmarco", "weight": 0.5}]},
            "eval": {"data": "/data/xquad-r", "holdout_titles": 0.2},
            "train": {"alpha": 0.5, "grad_accum": 2, "batch_size": 64}}
    meta, body = card(tmp_path, tree, 30, "| mono | 0.7000 |")
    assert meta["base_model"] == "intfloat/multilingual-e5-small" and meta["language"] == ["de", "en"]
    assert "| data | `qa-a` (shards), `qa-b` (corpus), `mmarco` (shards) x 0.5 |" in body
    assert "| steps | 30 optimizer steps of 2 contrastive batches of 64 pairs (all ranks together) |" in body
    assert "On `/data/xquad-r`, only its held-out titles (`0.2`, seed 0; none was trained on)" in body
    assert "fine-tuned from `intfloat/multilingual-e5-small`" in body and "| mono | 0.7000 |" in body


def test_a_zero_shot_baseline_says_it_was_not_trained(tmp_path: Path) -> None:
    meta, body = card(tmp_path, {"model": {"name": "intfloat/multilingual-e5-small"}, "data": {"train": "synthetic"}}, 0,
                      "| mono | 0.5000 |")
    assert "exports it untrained (0 optimizer steps)" in body and "fine-tuned from" not in body
    assert "On the held-out titles of the training data (none of their items was trained on)" in body
