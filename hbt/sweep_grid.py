"""A sweep's grid over any config key (``hbt sweep --grid KEY=V1,V2,...``): its axes read
and checked before anything is submitted, and its cells, each named so that a run
directory says which values it trained with.

The values stay the text the user gave (``1e-4``): each is applied to a job as the
override ``KEY=VALUE``, so it is read as a YAML scalar exactly as any other override
is, by the config's own loader. Up front every key is checked against the config's
schema and every value by loading the config with it, so a typo is one line naming
``--grid`` and exit 2, not a failed job array.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
import typing
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Iterable

import yaml

from hbt.errors import InputError

# Keys the sweep sets itself, and the option that sets them instead.
RESERVED = {"train.alpha": "--alphas or --strategies", "run.seed": "--seeds",
            "run.dir": "--out (the sweep names every job's run directory)"}
# Keys a validation split sets (hbt.sweep_split): the split is made once per config.
SPLIT_KEYS = ("data.train", "data.sources", "data.holdout_titles", "data.holdout_seed", "eval.data", "eval.holdout_titles")
UNTRAINED_SECTION = "train."  # keys of this section cannot change an untrained (zero-shot) model


def config_keys() -> dict[str, bool]:
    """Every dotted key of :class:`hbt.config.Config`: True for a setting, False for a
    section (``model.tiny``), read from the dataclasses' type hints."""
    from hbt.config import Config

    keys: dict[str, bool] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(hint):
                keys[prefix + name] = False
                walk(hint, f"{prefix}{name}.")
            else:
                keys[prefix + name] = True

    walk(Config, "")
    return keys


@dataclass(frozen=True)
class Axis:
    """One ``--grid`` option: a config key and its values as override texts, in order."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One point of a grid: a (key, value text) per axis, in the axes' order; ``name``
    says it in a run directory's name (empty without a grid)."""

    settings: tuple[tuple[str, str], ...] = ()
    name: str = ""

    def overrides(self) -> tuple[str, ...]:
        return tuple(f"{key}={value}" for key, value in self.settings)

    def label(self) -> str:
        """``train.lr=1e-4, train.temperature=0.01`` for tables."""
        return ", ".join(self.overrides())


def value_token(text: str) -> str:
    """A value as a file name part: unquoted, a path by its last part, characters other
    than letters, digits and ``._+-`` as ``_``, at most 40 characters."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    if "/" in text.strip("/"):
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:40]


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep; its cells are their cartesian product."""

    axes: tuple[Axis, ...] = ()

    @property
    def keys(self) -> list[str]:
        return [axis.key for axis in self.axes]

    def untrained_keys(self) -> list[str]:
        """The keys that can change a zero-shot evaluation (all but the train section):
        a config gets one zero-shot run per combination of these."""
        return [key for key in self.keys if not key.startswith(UNTRAINED_SECTION)]

    def short(self, key: str) -> str:
        """A key as a name part: its last component (``lr``), the whole key where two
        axes share that component."""
        last = key.rsplit(".", 1)[-1]
        return key if sum(k.rsplit(".", 1)[-1] == last for k in self.keys) > 1 else last

    def cells(self, keys: list[str] | None = None) -> list[Cell]:
        """Every combination of the values of ``keys`` (default: all axes), in the
        order given: the first axis varies slowest. Names are unique: where two cells'
        names would coincide, each gets a digest of its values."""
        axes = [axis for axis in self.axes if keys is None or axis.key in keys]
        combos = list(product(*[[(axis.key, v) for v in axis.values] for axis in axes]))
        names = ["-".join(self.short(k) + value_token(v) for k, v in combo) for combo in combos]
        clash = {n for n in names if names.count(n) > 1}
        names = [f"{n}-{_digest(v for _, v in combo)}" if n in clash else n for n, combo in zip(names, combos)]
        return [Cell(tuple(combo), name) for combo, name in zip(combos, names)]


