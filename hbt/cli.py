"""The ``hbt`` command line: one subcommand per job, each with ``--help``.

Every subcommand turns bad input (:class:`hbt.errors.InputError`) into one line on
stderr and exit status 2, before any worker starts.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import sys
import typing
from typing import Callable, Sequence

from hbt import commands
from hbt.errors import EXIT_BAD_INPUT, InputError, printable


AddParser = Callable[..., argparse.ArgumentParser]  # a subparsers object's add_parser


class Parser(argparse.ArgumentParser):
    """argparse with hbt's one-line refusal: an option argparse rejects (not an int, not
    one of the choices) is named on one line, exit 2, like every other bad input, instead
    of the subcommand's whole usage; ``--help`` still shows it. Subcommands inherit the
    class (argparse builds subparsers of the parser's own type)."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"hbt: error: {printable(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


CACHE_DIR_HELP = "where shards are converted and the index is kept (data.cache_dir)"


def _sampler_options(parser: argparse.ArgumentParser) -> None:
    """The sampler settings of ``hbt data sample`` and ``hbt data plan``: one option per
    field of :class:`~hbt.config.SamplerConfig` (``--language-policy`` sets
    language_policy), typed and with the choices of its type hint, defaulting to what a
    config defaults to (:func:`hbt.config.sampler_keys`)."""
    import typing

    from hbt.config import sampler_keys
    from hbt.config import SamplerConfig

    parser.add_argument("path", help="training data: Parquet/JSONL shards (a directory or a glob), a save_to_disk "
                                     "directory, hf:NAME, a LAReQA directory, a .jsonl file, or synthetic[:...]")
    parser.add_argument("--cache-dir", default=".cache/hbt", help=CACHE_DIR_HELP)
    hints = typing.get_type_hints(SamplerConfig)
    for name, (key, default) in sampler_keys().items():
        flag, hint, help_ = "--" + name.replace("_", "-"), hints[name], f"{key} in a config (default: %(default)s)"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(hint), default=default, help=help_)
        else:
            parser.add_argument(flag, type=hint, default=default, help=help_)


def _add_data(add_parser: AddParser) -> None:
    data = add_parser("data", help="inspect corpora and the batches the sampler makes from them")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    stats = data_commands.add_parser("stats", help="items, queries and candidates per language")
    stats.add_argument("path", help="Parquet/JSONL shards (directory or glob), a save_to_disk directory, hf:NAME, "
                                    "LAReQA .json file or directory, a .jsonl file, or synthetic[:items=N,languages=L,...]")
    stats.add_argument("--cache-dir", default=".cache/hbt", help=CACHE_DIR_HELP)
    stats.set_defaults(run=commands.data_stats_command)
    sample = data_commands.add_parser("sample", help="plan hybrid batches and print the batch-type mix")
    _sampler_options(sample)
    sample.add_argument("--epochs", type=int, default=1)
    sample.add_argument("--show", type=int, default=5, help="print the first N batches of each epoch")
    sample.set_defaults(run=commands.data_sample_command)
    plan = data_commands.add_parser("plan", help="write every global contrastive batch of some epochs as JSON lines",
                                    description="One line per contrastive batch: {epoch, index, kind, pairs: "
                                                "[[item id, query language, passage language], ...]}. The plan depends "
                                                "on the data, seed and batch size only, not on the world size.")
    _sampler_options(plan)
    plan.add_argument("--epochs", type=int, default=1)
    plan.add_argument("--out", required=True, help="the JSONL file to write")
    plan.set_defaults(run=commands.data_plan_command)


def _add_train(add_parser: AddParser) -> None:
    train = add_parser("train", help="fine-tune a bi-encoder with hybrid batches (1 to N ranks)",
                       description="Train from a YAML config; overrides like train.alpha=0.5 follow it.")
    train.add_argument("--config", default=None, help="experiment YAML (default: built-in tiny defaults)")
    train.add_argument("--resume", default="auto", help="auto (latest checkpoint if any), never, or a checkpoint tag")
    train.add_argument("--accept-changes", action="store_true",
                       help="resume even though the data, tokenizer, model, DeepSpeed JSON or training config differ from the checkpoint's")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    train.set_defaults(run=commands.train_command)


def _add_config(add_parser: AddParser) -> None:
    config = add_parser("config", help="print the resolved config (or one key): what 'hbt train' would use")
    config.add_argument("--config", default=None)
    config.add_argument("--get", default=None, metavar="section.key", help="print only this key (scripts use it)")
    config.add_argument("overrides", nargs="*", metavar="section.key=value")
    config.set_defaults(run=commands.config_command)


def _encoder_options(parser: argparse.ArgumentParser) -> None:
    """How ``hbt eval`` and ``hbt mine`` encode: pooling, prefixes, token limit."""
    parser.add_argument("--pooling", choices=["mean", "cls"], default=None, help="default: from the model's sentence-transformers files, else mean")
    parser.add_argument("--query-prefix", default=None, help="e.g. 'query: ' for e5 (default: the model's prompts, else none)")
    parser.add_argument("--passage-prefix", default=None, help="e.g. 'passage: ' for e5")
    parser.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's, else 128)")


