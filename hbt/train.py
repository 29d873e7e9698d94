"""``hbt train``: config -> data -> sampler -> model -> engine -> export, on 1 to N ranks."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import yaml

from hbt import dist as hdist
from hbt import fingerprint as run_fingerprint
from hbt import signals
from hbt.card import write_card
from hbt.checkpoint import MANIFEST, TAG, Checkpointer, incomplete
from hbt.config import Config, save_config
from hbt.data import RetrievalSet, split_corpus
from hbt.data.table import any_corpus
from hbt.data.tokenize import PairTokenizer, tokenizer_fingerprint
from hbt.data.training import TrainingData, load_training_data
from hbt.errors import InputError, writing
from hbt.eval.debias import Centering, centering_for, training_texts
from hbt.model import BiEncoder, build_tiny, check_encoder, export, load_pretrained
from hbt.monitor import rewind
from hbt.runlock import RunLock
from hbt.resolve import precision, resolve
from hbt.sampling import HybridBatchSampler, LanguageIndex


TOKENIZER_SAMPLE = 200_000  # pairs the tiny preset's tokenizer is trained on, at most


def training_data(cfg: Config, env: hdist.DistEnv | None = None) -> TrainingData:
    """The run's training data (rank 0 builds the caches, the other ranks read them) and,
    with ``data.holdout_titles``, its held-out part."""
    d = cfg.data
    is_main, barrier = (env.is_main, hdist.barrier) if env is not None else (True, lambda: None)
    return load_training_data(d.source_list(), d.cache_dir, d.holdout_titles, d.holdout_seed, is_main, barrier,
                              cfg.train.hard_negatives)


def evaluation_set(cfg: Config, data: TrainingData, env: hdist.DistEnv | None = None) -> RetrievalSet | None:
    """What the run evaluates: ``eval.data`` in any format hbt reads (only its
    ``eval.holdout_titles`` when set; rank 0 converts shards first), else the held-out
    titles of the training data, else nothing."""
    if cfg.eval.data:
        is_main, barrier = (env.is_main, hdist.barrier) if env is not None else (True, lambda: None)
        corpus = any_corpus(cfg.eval.data, cfg.data.cache_dir, is_main, barrier)
        if cfg.eval.holdout_titles is not None:
            _, corpus = split_corpus(corpus, cfg.eval.holdout_titles, cfg.data.holdout_seed, key="eval.holdout_titles")
        return corpus.retrieval
    return data.held_out.retrieval if data.held_out else None


def evaluation_centering(cfg: Config, data: TrainingData, eval_set: RetrievalSet | None) -> Centering | None:
    """``eval.debias``'s centring of every evaluation (None without one), its training
    sample drawn from the run's training data and checked against the evaluated languages
    before anything is trained (:mod:`hbt.eval.debias`)."""
    e = cfg.eval
    if eval_set is None:
        return None
    return centering_for(e.debias, e.debias_means, eval_set, lambda: training_texts(data, e.debias_sample),
                         e.debias_sample, "eval.debias_means")


def sampler_for(cfg: Config, data: TrainingData, world_size: int = 1, rank: int = 0) -> HybridBatchSampler:
    index = LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages, data.source,
                                      data.source_names, data.weights, data.negatives)
    return HybridBatchSampler(index, cfg.train.sampler(cfg.run.seed), world_size=world_size, rank=rank)


def _set_threads(world_size: int) -> None:
    """Share the CPU cores between the ranks of this node unless the user said otherwise."""
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def build_model(cfg: Config, data: TrainingData, run_dir: Path, env: hdist.DistEnv):
    """The encoder and tokenizer. The tiny preset is built once, by rank 0, and saved
    with the run (``init/``), so every rank and every resume starts from the same one."""
    m = cfg.model
    if m.name != "tiny":
        return load_pretrained(m.name, m.dropout)
    init = run_dir / "init"
    if env.is_main and not (init / "config.json").exists():
        texts = data.texts(data.rows, limit=TOKENIZER_SAMPLE)
        encoder, tokenizer = build_tiny(texts, m.tiny.vocab_size, m.tiny.hidden_size, m.tiny.layers, m.tiny.heads,
                                        m.tiny.intermediate_size, max(m.max_query_length, m.max_passage_length), cfg.run.seed)
        encoder.save_pretrained(init)
        tokenizer.save_pretrained(init)
    hdist.barrier()
    return load_pretrained(str(init), m.dropout)


def check_model(cfg: Config, run_dir: Path) -> None:
    """The encoder's config, read before the data (no weights yet), with the run's token
    limits checked against its positions: a missing or unreachable model, or a limit the
    model has no positions for, is one line now, not a failure at the first long text.
    The tiny preset is built to fit its limits; only an ``init/`` that an earlier start of
    this run.dir built for shorter ones can disagree."""
    m = cfg.model
    init = run_dir / "init"
    if m.name == "tiny" and not (init / "config.json").exists():
        return
    check_encoder(str(init) if m.name == "tiny" else m.name,
                  {"model.max_query_length": m.max_query_length, "model.max_passage_length": m.max_passage_length})


def _stop_if_signalled() -> None:
    """A stop signal during start-up: nothing new to save, exit 75 and be requeued."""
    if signals.stop_requested():
        raise signals.Preempted()


def resume_tag(checkpointer: Checkpointer, resume: str, run_dir: Path, env: hdist.DistEnv) -> str | None:
    """The checkpoint ``--resume`` asks for: auto (the newest complete one, if any), never,
    or a tag. Auto names on stderr every newer checkpoint it passes over and why, and
    refuses when checkpoints exist but none is complete (starting over would overwrite
    them). A tag must be complete too, except one written before checkpoints had manifests,
    which loads with a warning: the user named it."""
    latest = checkpointer.latest()
    if resume == "never":
        if checkpointer.tags():
            raise InputError("--resume", f"{run_dir} already has checkpoint {checkpointer.tags()[-1]}; use --resume auto or another run.dir")
        return None
    if resume == "auto":
        skipped = checkpointer.skipped(latest)
        if skipped and latest is None:
            raise InputError("--resume", f"no complete checkpoint in {checkpointer.root}: {'; '.join(skipped)}; resume one "
                                         "written before manifests by its tag, or start a new run.dir")
        if skipped and env.is_main:
            print(f"hbt: skipping incomplete checkpoint{'s' if len(skipped) > 1 else ''} {'; '.join(skipped)}", file=sys.stderr)
        return latest
    folder = checkpointer.root / resume
    if not (TAG.fullmatch(resume) and folder.is_dir()):
        raise InputError("--resume", f"no checkpoint {resume} in {checkpointer.root}")
    reason = incomplete(folder)
    if reason is not None and (folder / MANIFEST).exists():
        raise InputError("--resume", f"{folder} is incomplete: {reason}")
    if reason is not None and env.is_main:
        print(f"hbt: warning: {folder} has {reason}; loading it as named", file=sys.stderr)
    return resume


def check_fingerprint(checkpoint: Path, current: dict, accept_changes: bool) -> None:
    """Refuse to resume a run whose data, tokenizer, model, shaping config or world size
    changed since ``checkpoint`` was written. With ``accept_changes`` the keys that can
    take effect mid-run (:data:`hbt.fingerprint.ADJUSTABLE`) may differ; the rest never.
    A checkpoint that recorded ``train.precision`` as ``auto`` (before hbt resolved it)
    is taken to have run as auto runs here (:func:`hbt.fingerprint.differences`)."""
    saved = run_fingerprint.read(checkpoint)
    if saved is None:
        if (checkpoint / MANIFEST).exists():  # written by this hbt, which always writes one
            raise InputError("--resume", f"{checkpoint} has no {run_fingerprint.FILE}: its inputs cannot be checked; "
                                         "resume another checkpoint or start a new run.dir")
        print(f"hbt: warning: {checkpoint} has no fingerprint (written by an older hbt); resuming unchecked", file=sys.stderr)
        return
    if saved.get("world_size", current["world_size"]) != current["world_size"]:
        raise InputError("--resume", f"{checkpoint} was written by {saved['world_size']} rank(s), this run has "
                                     f"{current['world_size']}: resuming at another world size is not supported "
                                     "(ZeRO partitions and per-rank RNG streams belong to it); start a new run.dir")
    changed = run_fingerprint.differences(saved, current, auto_precision=precision("auto"))
    fixed = [phrase for key, phrase in changed.items() if key not in run_fingerprint.ADJUSTABLE]
    if fixed and accept_changes:
        raise InputError("--resume", f"{checkpoint} was written with other inputs, and these cannot change mid-run: "
                                     f"{'; '.join(fixed)} (start a new run.dir)")
    if changed and not accept_changes:
        raise InputError("--resume", f"{checkpoint} was written with other inputs; changed: {'; '.join(changed.values())} "
                                     "(resume anyway with --accept-changes, or start a new run.dir)")


def record_start(cfg: Config, run_dir: Path, env: hdist.DistEnv, tag: str | None) -> None:
    """``config.yaml`` is the config of the latest start; ``config-history/NNN.yaml`` keeps
    every start's (with its time, world size and the checkpoint it resumed from)."""
    history = run_dir / "config-history"
    history.mkdir(exist_ok=True)
    n = len(list(history.glob("*.yaml")))
    entry = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed_from": tag,
             "world_size": env.world_size, "launcher": env.launcher, "config": cfg.to_dict()}
    (history / f"{n:03d}.yaml").write_text(yaml.safe_dump(entry, sort_keys=False, allow_unicode=True), encoding="utf-8")
    save_config(cfg, run_dir / "config.yaml")


