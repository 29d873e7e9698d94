"""The ``hbt mine`` job on one rank: load, encode (sharded), search, choose and write."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hbt.data.corpus import Corpus
from hbt.dist import DistEnv
from hbt.errors import InputError
from hbt.mine.choose import MineSettings
from hbt.mine.encode import encode_layout
from hbt.mine.layout import MineLayout
from hbt.mine.output import RowWriter, write_report
from hbt.mine.search import Search, mine_embeddings


@dataclass
class MineArgs:
    model: str
    data: str
    out: Path
    settings: MineSettings = field(default_factory=MineSettings)
    pooling: str | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_length: int | None = None
    format: str = "jsonl"
    with_scores: bool = False
    cache_dir: str = ".cache/hbt"  # where shards are converted (data.cache_dir)
    columns: dict[str, str] = field(default_factory=dict)  # hbt column -> the shards' column (data.sources' columns)
    holdout_titles: str | None = None  # titles neither mined for nor drawn as negatives (the evaluation's)
    holdout_seed: int = 0
    search: Search = field(default_factory=Search)


def run_mine(a: MineArgs) -> tuple[dict, DistEnv]:
    """Load, encode (sharded), search, choose and write, on every rank of the job that
    started this process (its process group is started here, after the cheap checks);
    returns mine.json's content (on every rank; rank 0 wrote it and the training data)
    and the job's env (so the caller prints once)."""
    from hbt import dist as hdist
    from hbt.data.split import parse_holdout
    from hbt.eval.standalone import check_output_dir, load_encoder, model_text_spec

    s = a.settings
    s.validate()
    if a.format not in ("jsonl", "parquet"):
        raise InputError("--format", f"expected jsonl or parquet, got {a.format!r}")
    check_output_dir(a.out)
    if a.holdout_titles:
        parse_holdout(a.holdout_titles, key="--holdout-titles")
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    spec, pooling = model_text_spec(a.model, a.query_prefix, a.passage_prefix, a.max_length, a.pooling)
    env = hdist.init()
    corpus = mining_corpus(a, env)
    layout = MineLayout.of(corpus, s.languages, a.data)
    model, tokenizer = load_encoder(a.model, pooling, env)
    timings["load_s"] = time.perf_counter() - tick
    work = a.out / ".mine-work" / f"rank-{env.rank}"
    if env.is_main:
        a.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    try:
        queries, cands, c_own = encode_layout(model, tokenizer, layout, spec, s.batch_size, work, env, timings)
        del model
        result = mine_embeddings(queries, cands, c_own, layout, s, env, a.search, env.is_main,
                                 writer=RowWriter(a.out, a.format, a.with_scores, layout, corpus) if env.is_main else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hdist.barrier()
    timings.update(result.pop("timings"))
    report = {
        "model": a.model, "data": a.data, "corpus": corpus.name, "world_size": env.world_size,
        "settings": {**asdict(s), "range": list(s.range), "languages": layout.candidates.langs, "format": a.format,
                     "query_prefix": spec.query_prefix, "passage_prefix": spec.passage_prefix, "pooling": pooling,
                     "max_query_length": spec.max_query_length, "max_passage_length": spec.max_passage_length,
                     "with_scores": a.with_scores, "holdout_titles": a.holdout_titles, "holdout_seed": a.holdout_seed},
        "candidates": {lang: int(n) for lang, n in zip(layout.candidates.langs, np.diff(layout.candidates.start))},
        **result, "timings": timings,
    }
    if env.is_main:
        write_report(a.out, report)
    return report, env


def mining_corpus(a: MineArgs, env: DistEnv) -> Corpus:
    """The corpus to mine (:func:`hbt.data.table.any_corpus`), without its held-out titles."""
    from hbt import dist as hdist
    from hbt.data import split_corpus
    from hbt.data.table import any_corpus

    corpus = any_corpus(a.data, a.cache_dir, env.is_main, hdist.barrier, a.columns)
    if a.holdout_titles:
        corpus, _ = split_corpus(corpus, a.holdout_titles, a.holdout_seed, key="--holdout-titles")
    return corpus
