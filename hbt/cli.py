"""The ``hbt`` command line: one subcommand per job, each with ``--help``.

Every subcommand turns bad input (:class:`hbt.errors.InputError`) into one line on
stderr and exit status 2, before any worker starts.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from hbt.errors import EXIT_BAD_INPUT, InputError


def _data_stats(args: argparse.Namespace) -> int:
    from hbt.data import load_corpus
    from hbt.data.stats import pairs_table, stats_table
    from hbt.data.table import is_table_source

    if is_table_source(args.path):  # shards: what training reads, without a Python object per row
        data, index = _training_index(args.path, args.cache_dir)
        print(f"{args.path}: {data.n_items:,} items, {len(data.rows):,} pairs, {len(data.languages)} languages")
        print(pairs_table(data.languages, data.langs, data.offsets, index.group))
        return 0
    corpus = load_corpus(args.path)
    print(f"{corpus.name}: {len(corpus.items):,} items, {len(corpus.titles):,} titles, {len(corpus.languages)} languages")
    print(stats_table(corpus))
    return 0


def _training_index(path: str, cache_dir: str):
    """One source's training data and the sampler's index of it."""
    from hbt.data.sources import Source
    from hbt.data.training import load_training_data
    from hbt.sampler import LanguageIndex

    data = load_training_data([Source(path=path)], cache_dir)
    return data, LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages)


def _data_sampler(args: argparse.Namespace):
    """The training data and the sampler that ``hbt data sample`` and ``hbt data plan`` share."""
    from hbt.sampler import HybridBatchSampler, SamplerConfig

    cfg = SamplerConfig(
        batch_size=args.batch_size, alpha=args.alpha, mix=args.mix, language_policy=args.language_policy,
        language_temperature=args.language_temperature, remainder=args.remainder, seed=args.seed,
    )
    cfg.validate()  # before reading any data: a typo costs a second, not an index build
    data, index = _training_index(args.path, args.cache_dir)
    return data, HybridBatchSampler(index, cfg)


def _data_sample(args: argparse.Namespace) -> int:
    _, sampler = _data_sampler(args)
    cfg = sampler.cfg
    for epoch in range(args.epochs):
        mix = sampler.mix(epoch)
        batches = sampler.plan(epoch)
        mono = sum(n for k, n in mix.items() if k != "cross")
        print(f"epoch {epoch}: {len(batches)} contrastive batches of {cfg.batch_size}, "
              f"{mono} mono ({mono / max(1, len(batches)):.2f}), {mix['cross']} cross")
        print("  mono per language: " + ", ".join(f"{k[5:]} {n}" for k, n in sorted(mix.items()) if k != "cross"))
        for batch in batches[: args.show]:
            langs = sorted({f"{q}->{p}" for _, q, p in batch.pairs})
            print(f"  {batch.kind:5s} {len(batch.pairs)} pairs: {', '.join(langs[:6])}{' ...' if len(langs) > 6 else ''}")
    return 0


def _data_plan(args: argparse.Namespace) -> int:
    """One JSON line per global contrastive batch, with the corpus' own item ids."""
    import json
    from pathlib import Path

    if args.epochs < 1:
        raise InputError("--epochs", f"must be at least 1, got {args.epochs}")
    data, sampler = _data_sampler(args)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    total = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for epoch in range(args.epochs):
                plan = sampler.plan(epoch)
                ids = data.item_ids(plan.items.ravel())  # one Arrow lookup per epoch
                size = sampler.cfg.batch_size
                for b in range(len(plan)):
                    pairs = [[ids[b * size + n], q, p] for n, (_, q, p) in enumerate(plan.pairs(b))]
                    kind = "mono" if plan.mono[b] else "cross"
                    f.write(json.dumps({"epoch": epoch, "index": b, "kind": kind, "pairs": pairs}, ensure_ascii=False) + "\n")
                total += len(plan)
                mix = plan.mix()
                print(f"epoch {epoch}: {len(plan)} contrastive batches of {sampler.cfg.batch_size}, "
                      f"{len(plan) - mix['cross']} mono, {mix['cross']} cross")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(str(out), f"cannot write the plan: {e.strerror or e}") from None
    tmp.replace(out)
    print(f"wrote {total} batches ({args.epochs} epoch{'s' if args.epochs != 1 else ''}) to {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from hbt import signals

    signals.install()  # before the heavy imports: a pre-emption at any moment must requeue
    from hbt.config import load_config
    from hbt.engine import Diverged
    from hbt.train import train

    cfg = load_config(args.config, args.overrides)
    try:
        run_dir = train(cfg, resume=args.resume, accept_changes=args.accept_changes)
    except signals.Preempted as e:
        saved = f"checkpoint {e} written" if str(e) else "before training started (nothing new to save)"
        print(f"hbt: pre-empted; {saved}, exit {signals.EXIT_PREEMPTED} to requeue", file=sys.stderr)
        return signals.EXIT_PREEMPTED
    except Diverged as e:
        print(f"hbt: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # a collective failed: say which rank is gone, not a gloo/NCCL traceback
        from hbt import dist as hdist

        if not hdist.is_peer_failure(e):
            raise
        print(f"hbt: error: {lost_rank_report(e, Path(cfg.run.dir))}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {run_dir.resolve()}")
    return 0


def lost_rank_report(error: RuntimeError, run_dir: Path) -> str:
    """One line for a run whose peers are gone: who is lost, why, what is safe on disk."""
    import torch.distributed as dist

    from hbt import dist as hdist
    from hbt.checkpoint import Checkpointer

    lost = hdist.lost_ranks()
    who = ("lost rank " + ", ".join(map(str, lost))) if lost else "lost rank 0 (the rendezvous host)" if lost is None else "a collective failed"
    cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    latest = Checkpointer(run_dir / "checkpoints", keep=1).latest()
    saved = f"last checkpoint {latest} in {run_dir / 'checkpoints'} is intact; the same command resumes from it" if latest else "no checkpoint yet"
    return f"rank {dist.get_rank()} of {dist.get_world_size()}: {who} ({cause}); {saved}"


def _config(args: argparse.Namespace) -> int:
    import yaml

    from hbt.config import load_config

    tree = load_config(args.config, args.overrides).to_dict()
    if args.get is None:
        print(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), end="")
        return 0
    node = tree
    for part in args.get.split("."):
        if not isinstance(node, dict) or part not in node:
            raise InputError("--get", f"no config key {args.get!r}")
        node = node[part]
    print(node)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hbt.config import EvalConfig
    from hbt.eval.standalone import EvalArgs, run_eval

    settings = EvalConfig(settings=args.settings).setting_list()
    out = Path(args.out or f"runs/eval/{Path(args.model).name}-{Path(args.data.split(':')[0]).name}")
    results = run_eval(EvalArgs(args.model, args.data, settings, out, args.holdout_titles, args.seed, args.pooling,
                                args.query_prefix, args.passage_prefix, args.max_length, args.k, args.batch_size, args.index))
    if int(os.environ.get("RANK", "0")) == 0:
        print(", ".join(f"{k} {v:.4f}" for k, v in results["summary"].items()))
        print(f"outputs: {out.resolve()}")
    return 0


def _columns(text: str | None) -> dict[str, str]:
    """``id=question_id,query=question`` as {hbt column: the data's column}."""
    pairs = [part.split("=", 1) for part in (text or "").split(",") if part.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise InputError("--columns", f"expected hbt_column=your_column pairs separated by commas, got {text!r}")
    return {ours.strip(): theirs.strip() for ours, theirs in pairs}


def _mine(args: argparse.Namespace) -> int:
    from hbt.mine import MineArgs, MineSettings, parse_range, run_mine

    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip()) if args.languages else None
    settings = MineSettings(k=args.k, range=parse_range(args.range), languages=languages,
                            max_score_ratio=args.max_score_ratio, pick=args.pick, seed=args.seed,
                            batch_size=args.batch_size, index=args.index)
    settings.validate()
    report = run_mine(MineArgs(args.model, args.data, Path(args.out), settings, args.pooling, args.query_prefix,
                               args.passage_prefix, args.max_length, args.format, args.with_scores, args.cache_dir,
                               _columns(args.columns), args.holdout_titles, args.holdout_seed))
    if int(os.environ.get("RANK", "0")) == 0:
        c = report["counts"]
        print(f"{c['written']:,} of {c['pairs']:,} pairs with hard negatives ({c['short']:,} with fewer than {args.k}, "
              f"{c['filled']:,} filled from below the range); {c['false_negatives_skipped']:,} false negatives skipped")
        print(f"outputs: {Path(args.out).resolve()}/{{{','.join(report['files'])},mine.json}}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hbt.eval.report import compare

    print(compare([Path(p) for p in args.runs], Path(args.out)), end="")
    print(f"table and plot: {Path(args.out).resolve()}/report.{{md,csv,png}}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hbt.sweep import SweepSpec, collect, parse_alphas, run_sweep
    from hbt.sweep_report import write_report

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    spec = SweepSpec(configs=args.config, alphas=parse_alphas(args.alphas, args.strategies), seeds=seeds, out=Path(args.out),
                     overrides=args.overrides, zero_shot=args.zero_shot, executor=args.executor,
                     tasks_per_node=args.tasks_per_node, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                     cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min, partition=args.partition,
                     max_parallel=args.max_parallel, wait_timeout_s=args.wait_timeout)
    problems = []
    if not args.report_only:
        tick = time.monotonic()
        problems = run_sweep(spec, log=lambda line: print(line, flush=True))
        print(f"all jobs ended after {time.monotonic() - tick:.0f} s", flush=True)
    print(write_report(collect(spec), spec.out), end="")
    print(f"tables, curves and heatmaps: {spec.out.resolve()}/sweep.{{md,csv,png}}, heatmaps-*.png")
    for line in problems:
        print(f"hbt: {line}", file=sys.stderr)
    return 1 if problems else 0


def _sampler_options(parser: argparse.ArgumentParser) -> None:
    """The sampler settings of ``hbt data sample`` and ``hbt data plan`` (train.* in a config)."""
    parser.add_argument("path", help="training data: Parquet/JSONL shards (a directory or a glob), a save_to_disk "
                                     "directory, hf:NAME, a LAReQA directory, a .jsonl file, or synthetic[:...]")
    parser.add_argument("--cache-dir", default=".cache/hbt", help="where shards are converted and the index is kept (data.cache_dir)")
    parser.add_argument("--batch-size", type=int, default=32, help="contrastive batch size (all ranks together)")
    parser.add_argument("--alpha", type=float, default=0.5, help="share of monolingual batches")
    parser.add_argument("--mix", choices=["exact", "bernoulli"], default="exact")
    parser.add_argument("--language-policy", choices=["proportional", "uniform", "temperature"], default="proportional")
    parser.add_argument("--language-temperature", type=float, default=1.0)
    parser.add_argument("--remainder", choices=["drop", "carry"], default="drop", help="items that fill no last batch: dropped or first next epoch")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbt", description="Hybrid batch training of multilingual dense retrievers.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="inspect corpora and the batches the sampler makes from them")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    stats = data_commands.add_parser("stats", help="items, queries and candidates per language")
    stats.add_argument("path", help="Parquet/JSONL shards (directory or glob), a save_to_disk directory, hf:NAME, "
                                    "LAReQA .json file or directory, a .jsonl file, or synthetic[:items=N,languages=L,...]")
    stats.add_argument("--cache-dir", default=".cache/hbt", help="where shards are converted and the index is kept (data.cache_dir)")
    stats.set_defaults(run=_data_stats)
    sample = data_commands.add_parser("sample", help="plan hybrid batches and print the batch-type mix")
    _sampler_options(sample)
    sample.add_argument("--epochs", type=int, default=1)
    sample.add_argument("--show", type=int, default=5, help="print the first N batches of each epoch")
    sample.set_defaults(run=_data_sample)
    plan = data_commands.add_parser("plan", help="write every global contrastive batch of some epochs as JSON lines",
                                    description="One line per contrastive batch: {epoch, index, kind, pairs: "
                                                "[[item id, query language, passage language], ...]}. The plan depends "
                                                "on the data, seed and batch size only, not on the world size.")
    _sampler_options(plan)
    plan.add_argument("--epochs", type=int, default=1)
    plan.add_argument("--out", required=True, help="the JSONL file to write")
    plan.set_defaults(run=_data_plan)

    train = commands.add_parser("train", help="fine-tune a bi-encoder with hybrid batches (1 to N ranks)",
                                description="Train from a YAML config; overrides like train.alpha=0.5 follow it.")
    train.add_argument("--config", default=None, help="experiment YAML (default: built-in tiny defaults)")
    train.add_argument("--resume", default="auto", help="auto (latest checkpoint if any), never, or a checkpoint tag")
    train.add_argument("--accept-changes", action="store_true",
                       help="resume even though the data, tokenizer, model, DeepSpeed JSON or training config differ from the checkpoint's")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    train.set_defaults(run=_train)

    config = commands.add_parser("config", help="print the resolved config (or one key): what 'hbt train' would use")
    config.add_argument("--config", default=None)
    config.add_argument("--get", default=None, metavar="section.key", help="print only this key (scripts use it)")
    config.add_argument("overrides", nargs="*", metavar="section.key=value")
    config.set_defaults(run=_config)

    ev = commands.add_parser("eval", help="retrieval evaluation (mono, cross, multilingual) of an encoder, 1 to N ranks")
    ev.add_argument("--model", required=True, help="encoder directory (an hbt export, or any Hugging Face encoder)")
    ev.add_argument("--data", required=True, help="LAReQA dir/file, .jsonl, retrieval dir (queries/corpus/qrels) or synthetic[:...]")
    ev.add_argument("--settings", default="mono,cross,multi", help="comma-separated subset of mono,cross,multi")
    ev.add_argument("--out", default=None, help="output directory (default runs/eval/<model>-<data>)")
    ev.add_argument("--holdout-titles", default=None, help="evaluate only these held-out titles (fraction, list or @file)")
    ev.add_argument("--seed", type=int, default=0, help="seed of a fractional title split")
    ev.add_argument("--pooling", choices=["mean", "cls"], default=None, help="default: from the model's sentence-transformers files, else mean")
    ev.add_argument("--query-prefix", default=None, help="e.g. 'query: ' for e5 (default: the model's prompts, else none)")
    ev.add_argument("--passage-prefix", default=None, help="e.g. 'passage: ' for e5")
    ev.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's, else 128)")
    ev.add_argument("--k", type=int, default=100, help="length of the multilingual top-k lists written to multi.run")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat", help="FAISS index of each shard")
    ev.set_defaults(run=_eval)

    mine = commands.add_parser("mine", help="mine hard negatives for every (item, language) pair, 1 to N ranks",
                               description="Encode the corpus sharded across ranks, search each pair's own-language "
                                           "pool and write the pairs with hard negatives in hbt's generic training "
                                           "format (docs/mining.md). Never a candidate the evaluation counts as "
                                           "relevant, nor one with the positive's text.")
    mine.add_argument("--model", required=True, help="encoder directory (an hbt export, or any Hugging Face encoder)")
    mine.add_argument("--data", required=True, help="Parquet/JSONL shards (a directory or a glob), a save_to_disk dir, "
                      "LAReQA dir/file, .jsonl or synthetic[:...] (anything with pairs)")
    mine.add_argument("--cache-dir", default=".cache/hbt", help="where shards are converted (data.cache_dir)")
    mine.add_argument("--columns", default=None, metavar="OURS=THEIRS,...",
                      help="shards' column names, as a source's columns: e.g. id=question_id,query=question")
    mine.add_argument("--holdout-titles", default=None, help="titles to leave out, neither mined nor used as negatives "
                      "(fraction, list or @file; as data.holdout_titles)")
    mine.add_argument("--holdout-seed", type=int, default=0, help="seed of a fractional title split (data.holdout_seed)")
    mine.add_argument("--out", required=True, help="output directory: train.jsonl (or Parquet shards) and mine.json")
    mine.add_argument("--k", type=int, default=7, help="negatives per pair")
    mine.add_argument("--range", default="10-100", metavar="A-B", help="skip the top A of the ranking, draw from ranks A+1..B")
    mine.add_argument("--pick", choices=["sample", "top"], default="sample", help="k at random from the range (seeded), or its best k")
    mine.add_argument("--languages", default=None, help="comma-separated pool languages to mine (default: all)")
    mine.add_argument("--max-score-ratio", type=float, default=None, metavar="R",
                      help="drop negatives scoring above R x the positive's score (positive-aware filtering)")
    mine.add_argument("--seed", type=int, default=0)
    mine.add_argument("--pooling", choices=["mean", "cls"], default=None, help="default: from the model's files, else mean")
    mine.add_argument("--query-prefix", default=None, help="e.g. 'query: ' for e5 (default: the model's prompts, else none)")
    mine.add_argument("--passage-prefix", default=None, help="e.g. 'passage: ' for e5")
    mine.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's, else 128)")
    mine.add_argument("--batch-size", type=int, default=128)
    mine.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat", help="FAISS index (flat: exact)")
    mine.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="train.jsonl or train-NNNNN.parquet shards")
    mine.add_argument("--with-scores", action="store_true",
                      help="also write positive_score, negative_scores and negative_ranks (0-based) per row")
    mine.set_defaults(run=_mine)

    sweep = commands.add_parser("sweep", help="a job array over alpha, seeds and configs (submitit: Slurm, else local)",
                                description="Submit, wait (with a deadline), then tabulate and plot against alpha.")
    sweep.add_argument("--config", action="append", required=True, help="experiment YAML; repeat for several")
    sweep.add_argument("--alphas", default=None, help="comma-separated, e.g. 0,0.25,0.5,0.75,1")
    sweep.add_argument("--strategies", default=None, help="by name: mono-only (alpha 1), cross-only (0), hybrid (0.5)")
    sweep.add_argument("--seeds", default="0", help="comma-separated run.seed values")
    sweep.add_argument("--zero-shot", action="store_true", help="also evaluate each config's untrained model (once)")
    sweep.add_argument("--report-only", action="store_true", help="submit nothing; rewrite the tables and plots from the run dirs")
    sweep.add_argument("--out", default="runs/sweep", help="sweep directory: one run dir per job, submitit logs, the table")
    sweep.add_argument("--executor", choices=["auto", "local", "slurm"], default="auto", help="auto: Slurm when srun exists")
    sweep.add_argument("--nodes", type=int, default=1)
    sweep.add_argument("--tasks-per-node", type=int, default=1, help="ranks per node (one per GPU on clusters)")
    sweep.add_argument("--gpus-per-node", type=int, default=0)
    sweep.add_argument("--cpus-per-task", type=int, default=1)
    sweep.add_argument("--partition", default=None)
    sweep.add_argument("--timeout-min", type=int, default=60, help="each job's time limit")
    sweep.add_argument("--max-parallel", type=int, default=None, help="jobs running at once (default: all on Slurm; locally one at a time, each using every core)")
    sweep.add_argument("--wait-timeout", type=float, default=4 * 3600, help="seconds to wait for all jobs before cancelling")
    sweep.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides for every job")
    sweep.set_defaults(run=_sweep)

    report = commands.add_parser("report", help="put several runs side by side: one Markdown/CSV table and one plot")
    report.add_argument("runs", nargs="+", help="run directories (their newest eval), eval output dirs, or metrics.json files")
    report.add_argument("--out", default="runs/report", help="where report.md, report.csv and report.png go")
    report.set_defaults(run=_report)
    return parser


def quiet_libraries() -> None:
    """hbt draws its own progress; the libraries' per-file bars and load reports would bury it."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> None:
    faulthandler.enable()  # a crash in native code (a torchrun worker's SIGSEGV) prints its Python stack
    args = build_parser().parse_args(argv)
    if args.command != "data":
        quiet_libraries()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        code = run(args)
    except InputError as e:
        print(f"hbt: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    sys.exit(code)