def start(cfg: Config) -> hdist.DistEnv:
    """This process's place in the job, before anything slow: stop signals caught (a
    pre-emption during start-up must still requeue), DeepSpeed's CPU accelerator where
    there is no GPU, the process group started (every collective bounded by
    ``run.dist_timeout_min``), the node's CPU cores shared between its ranks."""
    signals.install()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env = hdist.init(timeout_min=cfg.run.dist_timeout_min)
    _set_threads(env.world_size)
    return env


def train(cfg: Config, env: hdist.DistEnv, resume: str = "auto", accept_changes: bool = False) -> Path:
    """Train, evaluate and export the run ``cfg`` describes, on this rank of ``env``
    (from :func:`start`); returns the run directory."""
    run_dir = Path(cfg.run.dir)
    check_model(cfg, run_dir)  # before the lock: a refused model leaves the run directory as it was
    lock = lock_run_dir(run_dir, env)
    refused = False
    try:
        return _train(cfg, env, run_dir, resume, accept_changes)
    except InputError:
        refused = True  # the run directory stays as it was, .lock too
        raise
    finally:
        lock.release(restore=refused)


def lock_run_dir(run_dir: Path, env: hdist.DistEnv) -> RunLock:
    """Rank 0 takes the run directory's lock before anything is written into it; every
    rank learns whether it got it, so a refused job ends on all ranks with the same line."""
    lock = RunLock(run_dir)
    refusal = None
    if env.is_main:
        try:
            lock.acquire()
        except InputError as e:
            refusal = e
    if hdist.all_max([float(refusal is not None)])[0]:
        raise refusal or InputError("run.dir", f"{run_dir} is in use by another job (rank 0 could not lock it)")
    return lock


