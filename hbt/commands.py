"""What each ``hbt`` subcommand does, given its parsed arguments (:mod:`hbt.cli` parses).

Each imports what it needs when it runs, so that ``hbt train`` has installed its stop
signals' handlers before torch is imported. Each returns the process's exit status.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from hbt.errors import InputError

if TYPE_CHECKING:  # hbt.dist imports torch
    from hbt.dist import DistEnv

T = TypeVar("T")


def data_stats_command(args: argparse.Namespace) -> int:
    from hbt.data import load_corpus
    from hbt.data.stats import pairs_table, stats_table, synthetic_stats
    from hbt.data.synthetic import is_synthetic
    from hbt.data.table import is_table_source

    if is_synthetic(args.path):  # generated into the cache as a table: any size, no Python object per pair
        print(synthetic_stats(args.path, args.cache_dir))
        return 0
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
    from hbt.sampling import LanguageIndex

    data = load_training_data([Source(path=path)], cache_dir)
    return data, LanguageIndex.from_arrays(data.languages, data.offsets, data.langs, data.passages)


def _data_sampler(args: argparse.Namespace):
    """The training data and the sampler that ``hbt data sample`` and ``hbt data plan`` share."""
    import dataclasses

    from hbt.config import SamplerConfig
    from hbt.sampling import HybridBatchSampler

    cfg = SamplerConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplerConfig)})
    by_option(cfg.validate)  # before reading any data: a typo costs a second, not an index build
    if args.epochs < 1:
        raise InputError("--epochs", f"must be at least 1, got {args.epochs}")
    data, index = _training_index(args.path, args.cache_dir)
    return data, by_option(lambda: HybridBatchSampler(index, cfg))


def by_option(make: Callable[[], T]) -> T:
    """``make()``, its refusal of a sampler setting named by the option the user typed
    (``--alpha``), with the config key that sets it in a config beside it."""
    from hbt.config import sampler_keys

    try:
        return make()
    except InputError as e:
        option = {key: "--" + name.replace("_", "-") for name, (key, _) in sampler_keys().items()}.get(e.where)
        if option is None:
            raise
        raise InputError(f"{option} ({e.where})", e.problem) from None


def data_sample_command(args: argparse.Namespace) -> int:
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


def data_plan_command(args: argparse.Namespace) -> int:
    """One JSON line per global contrastive batch, with the corpus' own item ids."""
    import json

    out = Path(args.out)
    if out.is_dir():  # refused before the plan, not by the rename after it (which left the .tmp file behind)
        raise InputError("--out", f"{out} is a directory; name the JSONL file to write")
    if not out.parent.is_dir():  # checked before the plan too
        raise InputError("--out", f"{out.parent} is not an existing directory")
    data, sampler = _data_sampler(args)
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
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(str(out), f"cannot write the plan: {e.strerror or e}") from None
    print(f"wrote {total} batches ({args.epochs} epoch{'s' if args.epochs != 1 else ''}) to {out}")
    return 0


def train_command(args: argparse.Namespace) -> int:
    """``hbt train``; :func:`hbt.cli.main` has installed the stop signals' handlers already."""
    from hbt import signals
    from hbt.config import load_config
    from hbt.engine import Diverged
    from hbt.train import start, train

    cfg = load_config(args.config, args.overrides)
    env = start(cfg)
    try:
        run_dir = train(cfg, env, resume=args.resume, accept_changes=args.accept_changes)
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
        print(f"hbt: error: {lost_rank_report(e, Path(cfg.run.dir), env)}", file=sys.stderr)
        return 1
    if env.is_main:
        print(f"run directory: {run_dir.resolve()}")
    return 0


def lost_rank_report(error: RuntimeError, run_dir: Path, env: DistEnv) -> str:
    """One line, from this rank of ``env``, for a run whose peers are gone: who is lost,
    why, what is safe on disk."""
    from hbt import dist as hdist
    from hbt.checkpoint import Checkpointer

    lost = hdist.lost_ranks(env)
    who = ("lost rank " + ", ".join(map(str, lost))) if lost else "lost rank 0 (the rendezvous host)" if lost is None else "a collective failed"
    cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    latest = Checkpointer(run_dir / "checkpoints", keep=1, env=env).latest()
    saved = f"last checkpoint {latest} in {run_dir / 'checkpoints'} is intact; the same command resumes from it" if latest else "no checkpoint yet"
    return f"rank {env.rank} of {env.world_size}: {who} ({cause}); {saved}"


def config_command(args: argparse.Namespace) -> int:
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


def eval_command(args: argparse.Namespace) -> int:
    from hbt.config import EvalConfig
    from hbt.eval.standalone import EvalArgs, run_eval

    settings = EvalConfig(settings=args.settings).setting_list()
    out = Path(args.out or f"runs/eval/{Path(args.model).name}-{Path(args.data.split(':')[0]).name}")
    results, env = run_eval(EvalArgs(args.model, args.data, settings, out, args.holdout_titles, args.seed, args.pooling,
                                     args.query_prefix, args.passage_prefix, args.max_length, args.k, args.batch_size, args.index,
                                     args.cache_dir, args.debias, args.debias_means, args.debias_data, args.debias_sample))
    if env.is_main:
        from hbt.eval.report import headline_lines

        print("\n".join(headline_lines(results)))
        print(f"outputs: {out.resolve()}")
    return 0


