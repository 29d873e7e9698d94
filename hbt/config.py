"""Experiment configuration: YAML files, dotted command-line overrides, validation.

A config is a tree of dataclasses; YAML and overrides are checked against their type
hints (unknown key, wrong type) and ranges before any worker starts, so a typo costs a
one-line error, not a queued GPU job that dies an hour later. The fully resolved config
is saved beside every run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from hbt.data.sources import Source
from hbt.data.split import parse_holdout
from hbt.errors import InputError, at_least


@dataclass
class RunConfig:
    dir: str = "runs/tiny"  # the run directory: checkpoints, metrics, logs, the exported model
    seed: int = 0
    dist_timeout_min: float = 30.0  # bound on any collective (NCCL and gloo): a hung or dead rank ends the job


@dataclass
class DataConfig:
    train: str | None = None  # one source: shards (dir/glob), save_to_disk dir, hf:NAME, LAReQA, .jsonl, synthetic[:...]; default synthetic
    sources: list[Source] | None = None  # a mixture instead of train (docs/data.md)
    holdout_titles: str | float | None = None  # fraction, "Title1,Title2", or @file (one source only)
    holdout_seed: int = 0  # picks a fractional hold-out; apart from run.seed, so seeds share one test set
    cache_dir: str = ".cache/hbt"  # datasets' Arrow files of shards, and the sampler's index arrays
    num_workers: int = 1  # DataLoader processes reading and tokenising batches ahead of the step (0: in the step)
    prefetch: int = 4  # batches each worker prepares ahead

    def source_list(self) -> list[Source]:
        """``sources``, or the one source ``train`` names."""
        if self.sources is not None and self.train is not None:
            raise InputError("data.sources", "set data.train or data.sources, not both")
        if self.sources is None:
            return [Source(path=self.train or "synthetic")]
        return self.sources


# The tiny preset's tokenizer gives at most a quarter of its pieces to characters (each
# also as a ## continuation) and the rest to whole words. Below 500 pieces it keeps fewer
# than the 121 characters of the default four-script synthetic corpus, so texts turn into
# runs of <unk> and training ends at chance (vocab_size=0 built a 7-piece vocabulary).
MIN_TINY_VOCAB = 500


@dataclass
class TinyModelConfig:
    """The offline preset: a small XLM-R-architecture encoder, randomly initialised."""

    vocab_size: int = 8000
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256

    def validate(self) -> None:
        """Refuse an encoder that transformers cannot build (heads not dividing the hidden
        size) or that cannot learn (a vocabulary too small to hold the corpus' characters)."""
        at_least(1, {f"model.tiny.{name}": getattr(self, name) for name in ("hidden_size", "layers", "heads", "intermediate_size")})
        if self.hidden_size % self.heads:
            raise InputError("model.tiny.heads", f"must divide model.tiny.hidden_size ({self.hidden_size}), got {self.heads}")
        if self.vocab_size < MIN_TINY_VOCAB:
            raise InputError("model.tiny.vocab_size", f"must be >= {MIN_TINY_VOCAB} (fewer pieces cannot hold the "
                                                      f"characters of even the synthetic corpus), got {self.vocab_size}")


@dataclass
class ModelConfig:
    name: str = "tiny"  # 'tiny', a local Hugging Face directory, or a hub name
    pooling: Literal["mean", "cls"] = "mean"
    query_prefix: str = ""
    passage_prefix: str = ""
    max_query_length: int = 32
    max_passage_length: int = 64
    dropout: float | None = None  # override the encoder's hidden/attention dropout (tiny: 0.1)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass(frozen=True)
class SamplerConfig:
    """The sampler's settings (``train.*`` in a config, ``seed`` from ``run.seed``),
    checked before any data is read. Their one definition: :class:`TrainConfig`'s
    sampler keys and the options of ``hbt data sample`` / ``hbt data plan`` are made
    from these fields."""

    batch_size: int  # the contrastive batch: per-rank batch x world size
    alpha: float = 0.5
    mix: Literal["exact", "bernoulli"] = "exact"
    language_policy: Literal["proportional", "uniform", "temperature"] = "proportional"
    language_temperature: float = 1.0
    remainder: Literal["drop", "carry"] = "drop"
    seed: int = 0
    same_source: bool = False  # every contrastive batch from one source of a mixture

    def validate(self) -> None:
        """The choices of the Literal fields, from their type hints (a config's loader and
        the command line check them the same way before this runs; a SamplerConfig built
        in code is checked here), then the ranges, which only this checks."""
        hints = typing.get_type_hints(SamplerConfig)
        for f in dataclasses.fields(self):
            if typing.get_origin(hints[f.name]) is Literal:
                _check_choice(getattr(self, f.name), hints[f.name], f"train.{f.name}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError("train.batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError("train.alpha", f"must be in [0, 1], got {self.alpha}")
        if not self.language_temperature > 0:
            raise InputError("train.language_temperature", f"must be > 0, got {self.language_temperature}")
        if not 0 <= self.seed < 2**32:  # numpy's seeds (the epoch plans); torch's are wider
            raise InputError("run.seed", f"must be in [0, 2**32), got {self.seed}")


SAMPLER_KEYS = tuple(f.name for f in dataclasses.fields(SamplerConfig) if f.name != "seed")  # train.<name>; seed is run.seed
BATCH_SIZE = 64  # train.batch_size's default: SamplerConfig leaves the contrastive batch to its caller


def _sampler_section() -> type:
    """The sampler's keys of the train section, as a dataclass for :class:`TrainConfig` to
    extend: :class:`SamplerConfig`'s fields (their one definition: name, type, default,
    hence the choices ``_check`` enforces), in its order, without ``seed`` (``run.seed``)."""
    hints = typing.get_type_hints(SamplerConfig)
    keys = [(f.name, hints[f.name], field(default=BATCH_SIZE) if f.name == "batch_size" else
             field(default=f.default, default_factory=f.default_factory))
            for f in dataclasses.fields(SamplerConfig) if f.name in SAMPLER_KEYS]
    section = dataclasses.make_dataclass("SamplerSection", keys)
    section.__module__ = __name__
    return section


SamplerSection = _sampler_section()


@dataclass
class TrainConfig(SamplerSection):
    """The train section: first the sampler's keys (:data:`SAMPLER_KEYS`, documented with
    :class:`SamplerConfig`: ``batch_size`` is the contrastive batch of all ranks together,
    ``alpha`` the share of monolingual batches), then the optimisation's."""

    epochs: int = 1
    max_steps: int | None = None  # stop early (still evaluates and exports); 0: evaluate the untrained model
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1  # contrastive batches per optimizer step
    temperature: float = 0.05  # InfoNCE temperature
    symmetric: bool = False  # add the passage -> query term
    hard_negatives: int = 0  # hard negatives per pair (from the data), gathered like passages
    grad_cache_chunk: int | None = None  # GradCache: encode this many texts at a time
    # how a side avoids computing padding: packed (BERT-family encoders), length-sorted chunks of
    # this many padded tokens, or null (one padded pass); auto: packed or 512 on a CPU, null on a GPU
    # (hbt.resolve decides it at start-up)
    chunk_tokens: int | Literal["auto", "packed"] | None = "auto"
    deepspeed: str = "configs/deepspeed/zero0.json"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a GPU that supports it, else fp32 (hbt.resolve)
    checkpoint_every: int = 100  # optimizer steps
    keep_checkpoints: int = 2

    def sampler(self, seed: int) -> SamplerConfig:
        """The sampler's settings of this section, with ``seed`` (``run.seed``)."""
        return SamplerConfig(seed=seed, **{name: getattr(self, name) for name in SAMPLER_KEYS})


Debias = Literal["none", "center"]  # eval.debias: also score centred embeddings (hbt.eval.debias)
DebiasMeans = Literal["train", "pool"]  # whose per-language means centring removes


@dataclass
class EvalConfig:
    data: str | None = None  # evaluation data; default: the held-out titles of data.train
    holdout_titles: str | float | None = None  # evaluate only these titles of eval.data (fraction, list or @file; seed: data.holdout_seed)
    settings: str = "mono,cross,multi"
    every_epoch: bool = True  # also evaluate at the end of every epoch, not only at the end
    k: int = 100  # length of the top-k lists written to multi.run
    batch_size: int = 128
    index: Literal["flat", "hnsw", "ivf"] = "flat"
    # center: every metric again after removing each language's mean embedding from its queries
    # and candidates (then L2-normalised), beside the plain ones (docs/metrics.md)
    debias: Debias = "none"
    debias_means: DebiasMeans = "train"  # train: of a sample of the training data; pool: of the evaluated pool (transductive)
    debias_sample: int = 512  # train: at most this many training pairs per language (their queries and positives)

    def setting_list(self) -> tuple[str, ...]:
        chosen = tuple(s.strip() for s in self.settings.split(",") if s.strip())
        unknown = [s for s in chosen if s not in ("mono", "cross", "multi")]
        if unknown or not chosen:
            raise InputError("eval.settings", f"choose from mono, cross, multi (got {self.settings!r})")
        return chosen

    def validate(self) -> None:
        """Before training: an evaluation that would fail only after encoding everything
        (no top-k lists, batches of no texts, a hold-out without its data) is refused."""
        self.setting_list()
        at_least(1, {"eval.k": self.k, "eval.batch_size": self.batch_size, "eval.debias_sample": self.debias_sample})
        if self.holdout_titles is not None:
            if not self.data:
                raise InputError("eval.holdout_titles", "needs eval.data (without it, set data.holdout_titles)")
            parse_holdout(self.holdout_titles, key="eval.holdout_titles")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        """Every key's range and the keys' agreement, before any data or model is read."""
        t, m = self.train, self.model
        self.train.sampler(self.run.seed).validate()
        positive = {"train.epochs": t.epochs, "train.grad_accum": t.grad_accum, "train.checkpoint_every": t.checkpoint_every,
                    "train.keep_checkpoints": t.keep_checkpoints,
                    "model.max_query_length": m.max_query_length, "model.max_passage_length": m.max_passage_length}
        if t.grad_cache_chunk is not None:  # null turns GradCache off; 0 would too, silently
            positive["train.grad_cache_chunk"] = t.grad_cache_chunk
        if isinstance(t.chunk_tokens, int):  # null turns chunking off
            positive["train.chunk_tokens"] = t.chunk_tokens
        at_least(1, positive)
        if t.max_steps is not None and t.max_steps < 0:
            raise InputError("train.max_steps", f"must be >= 0 (0: evaluate the untrained model), got {t.max_steps}")
        for key, value in {"train.lr": t.lr, "train.temperature": t.temperature, "run.dist_timeout_min": self.run.dist_timeout_min}.items():
            if not value > 0:
                raise InputError(key, f"must be > 0, got {value}")
        if not 0 <= t.warmup_ratio < 1:
            raise InputError("train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
        at_least(0, {"train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip, "train.hard_negatives": t.hard_negatives})
        if m.dropout is not None and not 0 <= m.dropout < 1:
            raise InputError("model.dropout", f"must be in [0, 1), got {m.dropout}")
        m.tiny.validate()
        self.train.deepspeed = str(shipped_path(self.train.deepspeed, "train.deepspeed"))
        self.eval.validate()
        at_least(0, {"data.num_workers": self.data.num_workers})
        at_least(1, {"data.prefetch": self.data.prefetch})
        self.data.source_list()
        if self.data.holdout_titles is not None:
            parse_holdout(self.data.holdout_titles, key="data.holdout_titles")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sampler_keys() -> dict[str, tuple[str, Any]]:
    """Every :class:`SamplerConfig` field as the config key that sets it and its default
    there: ``train.<name>``, and ``seed`` as ``run.seed`` (``hbt data sample`` and ``hbt
    data plan`` take them as options)."""
    cfg = Config()
    keys = {name: (f"train.{name}", getattr(cfg.train, name)) for name in SAMPLER_KEYS}
    keys["seed"] = ("run.seed", cfg.run.seed)
    return keys


def shipped_path(path: str, key: str) -> Path:
    """``path`` as given if it exists, else inside the hbt source tree (where the shipped
    ``configs/`` live), so the default configs work from any working directory."""
    given = Path(path)
    for candidate in (given, Path(__file__).resolve().parents[1] / given):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(key, f"no such file {path}")


def _check(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` (a dataclass, Literal, Optional, scalar), or an error naming ``key``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(key, f"should be a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
        return _build(hint, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise InputError(key, f"should be a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(hint)
        return [_check(v, inner, f"{key}[{n}]") for n, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(key, f"should be a mapping, got {type(value).__name__} {value!r}")
        k_hint, v_hint = typing.get_args(hint)
        return {_check(k, k_hint, f"{key}.{k}"): _check(v, v_hint, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        return _check_choice(value, hint, key)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check(value, option, key)
            except InputError as e:
                errors.append(e)
        if len(errors) == 1:  # one type besides None: its error names the key inside (data.sources[0].path)
            raise errors[0]
        raise InputError(key, " or ".join(e.problem for e in errors))
    if hint is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:  # YAML reads 1e-3 (no dot) as a string
            number = float(value)
        except ValueError:
            number = None
        except OverflowError:  # an integer beyond any float
            raise InputError(key, f"must be a finite number, got an integer of {len(str(value))} digits") from None
        if number is not None:
            if not math.isfinite(number):  # no setting of hbt means anything at inf or nan
                raise InputError(key, f"must be a finite number, got {value!r}")
            return number
    if hint is bool and not isinstance(value, bool) or hint is not bool and isinstance(value, bool) or not isinstance(value, hint):
        raise InputError(key, f"should be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_choice(value: Any, hint: Any, key: str) -> Any:
    """``value`` if it is one of the choices of the Literal ``hint``, else an error naming ``key``."""
    if value not in typing.get_args(hint):
        raise InputError(key, f"must be one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        name = unknown[0] if unknown[0].strip() else repr(unknown[0])  # a blank key is named visibly
        raise InputError(prefix + name, f"unknown key (known here: {', '.join(hints)})")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise InputError(prefix + missing[0], "is required here")
    return cls(**{name: _check(values[name], hints[name], prefix + name) for name in values})


def _set_dotted(tree: dict, dotted: str, where: str) -> None:
    key, eq, raw = dotted.partition("=")
    if not eq or not key:
        raise InputError(where, f"override {dotted!r} should look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
        value = raw  # "query: " is e5's prefix, not a mapping: only {...} and [...] make collections
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(key, "is not a section")
    node[parts[-1]] = value


def _read_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A YAML file as a dict; ``extends: other.yaml`` (relative to this file) is read
    first and this file's keys are merged over it, so a baseline config states only
    what differs from the config it extends. ``chain`` holds the files that extend this
    one, so a cycle is named file by file."""
    if not path.is_file():
        raise InputError(str(path), "no such config file")
    if path.resolve() in [p.resolve() for p in chain]:
        cycle = [*chain[[p.resolve() for p in chain].index(path.resolve()):], path]
        raise InputError(str(chain[0]), f"the extends chain is a cycle: {' -> '.join(map(str, cycle))}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(str(path), f"is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InputError(str(path), f"malformed YAML{at}") from None
    if tree is None:  # empty, or comments only: training on the built-in defaults is never what was meant
        raise InputError(str(path), "is empty; a config file should be a mapping of sections (omit --config for the defaults)")
    if not isinstance(tree, dict):
        raise InputError(str(path), "a config file should be a mapping of sections")
    _empty_null_sections(tree, Config)
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    return _merge(_read_tree(path.parent / str(parent), (*chain, path)), tree)


def _empty_null_sections(tree: dict, cls: type) -> None:
    """A section written with nothing under it (``train:``) is YAML's null: read it, in
    place, as the empty section it looks like (so overrides and ``extends`` fill it)."""
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        if key in hints and dataclasses.is_dataclass(hints[key]):
            if value is None:
                tree[key] = {}
            elif isinstance(value, dict):
                _empty_null_sections(value, hints[key])


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config from a YAML file (or the defaults) with ``section.key=value`` overrides applied."""
    tree = _read_tree(Path(path)) if path is not None else {}
    for dotted in overrides:
        _set_dotted(tree, dotted, "override")
    return _build(Config, tree).validate()


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