def _train(cfg: Config, env: hdist.DistEnv, run_dir: Path, resume: str, accept_changes: bool) -> Path:
    data = training_data(cfg, env)
    eval_set = evaluation_set(cfg, data, env)
    centering = evaluation_centering(cfg, data, eval_set)
    if cfg.train.hard_negatives and data.missing_negatives():
        raise InputError("train.hard_negatives", f"{data.missing_negatives():,} training pairs have no hard negatives")
    _stop_if_signalled()
    encoder, tokenizer = build_model(cfg, data, run_dir, env)
    sampler = sampler_for(cfg, data, env.world_size, env.rank)
    resolved = resolve(cfg, env, encoder, sampler)
    # What runs, not "auto": a run keeps its padding remedy and precision on resume, and one
    # moved between a CPU and a GPU under chunk_tokens=auto is refused (its chunks, packing
    # and dropout masks change).
    fp = run_fingerprint.fingerprint(resolved.config_as_run(cfg), data.fingerprint, tokenizer_fingerprint(tokenizer),
                                     run_fingerprint.model_digest(encoder), env.world_size)
    # The checkpoint to resume, checked before DeepSpeed starts and before anything is written:
    # a refused resume (a changed input, another world size, no complete checkpoint) costs
    # no engine and leaves the run directory as it was.
    checkpoints = Checkpointer(run_dir / "checkpoints", cfg.train.keep_checkpoints, env, fp)
    tag = resume_tag(checkpoints, resume, run_dir, env)
    if tag:
        check_fingerprint(checkpoints.root / tag, fp, accept_changes)
    if env.is_main:
        launch = {"launcher": env.launcher, "world_size": env.world_size, "per_rank_batch": resolved.per_rank_batch}
        (run_dir / "launch.json").write_text(json.dumps(launch) + "\n")
    from hbt.engine import Engine  # imports deepspeed: after the cheap checks above

    torch.manual_seed(cfg.run.seed + env.rank)  # dropout: independent masks per rank, fixed by the seed

    engine = Engine(cfg, env, resolved, BiEncoder(encoder, cfg.model.pooling), data,
                    PairTokenizer(tokenizer, resolved.text, cfg.train.hard_negatives), sampler, run_dir, fingerprint=fp)
    if tag:
        engine.resume(tag)
        if env.is_main:
            print(f"resumed from {run_dir / 'checkpoints' / tag} at step {engine.state.step}", file=sys.stderr)
    if env.is_main:
        rewind(run_dir, engine.state.step, engine.state.evaluated)
        record_start(cfg, run_dir, env, tag)
    _stop_if_signalled()
    evaluator = None
    if eval_set is not None:
        evaluator = lambda label: evaluate_engine(engine, tokenizer, eval_set, run_dir / "eval" / label, centering)  # noqa: E731
    elif env.is_main:
        print("no evaluation data (set eval.data or data.holdout_titles): training only", file=sys.stderr)
    engine.fit(evaluator)
    export_model(engine, tokenizer, run_dir / "model")
    if env.is_main:
        write_card(run_dir / "model", cfg, data.languages, engine.state.step, last_evaluation(run_dir))
    return run_dir