def parse_columns(text: str | None) -> dict[str, str]:
    """``id=question_id,query=question`` as {hbt column: the data's column}."""
    pairs = [part.split("=", 1) for part in (text or "").split(",") if part.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise InputError("--columns", f"expected hbt_column=your_column pairs separated by commas, got {text!r}")
    return {ours.strip(): theirs.strip() for ours, theirs in pairs}


def mine_command(args: argparse.Namespace) -> int:
    from hbt.mine import MineArgs, MineSettings, parse_range, run_mine

    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip()) if args.languages else None
    settings = MineSettings(k=args.k, range=parse_range(args.range), languages=languages,
                            max_score_ratio=args.max_score_ratio, pick=args.pick, seed=args.seed,
                            batch_size=args.batch_size, index=args.index)
    settings.validate()
    report, env = run_mine(MineArgs(args.model, args.data, Path(args.out), settings, args.pooling, args.query_prefix,
                                    args.passage_prefix, args.max_length, args.format, args.with_scores, args.cache_dir,
                                    parse_columns(args.columns), args.holdout_titles, args.holdout_seed))
    if env.is_main:
        c = report["counts"]
        print(f"{c['written']:,} of {c['pairs']:,} pairs with hard negatives ({c['short']:,} with fewer than {args.k}, "
              f"{c['filled']:,} filled from below the range); {c['false_negatives_skipped']:,} false negatives skipped")
        print(f"outputs: {Path(args.out).resolve()}/{{{','.join(report['files'])},mine.json}}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from hbt.eval.report import compare

    print(compare([Path(p) for p in args.runs], Path(args.out)), end="")
    print(f"table and plot: {Path(args.out).resolve()}/report.{{md,csv,png}}")
    return 0


def _tuning(args: argparse.Namespace):
    """``--select``'s criterion (or None), refusing the options a selection needs that are
    missing: a criterion on the test set would tune on it, so ``--select`` needs
    ``--validation-titles``; ``--final`` and ``--pool-alphas`` need ``--select``."""
    from hbt.data.split import parse_holdout
    from hbt.sweep_select import parse_criterion

    if args.validation_titles is not None:
        parse_holdout(args.validation_titles, key="--validation-titles")
    if args.select is None:
        for flag, given in (("--final", args.final), ("--final-seeds", args.final_seeds is not None),
                            ("--final-alphas", args.final_alphas is not None), ("--pool-alphas", args.pool_alphas)):
            if given:
                raise InputError(flag, "needs --select CRITERION (and --validation-titles)")
        return None
    criterion = parse_criterion(args.select)
    if args.validation_titles is None:
        raise InputError("--select", "needs --validation-titles: a criterion on the test set would tune on the test set "
                                     "(e.g. --validation-titles 0.2 holds out a fifth of the training titles to choose on)")
    return criterion


def sweep_command(args: argparse.Namespace) -> int:
    from hbt.sweep import SweepSpec, collect, parse_alphas, parse_seeds, run_sweep
    from hbt.sweep_grid import check_split_keys, check_values, parse_grid
    from hbt.sweep_report import write_report
    from hbt.sweep_select import final_spec, select
    from hbt.sweep_split import make_split

    grid = parse_grid(args.grid, args.overrides)
    criterion = _tuning(args)
    final_seeds = parse_seeds(args.final_seeds, "--final-seeds") if args.final_seeds is not None else None
    final_alphas = parse_alphas(args.final_alphas, None, "--final-alphas") if args.final_alphas is not None else None
    spec = SweepSpec(configs=args.config, alphas=parse_alphas(args.alphas, args.strategies), seeds=parse_seeds(args.seeds), out=Path(args.out),
                     overrides=args.overrides, zero_shot=args.zero_shot, executor=args.executor,
                     tasks_per_node=args.tasks_per_node, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                     cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min, partition=args.partition,
                     max_parallel=args.max_parallel, wait_timeout_s=args.wait_timeout, grid=grid)
    check_values(grid, spec.configs, spec.overrides)
    if criterion is not None and criterion.needs_zero_shot and not spec.zero_shot:
        print(f"--select {criterion.text} compares with zero_shot: adding the zero-shot runs", flush=True)
        spec.zero_shot = True
    if args.validation_titles is not None:
        check_split_keys(grid)
        for config in spec.configs:
            split = make_split(config, spec.overrides, args.validation_titles, spec.out)
            spec.split[config] = split.overrides
            print(f"{config}: validation on {len(split.validation)} title(s), training on {split.training}, "
                  f"{len(split.test)} test title(s) left out of both ({spec.out / 'validation'})", flush=True)
    problems = []
    if not args.report_only:
        tick = time.monotonic()
        problems = run_sweep(spec, log=lambda line: print(line, flush=True))
        print(f"all jobs ended after {time.monotonic() - tick:.0f} s", flush=True)
    print(write_report(collect(spec), spec.out), end="")
    print(f"tables, curves and heatmaps: {spec.out.resolve()}/sweep.{{md,csv,png}}, heatmaps-*.png")
    code = 0
    if criterion is not None:
        chosen, table = select(spec, collect(spec), criterion, args.pool_alphas, final_seeds, final_alphas)
        print(table, end="")
        if chosen is None:
            code = 1
        else:
            print(f"chosen: {spec.out.resolve() / 'best.yaml'} (table: selection.md)", flush=True)
            final = final_spec(spec, chosen, final_seeds, final_alphas)
            if args.final and not args.report_only:
                tick = time.monotonic()
                problems += run_sweep(final, log=lambda line: print(line, flush=True))
                print(f"final jobs ended after {time.monotonic() - tick:.0f} s", flush=True)
            if args.final or final.out.exists():
                print(write_report(collect(final), final.out), end="")
                print(f"the chosen cell on the test set: {final.out.resolve()}/sweep.{{md,csv,png}}")
    for line in problems:
        print(f"hbt: {line}", file=sys.stderr)
    return 1 if problems else code
