"""configs/paper-recipe.yaml as users run it: its sources replaced by local shards of
their shapes, trained by ``hbt train`` on two ranks, directly and on what ``hbt mine``
wrote for every source (docs/RECIPE.md's cluster chain)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, rows_of, torchrun, write_parquet

pytestmark = pytest.mark.slow


def paper_recipe(tmp_path: Path) -> tuple[dict, dict[str, Path]]:
    """configs/paper-recipe.yaml as a user fills it in: every placeholder source replaced
    by local shards of its shape (translated, column-mapped, English-only, a weighted
    large set with a language filter); the tiny model for speed. Returns the recipe and
    the shard folder of each source."""
    recipe = yaml.safe_load((ROOT / "configs/paper-recipe.yaml").read_text())
    shapes = {
        "qa-a": write_parquet(rows_of("synthetic:items=300,languages=3,seed=1"), tmp_path / "qa-a"),
        "qa-b": write_parquet(rows_of("synthetic:items=300,languages=3,seed=2"), tmp_path / "qa-b",
                              rename={"id": "question_id", "lang": "language", "query": "question", "positive": "answer_sentence"}),
        "qa-en": write_parquet(rows_of("synthetic:items=200,languages=1,seed=3"), tmp_path / "qa-en"),
        "mmarco": write_parquet(rows_of("synthetic:items=600,languages=3,seed=4"), tmp_path / "mmarco"),
    }
    for source in recipe["data"]["sources"]:
        source["path"] = str(shapes[source["name"]]) + ("/*.parquet" if "*" in source["path"] else "")
        if "languages" in source:
            source["languages"] = "el,en"
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    recipe["data"]["num_workers"] = 1
    recipe["run"]["dir"] = str(tmp_path / "run")
    recipe["model"] = {"name": "tiny", "max_query_length": 16, "max_passage_length": 32, "tiny": {"vocab_size": 2000}}
    recipe["train"].update(batch_size=16, max_steps=4, deepspeed="configs/deepspeed/zero0.json", checkpoint_every=1000)
    recipe["eval"]["data"] = "synthetic:items=100,languages=3,seed=9"
    return recipe, shapes


def train_recipe(recipe: dict, tmp_path: Path) -> list[dict]:
    """``hbt train`` of the recipe on two ranks: it must train, evaluate and export."""
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = torchrun(2, "train", "--config", str(config), timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and all(s["batch"] == "cross" or s["batch"].startswith("mono/") for s in steps)
    assert (tmp_path / "run" / "model" / "config.json").exists()
    return steps


def test_the_paper_recipe_trains_on_local_shards(tmp_path: Path) -> None:
    """The recipe's keys and its mixture are what hbt reads."""
    train_recipe(paper_recipe(tmp_path)[0], tmp_path)


def test_the_paper_recipe_trains_on_what_hbt_mine_wrote(tmp_path: Path) -> None:
    """docs/RECIPE.md's cluster chain: every source mined (``--columns`` for the one with
    its own column names), each source's path pointed at its mined directory (names,
    weights and language lists kept, ``columns:`` dropped), then the recipe trained with
    ``train.hard_negatives=1`` on two ranks."""
    from hbt.model import BiEncoder, build_tiny, export

    recipe, shapes = paper_recipe(tmp_path)
    texts = [r[k] for r in rows_of("synthetic:items=300,languages=3,seed=1") for k in ("query", "positive")]
    encoder, tokenizer = build_tiny(texts, vocab_size=1500, hidden_size=32, layers=1, heads=2, intermediate_size=64,
                                    max_length=64, seed=0)
    export(BiEncoder(encoder), tokenizer, tmp_path / "miner", "", "", 16, 32)
    for source in recipe["data"]["sources"]:
        mapping = ",".join(f"{k}={v}" for k, v in source.pop("columns", {}).items())
        out = torchrun(1, "mine", "--model", str(tmp_path / "miner"), "--data", source["path"], "--k", "1",
                       "--format", "parquet", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "mined" / source["name"]),
                       *(["--columns", mapping] if mapping else []), timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        source["path"] = str(tmp_path / "mined" / source["name"])
    recipe["train"]["hard_negatives"] = 1
    train_recipe(recipe, tmp_path)