def _values(key: str, raw: str) -> tuple[str, ...]:
    """``V1,V2`` split at commas; ``[V1, "a,b"]`` read as a YAML flow list (a value with a
    comma), each item written back as the YAML scalar that reads as it."""
    if raw.lstrip().startswith("["):
        try:
            items = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InputError("--grid", f"{key}: {raw!r} is not a YAML list of values") from None
        if not isinstance(items, list) or any(isinstance(v, (list, dict)) for v in items):
            raise InputError("--grid", f"{key}: a [...] list holds scalar values only, got {raw!r}")
        return tuple(yaml.safe_dump(v, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip() for v in items)
    values = tuple(v.strip() for v in raw.split(","))
    if any(not v for v in values) and values != ("",):
        raise InputError("--grid", f"{key}: an empty value in {raw!r} (write an empty string as '')")
    return () if values == ("",) else values


def parse_grid(options: list[str] | None, overrides: list[str] = ()) -> Grid:
    """The ``--grid KEY=V1,V2,...`` options as a grid, each key checked against the config
    schema: a setting (not a section, not a key the sweep sets itself), once, with values,
    and not also in ``overrides`` (those apply to every job)."""
    known = config_keys()
    overridden = {o.partition("=")[0].strip() for o in overrides}
    axes: list[Axis] = []
    for text in options or []:
        key, eq, raw = text.partition("=")
        key = key.strip()
        if not eq or not key:
            raise InputError("--grid", f"{text!r} should look like KEY=V1,V2,... (e.g. train.lr=1e-4,3e-4)")
        if key in RESERVED:
            raise InputError("--grid", f"{key} is set by the sweep itself; give its values with {RESERVED[key]}")
        if key not in known:
            close = difflib.get_close_matches(key, [k for k, leaf in known.items() if leaf], n=1)
            raise InputError("--grid", f"unknown config key {key!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        if not known[key]:
            raise InputError("--grid", f"{key} is a section; name one of its keys ({key}.KEY)")
        if key in (a.key for a in axes):
            raise InputError("--grid", f"{key} is given twice; list its values once, comma-separated")
        if key in overridden:
            raise InputError("--grid", f"{key} is also an override for every job ({key}=...); give it in one place")
        values = _values(key, raw)
        if not values:
            raise InputError("--grid", f"{key} has no values; give KEY=V1,V2,...")
        axes.append(Axis(key, values))
    return Grid(tuple(axes))


def check_values(grid: Grid, configs: list[str], overrides: list[str]) -> None:
    """Load each config with each value of each axis, so a value the config refuses (a
    type, a range) is named with ``--grid``, and refuse two values that read the same
    (``1e-4`` and ``0.0001``): they would train the same cell twice."""
    from hbt.config import load_config

    for config in configs:
        for axis in grid.axes:
            seen: dict[str, str] = {}
            for value in axis.values:
                try:
                    tree = load_config(config, [*overrides, f"{axis.key}={value}"]).to_dict()
                except InputError as e:
                    where = "" if e.where == axis.key else f"{e.where}: "
                    raise InputError("--grid", f"{axis.key}={value} ({Path(config).name}): {where}{e.problem}") from None
                for part in axis.key.split("."):
                    tree = tree[part]
                read = repr(tree)
                if read in seen:
                    raise InputError("--grid", f"{axis.key}: {seen[read]} and {value} are the same value ({read}); give each once")
                seen[read] = value


def check_split_keys(grid: Grid) -> None:
    """With ``--validation-titles`` the sweep sets the data and evaluation keys of the
    split (:data:`SPLIT_KEYS`); a grid over one of them is refused."""
    for key in grid.keys:
        if key in SPLIT_KEYS:
            raise InputError("--grid", f"{key} is set by --validation-titles (the split is made once per config "
                                       "from its training source); sweep it without --validation-titles, or give "
                                       "one config per value")