def _add_eval(add_parser: AddParser) -> None:
    ev = add_parser("eval", help="retrieval evaluation (mono, cross, multilingual) of an encoder, 1 to N ranks")
    ev.add_argument("--model", required=True, help="encoder directory (an hbt export, or any Hugging Face encoder)")
    ev.add_argument("--data", required=True, help="LAReQA dir/file, .jsonl, retrieval dir (queries/corpus/qrels), "
                    "Parquet/JSONL shards (a directory or a glob), a save_to_disk dir, or synthetic[:...]")
    ev.add_argument("--settings", default="mono,cross,multi", help="comma-separated subset of mono,cross,multi")
    ev.add_argument("--out", default=None, help="output directory (default runs/eval/<model>-<data>)")
    ev.add_argument("--holdout-titles", default=None, help="evaluate only these held-out titles (fraction, list or @file)")
    ev.add_argument("--seed", type=int, default=0, help="seed of a fractional title split")
    _encoder_options(ev)
    ev.add_argument("--k", type=int, default=100, help="length of the multilingual top-k lists written to multi.run")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat", help="FAISS index of each shard")
    ev.add_argument("--cache-dir", default=".cache/hbt", help="where shards are converted (data.cache_dir)")
    ev.add_argument("--debias", choices=["none", "center"], default="none",
                    help="center: also score every setting with each language's mean embedding removed from its queries "
                         "and candidates, then re-normalised (eval.debias; docs/metrics.md)")
    ev.add_argument("--debias-means", choices=["train", "pool"], default="train",
                    help="whose means: train (a sample of the training data: --debias-data, or the titles of --data outside "
                         "--holdout-titles) or pool (the evaluated pool itself: transductive)")
    ev.add_argument("--debias-data", default=None, metavar="DATA",
                    help="training data of --debias-means train, any format --data takes")
    ev.add_argument("--debias-sample", type=int, default=512, metavar="N",
                    help="the means of at most N training pairs per language (eval.debias_sample)")
    ev.set_defaults(run=commands.eval_command)


def _add_mine(add_parser: AddParser) -> None:
    mine = add_parser("mine", help="mine hard negatives for every (item, language) pair, 1 to N ranks",
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
    _encoder_options(mine)
    mine.add_argument("--batch-size", type=int, default=128)
    mine.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat", help="FAISS index (flat: exact)")
    mine.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="train.jsonl or train-NNNNN.parquet shards")
    mine.add_argument("--with-scores", action="store_true",
                      help="also write positive_score, negative_scores and negative_ranks (0-based) per row")
    mine.set_defaults(run=commands.mine_command)


def _add_sweep(add_parser: AddParser) -> None:
    sweep = add_parser("sweep", help="a job array over configs, a grid of settings, alphas and seeds (submitit: Slurm, else local)",
                       description="Submit, wait (with a deadline), then tabulate and plot against alpha. With "
                                   "--validation-titles and --select, choose a cell on titles held out of the "
                                   "training data, write it as best.yaml, and with --final retrain it (docs/launching.md).")
    sweep.add_argument("--config", action="append", required=True, help="experiment YAML; repeat for several")
    sweep.add_argument("--grid", action="append", default=None, metavar="KEY=V1,V2,...",
                       help="any config key and its values (YAML scalars, as overrides; [a, 'b,c'] for a value with a "
                            "comma); repeat for several: their cartesian product x configs x alphas x seeds")
    sweep.add_argument("--alphas", default=None, help="comma-separated, e.g. 0,0.25,0.5,0.75,1")
    sweep.add_argument("--strategies", default=None, help="by name: mono-only (alpha 1), cross-only (0), hybrid (0.5)")
    sweep.add_argument("--seeds", default="0", help="comma-separated run.seed values")
    sweep.add_argument("--zero-shot", action="store_true", help="also evaluate each config's untrained model (once)")
    sweep.add_argument("--validation-titles", default=None, metavar="SPEC",
                       help="hold these training titles out of every job and evaluate them instead of the test set "
                            "(fraction, list or @file; drawn with data.holdout_seed from the titles left after the test titles)")
    sweep.add_argument("--select", default=None, metavar="CRITERION",
                       help="choose a cell on the validation titles: mono, cross, multi or mean(...) of them, maximised, "
                            "then :CONSTRAINT,... e.g. 'multi:mono>=zero_shot'; writes selection.md and best.yaml")
    sweep.add_argument("--pool-alphas", action="store_true",
                       help="score a cell by its mean over all alphas (the choice favours no strategy) instead of per alpha")
    sweep.add_argument("--final", action="store_true",
                       help="then train best.yaml on all the training titles at every seed and evaluate the test set (OUT/final)")
    sweep.add_argument("--final-seeds", default=None, help="the seeds of --final (default: --seeds), e.g. tune on 0, test on 0,1,2")
    sweep.add_argument("--final-alphas", default=None,
                       help="alphas --final also trains at the chosen settings, e.g. 0,1: cross-only and mono-only beside a chosen hybrid")
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
    sweep.set_defaults(run=commands.sweep_command)


def _add_report(add_parser: AddParser) -> None:
    report = add_parser("report", help="put several runs side by side: one Markdown/CSV table and one plot")
    report.add_argument("runs", nargs="+", help="run directories (their newest eval), eval output dirs, or metrics.json files")
    report.add_argument("--out", default="runs/report", help="where report.md, report.csv and report.png go")
    report.set_defaults(run=commands.report_command)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hbt", description="Hybrid batch training of multilingual dense retrievers.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_data, _add_train, _add_config, _add_eval, _add_mine, _add_sweep, _add_report):
        add(commands.add_parser)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        # From hbt train's first moment, before the parser (which imports the config and
        # numpy) and the heavy imports: a pre-emption at any moment must requeue.
        from hbt import signals

        signals.install()
    args = build_parser().parse_args(argv)
    if args.command != "data":
        quiet_libraries()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        code = run(args)
    except InputError as e:
        print(f"hbt: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk where no write names itself (hbt.errors.writing does, for checkpoints
        # and metrics): evaluation outputs, the exported model, the data cache.
        print(f"hbt: error: {printable(str(e.filename or 'a write'))}: cannot write: no space left on its filesystem",
              file=sys.stderr)
        code = EXIT_BAD_INPUT
    sys.exit(code)