def last_evaluation(run_dir: Path) -> Path | None:
    """The directory of the run's newest evaluation (the one after the last step)."""
    done = sorted((run_dir / "eval").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    return done[-1].parent if done else None


def _zero3(engine) -> bool:
    return engine.resolved.zero_stage == 3


def evaluate_engine(engine, tokenizer, rs: RetrievalSet, out: Path, centering: Centering | None = None) -> dict:
    """Evaluate the model being trained on every rank of the engine's job, encoding its
    texts as it trains on them (and ``centering``'s, :func:`evaluation_centering`); rank 0
    writes the outputs. Under ZeRO-3 the shards are gathered first, since ranks encode
    different numbers of batches."""
    import deepspeed

    from hbt.eval.report import write_outputs
    from hbt.eval.run import evaluate

    e, env = engine.cfg.eval, engine.env
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=_zero3(engine)):
        results = evaluate(engine.module, tokenizer, rs, engine.resolved.text, env, e.setting_list(), e.k, e.index,
                           e.batch_size, env.is_main, centering=centering)
    if env.is_main:
        write_outputs(results, out, f"{Path(engine.cfg.run.dir).name} {out.name}")
    return results["summary"]


def export_model(engine, tokenizer, out: Path) -> None:
    """Write the trained model (gathering ZeRO-3 shards first) as an HF/ST directory, with
    the prefixes and lengths it was trained with."""
    import deepspeed

    module: BiEncoder = engine.module
    text = engine.resolved.text
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=_zero3(engine)):
        if engine.env.is_main:
            with writing(out):
                export(module, tokenizer, out, text.query_prefix, text.passage_prefix, text.max_query_length, text.max_passage_length)
    hdist.barrier()
