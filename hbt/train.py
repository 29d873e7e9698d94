"""``hbt train``: config -> data -> sampler -> model -> engine -> export, on 1 to N ranks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from hbt import dist as hdist
from hbt.config import Config, save_config
from hbt.data import Corpus, holdout_titles, load_corpus, split_by_title
from hbt.data.tokenize import TextSpec, TokenizedCorpus
from hbt.errors import InputError
from hbt.model import BiEncoder, build_tiny, export, load_pretrained
from hbt.sampler import HybridBatchSampler, LanguageIndex


def split_data(cfg: Config) -> tuple[Corpus, Corpus | None]:
    """The training corpus and, with ``data.holdout_titles``, its held-out part."""
    corpus = load_corpus(cfg.data.train)
    if cfg.data.holdout_titles is None:
        return corpus, None
    held = holdout_titles(corpus, cfg.data.holdout_titles, seed=cfg.data.holdout_seed)
    return split_by_title(corpus, held)


def _set_threads(world_size: int) -> None:
    """Share the CPU cores between the ranks of this node unless the user said otherwise."""
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def build_model(cfg: Config, corpus: Corpus, run_dir: Path, env: hdist.DistEnv):
    """The encoder and tokenizer. The tiny preset is built once, by rank 0, and saved
    with the run (``init/``), so every rank and every resume starts from the same one."""
    m = cfg.model
    if m.name != "tiny":
        return load_pretrained(m.name, m.dropout)
    init = run_dir / "init"
    if env.is_main and not (init / "config.json").exists():
        texts = (text for item in corpus.items for p in item.pairs.values() for text in (p.query, p.passage))
        encoder, tokenizer = build_tiny(texts, m.tiny.vocab_size, m.tiny.hidden_size, m.tiny.layers, m.tiny.heads,
                                        m.tiny.intermediate_size, max(m.max_query_length, m.max_passage_length), cfg.run.seed)
        encoder.save_pretrained(init)
        tokenizer.save_pretrained(init)
    hdist.barrier()
    return load_pretrained(str(init), m.dropout)


def train(cfg: Config, resume: str = "auto") -> Path:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env = hdist.init()
    _set_threads(env.world_size)
    run_dir = Path(cfg.run.dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        launch = {"launcher": env.launcher, "world_size": env.world_size, "per_rank_batch": cfg.train.batch_size // env.world_size}
        (run_dir / "launch.json").write_text(json.dumps(launch) + "\n")

    train_corpus, held_out = split_data(cfg)
    eval_set = load_corpus(cfg.eval.data).retrieval if cfg.eval.data else held_out.retrieval if held_out else None
    encoder, tokenizer = build_model(cfg, train_corpus, run_dir, env)
    m = cfg.model
    spec = TextSpec(m.query_prefix, m.passage_prefix, m.max_query_length, m.max_passage_length)
    if cfg.train.hard_negatives and any(not p.negatives for item in train_corpus.items for p in item.pairs.values()):
        raise InputError("train.hard_negatives", f"{cfg.data.train} has pairs without hard negatives")
    if env.is_main:  # rank 0 tokenises and fills the cache; the others then read it
        data = TokenizedCorpus(train_corpus, tokenizer, spec, cfg.data.cache_dir)
    hdist.barrier()
    if not env.is_main:
        data = TokenizedCorpus(train_corpus, tokenizer, spec, cfg.data.cache_dir)

    sampler = HybridBatchSampler(LanguageIndex.from_corpus(train_corpus), cfg.train.sampler(cfg.run.seed),
                                 world_size=env.world_size, rank=env.rank)
    from hbt.engine import Engine  # imports deepspeed: after the cheap checks above

    torch.manual_seed(cfg.run.seed + env.rank)  # dropout: independent masks per rank, fixed by the seed

    engine = Engine(cfg, env, BiEncoder(encoder, m.pooling), data, sampler, run_dir)
    latest = engine.checkpointer.latest()
    if resume == "never" and latest:
        raise InputError("--resume", f"{run_dir} already has checkpoint {latest}; use --resume auto or another run.dir")
    tag = latest if resume == "auto" else None if resume == "never" else resume
    if tag:
        engine.resume(tag)
        if env.is_main:
            print(f"resumed from {run_dir / 'checkpoints' / tag} at step {engine.state.step}", file=sys.stderr)
    evaluator = None
    if eval_set is not None:
        evaluator = lambda label: evaluate_engine(engine, tokenizer, eval_set, spec, run_dir / "eval" / label, env)  # noqa: E731
    elif env.is_main:
        print("no evaluation data (set eval.data or data.holdout_titles): training only", file=sys.stderr)
    engine.fit(evaluator)
    export_model(engine, tokenizer, run_dir / "model", env)
    return run_dir


def _zero3(engine) -> bool:
    return engine.ds_config["zero_optimization"].get("stage", 0) == 3


def evaluate_engine(engine, tokenizer, rs, spec: TextSpec, out: Path, env: hdist.DistEnv) -> dict:
    """Evaluate the model being trained on every rank; rank 0 writes the outputs. Under
    ZeRO-3 the shards are gathered first, since ranks encode different numbers of batches."""
    import deepspeed

    from hbt.eval.report import write_outputs
    from hbt.eval.run import evaluate

    e = engine.cfg.eval
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=_zero3(engine)):
        results = evaluate(engine.module, tokenizer, rs, spec, e.setting_list(), e.k, e.index, e.batch_size, env.is_main)
    if env.is_main:
        write_outputs(results, out, f"{Path(engine.cfg.run.dir).name} {out.name}")
    return results["summary"]


def export_model(engine, tokenizer, out: Path, env: hdist.DistEnv) -> None:
    """Write the trained model (gathering ZeRO-3 shards first) as an HF/ST directory."""
    import deepspeed

    module: BiEncoder = engine.module
    m = engine.cfg.model
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=_zero3(engine)):
        if env.is_main:
            export(module, tokenizer, out, m.query_prefix, m.passage_prefix, m.max_query_length, m.max_passage_length)
    hdist.barrier()
