"""Fuzz test of the command line and the config (issue 21 item 5).

Hypothesis generates config files and dotted overrides from the config's own schema
(hbt/config.py's dataclasses: right and wrong types, values in and out of range,
unknown keys, null sections, ``extends`` to missing files and cycles) and malformed
data files (JSONL lines, Parquet shards, LAReQA JSON), and runs them through the real
entry point, :func:`hbt.cli.main`, in this process. Every run must end the way
docs/training.md promises a bad input ends:

* exit status 0 or 2, never a traceback (any other exception fails the example);
* at most 3 lines on stderr (progress bars aside: tests/helpers.py ``status_line``),
  and on exit 2 the last of them ``hbt: error: <culprit>: <message>``, the only one;
* nothing written into an existing run directory (or ``--out`` directory) on exit 2.

Bounded for CI: 650 examples (5 for each of the config's 58 keys alone, 100 config
files with overrides, 170 data commands, 50 ``hbt train``, 40 ``hbt eval``/``hbt
mine``), derandomized (the same examples on every run): under a minute on 2 cores.
``--hypothesis-show-statistics`` lists which refusals they reached. What keeps each
example cheap: data files of a few rows;
``hbt train`` only with a config that is refused before any data or model is read (its
last override names a model that ``hbt.train.check_model`` refuses), with the process
group stubbed out (one process needs none, and a real one would outlive the test in
this pytest worker); ``hbt eval``/``hbt mine`` only with such a model, which they check
before the data. The bugs this fuzzing found (and a few found by probing beside it)
are fixed; each is held at its smallest case by ``test_found_bugs_stay_fixed``, and
the generators reach every one of them."""

from __future__ import annotations

import dataclasses
import faulthandler
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import types
import typing
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

from hbt.cli import main
from hbt.config import Config, load_config
from hbt.dist import DistEnv
from hbt.errors import InputError
from tests.helpers import ROOT, lareqa_doc, paragraph, status_line


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# --- running the CLI in this process ---------------------------------------------------

@dataclasses.dataclass
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        """stderr as a terminal shows it (a line ends at \\n or tqdm's \\r), without blank
        lines and progress bars."""
        return [line for line in re.split(r"[\r\n]", self.err) if line.strip() and not status_line(line)]


@contextmanager
def cli_warnings() -> Iterator[list]:
    """Python's default warning filters, as a fresh ``hbt`` process has them (pytest shows
    every warning and collects them instead of printing): what would reach stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        yield caught


@contextmanager
def library_logs_to_stderr() -> Iterator[None]:
    """The libraries' log handlers (datasets', transformers') hold the ``sys.stderr`` of
    whichever test first made them, by now a closed capture: point them at this run's, as
    a fresh process's point at its stderr (pytest's own handlers are subclasses, left alone)."""
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    moved = [(h, h.stream) for x in loggers for h in x.handlers
             if type(h) is logging.StreamHandler and h.stream not in (sys.stdout, sys.__stdout__)]
    for handler, _ in moved:
        handler.stream = sys.stderr  # not setStream, which flushes the closed stream first
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.stream = stream


@contextmanager
def library_verbosity_kept() -> Iterator[None]:
    """``main`` quiets datasets and transformers for every command but ``hbt data``
    (hbt.cli.quiet_libraries): put their verbosity back for the tests that follow."""
    import datasets
    import transformers

    tf, ds = transformers.utils.logging, datasets.utils.logging
    verbosity, bars, ds_verbosity = tf.get_verbosity(), tf.is_progress_bar_enabled(), ds.get_verbosity()
    try:
        yield
    finally:
        tf.set_verbosity(verbosity)
        tf.enable_progress_bar() if bars else tf.disable_progress_bar()
        ds.set_verbosity(ds_verbosity)


def run_cli(capfd: pytest.CaptureFixture, argv: list[str]) -> Outcome:
    """``hbt ARGV`` through :func:`hbt.cli.main`, its exit status and output. ``main``
    enables faulthandler on the captured stderr, ``hbt train`` installs its stop signals'
    handlers, and most commands quiet the libraries' logs: all are put back afterwards, so
    the pytest process is as before."""
    capfd.readouterr()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    fault = faulthandler.is_enabled()
    try:
        with cli_warnings() as caught, library_logs_to_stderr(), library_verbosity_kept():
            try:
                main(argv)
            except SystemExit as e:
                code = 0 if e.code is None else e.code
            except Exception as e:  # what a user would see as a traceback
                raise AssertionError(f"hbt {argv!r} raised {type(e).__name__}: {e}") from e
            else:
                raise AssertionError(f"hbt {argv!r}: main() returned instead of exiting")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        faulthandler.enable(file=sys.__stderr__) if fault else faulthandler.disable()
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return Outcome(argv, code, out, err)


def check(outcome: Outcome, exit_codes: tuple[int, ...] = (0, 2)) -> None:
    """The contract of a bad input (module docstring), for one run."""
    what = f"hbt {outcome.argv!r} -> exit {outcome.code}\nstderr:\n{outcome.err}"
    assert outcome.code in exit_codes, what
    assert "Traceback" not in outcome.err, what
    lines = outcome.lines()
    assert len(lines) <= 3, what
    if outcome.code == 2:
        errors = [line for line in lines if line.startswith("hbt: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], what  # the last word, and on one line
        culprit, sep, message = errors[0][len("hbt: error: "):].partition(": ")
        assert sep and culprit.strip() and message.strip(), what
        if currently_in_test_context():  # --hypothesis-show-statistics: which refusals the examples reached
            named = culprit if '/' not in culprit and len(culprit) < 40 else f"<a path>: {' '.join(message.split()[:4])}"
            event(f"exit 2: {named}")
    elif currently_in_test_context():
        event(f"exit {outcome.code}")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root``: name, size, mtime and content hash."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st_ = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            found[str(path.relative_to(root))] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, digest)
    found["."] = (root.stat().st_mtime_ns,)
    return found


def existing_run_dir(path: Path) -> Path:
    """A run directory an earlier ``hbt train`` left: a checkpoint, metrics, its lock file."""
    ckpt = path / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text(json.dumps({"files": {}}))
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 64)
    (path / "checkpoints" / "latest").write_text("step-00000002")
    (path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    (path / "config.yaml").write_text("run: {dir: old}\n")
    (path / ".lock").write_text('{"host": "old", "pid": 1}\n')
    (path / "marker").write_text("the user's\n")
    return path


# --- values: JSON, YAML, text -----------------------------------------------------------

# Blank texts hbt must refuse: whitespace of every kind str.strip() knows.
BLANKS = ["", " ", "\t", "\n", " \u3000", "\u00a0", "\x0b", "\u2028", "\x1c"]
LANGS = ["en", "de", "zh", "el", "xx", "english", "EN", "", " en", "zz", "e n"]
WORDS = st.sampled_from(["one", "two words", "Ελληνικά", "中文", "x", "a b c"])

# Any text, line breaks and NULs too (errors repeat keys, paths and values escaped:
# hbt.errors.printable); only lone surrogates are left out, which no UTF-8 file holds.
LINE_BREAKS = "\n\r"
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
ANY_TEXT = st.text(max_size=10)

NON_TEXT = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats())
JSON_SCALARS = st.one_of(NON_TEXT, ANY_TEXT, st.sampled_from(BLANKS))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(ANY_TEXT, inner, max_size=3), max_leaves=6)

# Values for YAML files and overrides: the file's paths are placeholders, filled in per example.
PLACEHOLDERS = ["@@MISSING@@", "@@DIR@@", "@@TITLES@@", "@@BINARY@@"]
PATHLIKE = st.sampled_from([*PLACEHOLDERS, *(f"@{p}" for p in PLACEHOLDERS), "synthetic", "synthetic:items=5",
                            "synthetic:itemz=3", "hf:nobody/nothing", "configs/deepspeed/zero2.json", "@", "/"])
YAML_SCALARS = st.one_of(NON_TEXT, TEXT, PATHLIKE,
                         st.sampled_from(["1e-3", ".nan", ".inf", "-.inf", "0x10", "1_000", "yes", "~", "2**32"]))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(TEXT, inner, max_size=3), max_leaves=5)


def rarely(draw, n: int) -> bool:
    """True about once in ``n`` draws (hypothesis draws an integer's bounds far more often)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


def write(path: Path, content: str | bytes) -> Path:
    """Write a generated file, and note its content for a failing example's report."""
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    if currently_in_test_context():
        note(f"{path.name} ({path.parent.name}/): {content!r}")
    return path


def not_utf8(draw, text: str) -> bytes:
    """``text`` encoded, with a byte that no UTF-8 text holds put somewhere in it."""
    data = text.encode()
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80"])) + data[at:]


def fill(text: str, paths: dict[str, Path]) -> str:
    for name, path in paths.items():
        text = text.replace(f"@@{name}@@", str(path))
    return text


def fixture_paths(root: Path) -> dict[str, Path]:
    """What the placeholders name: a missing path, a directory, a titles file, a file of
    bytes that are not UTF-8."""
    (root / "dir").mkdir()
    (root / "titles.txt").write_text("T\nNoSuchTitle\n")
    (root / "binary.bin").write_bytes(b"\xff\xfe\x00bad")
    return {"MISSING": root / "missing", "DIR": root / "dir", "TITLES": root / "titles.txt", "BINARY": root / "binary.bin"}


# --- the config's schema ------------------------------------------------------------------

def schema(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the config (sections too) and its type hint."""
    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys[prefix + f.name] = hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            keys.update(schema(hints[f.name], f"{prefix}{f.name}."))
    return keys


SCHEMA = schema()


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        out[prefix + key] = value
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
    return out


DEFAULTS = flatten(Config().to_dict())


def near(default: Any) -> st.SearchStrategy:
    """Valid-looking values of a key with this default, so that an example's other keys
    pass and the checks after them run too."""
    if isinstance(default, bool) or default is None or isinstance(default, (str, dict, list)):
        return st.just(default)
    if isinstance(default, int):
        return st.integers(max(0, default // 2), default * 2 + 1)
    return st.floats(default / 2, default * 2) if default else st.just(default)


def values_for(hint: Any) -> st.SearchStrategy:
    """Plausible values of a key of type ``hint``, in and out of its range, and a few
    of other types."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        fields = [f.name for f in dataclasses.fields(hint)]
        return st.dictionaries(st.sampled_from([*fields, "bogus"]), st.deferred(lambda: YAML_VALUES), max_size=3) | st.none()
    if origin is Literal:
        return st.sampled_from([*args, "", "Exact", "none", 0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(values_for(a) for a in args if a is not type(None))) | st.none()
    if origin is list:
        return st.lists(values_for(args[0]), max_size=2) | YAML_SCALARS
    if origin is dict:
        return st.dictionaries(st.sampled_from(["id", "lang", "query", "positive", "qid", ""]), TEXT | YAML_SCALARS,
                               max_size=2) | YAML_SCALARS
    if hint is bool:
        return st.booleans() | st.sampled_from([0, 1, "true", "no"])
    if hint is int:
        return st.sampled_from([-1, 0, 1, 2, 3, 2**32 - 1, 2**32, 2**63, -2**63, 10**30]) | st.integers(-3, 300) \
            | st.sampled_from([1.5, "8", "abc", None, [1]])
    if hint is float:
        return st.sampled_from([-1.0, -0.5, -0.0, 0.0, 1e-12, 0.5, 1.0, 1.5, 1e12, 2**32]) | st.floats(-2, 2) | st.floats() \
            | st.sampled_from(["1e-3", "abc", ".nan", ".inf", 2**1023, 10**400, True])  # 10**400: no float holds it
    if hint is str:
        return TEXT | PATHLIKE | st.integers(-2, 2)
    return YAML_VALUES  # a key outside the schema


def yaml_literal(value: Any) -> str:
    """``value`` as an override's right-hand side (YAML, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def keys_and_values(keys: list[str]) -> st.SearchStrategy:
    """(dotted key, value) pairs: a schema key with a value for its type, or another key."""
    typed = st.sampled_from(keys).flatmap(lambda k: st.tuples(
        st.just(k), values_for(SCHEMA.get(k)) | near(DEFAULTS[k]) if k in DEFAULTS else values_for(SCHEMA.get(k))))
    other_keys = st.sampled_from(["train.alpah", "bogus", "run.dir.x", "x.", "train..alpha", "train.alpha.x",
                                  "model.tiny.bogus", "eval", "data.sources.path", "train.", "train.tiny.x", ".x", " ",
                                  "\x0c"]) | TEXT.filter(lambda k: "=" not in k)
    return st.one_of(typed, typed, typed, st.tuples(other_keys, YAML_VALUES))


@st.composite
def overrides(draw, keys: list[str], max_size: int = 4) -> list[str]:
    out = []
    for key, value in draw(st.lists(keys_and_values(keys), max_size=max_size)):
        raw = draw(st.just(yaml_literal(value)) | TEXT)
        out.append(f"{key}={raw}")
    if rarely(draw, 10):
        out.append(draw(st.sampled_from(["novalue", "=1", "train.alpha", "train.alpha=", "a=b=c"])))
    return out


@st.composite
def config_tree(draw) -> Any:
    """A config file's content: sections from the schema with keys from it, unknown ones,
    null or wrongly typed sections."""
    tree: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(["run", "data", "model", "train", "eval", "bogus"]), max_size=4, unique=True)):
        shape = draw(st.sampled_from(["mapping", "mapping", "mapping", "null", "scalar", "list"]))
        if shape == "null":
            tree[section] = None
        elif shape == "scalar":
            tree[section] = draw(YAML_SCALARS)
        elif shape == "list":
            tree[section] = draw(st.lists(YAML_SCALARS, max_size=2))
        else:
            keys = [k for k in SCHEMA if k.startswith(section + ".") and k.count(".") == 1] or ["bogus.x"]
            tree[section] = {k.split(".", 1)[1]: v for k, v in draw(st.lists(keys_and_values(keys), max_size=4))
                             if "." in k}
    return tree


@st.composite
def config_files(draw, root: Path, paths: dict[str, Path]) -> Path:
    """A YAML config in ``root`` (maybe ``extends``-ing another there, itself, a missing
    file, or a non-string), as text that may be cut short or not a mapping."""
    def text_of(tree: Any) -> str:
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
        kind = draw(st.sampled_from(["yaml"] * 6 + ["truncated", "raw"]))
        if kind == "truncated" and text:
            return text[:draw(st.integers(0, len(text) - 1))]
        if kind == "raw":
            return draw(st.sampled_from(["", "# nothing yet\n", "- a\n- b\n", "42\n", "train: [\n", "\ttrain: 1\n",
                                         "a: b: c\n", "train:\n  alpha: 0.5\n alpha: 1\n", "{", "null\n", "!!python/none\n"]))
        return text

    path = root / "config.yaml"
    tree = draw(config_tree())
    parent = draw(st.sampled_from([None, None, "base.yaml", "config.yaml", "missing.yaml", "dir", 5, ["a"]]))
    if parent is not None:
        tree["extends"] = parent
    if parent == "base.yaml":
        base = draw(config_tree())
        if draw(st.booleans()):
            base["extends"] = draw(st.sampled_from(["config.yaml", "base.yaml", "missing.yaml", str(ROOT / "configs/tiny.yaml")]))
        write(root / "base.yaml", fill(text_of(base), paths))
    text = fill(text_of(tree), paths)
    write(path, not_utf8(draw, text) if rarely(draw, 8) else text)
    return path


# --- malformed data files -------------------------------------------------------------------

GOOD_ROW = st.fixed_dictionaries({"id": st.sampled_from(["a", "b", "c"]), "lang": st.sampled_from(["en", "de", "el"]),
                                  "query": WORDS, "positive": WORDS},
                                 optional={"negatives": st.lists(WORDS, max_size=2), "title": WORDS})
ROW_FIELDS = ["id", "lang", "query", "positive", "negatives", "title"]


def no_text_list(value: Any) -> bool:
    return isinstance(value, list) and not any(isinstance(x, str) for x in value)


@st.composite
def jsonl_line(draw) -> str:
    """A line of a JSONL file or shard."""
    row = draw(GOOD_ROW)
    kind = draw(st.sampled_from(["good", "good", "mutated", "mutated", "mutated", "truncated", "not-object", "blank"]))
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from([*ROW_FIELDS, "extra"]))
            if key in row and draw(st.booleans()):
                del row[key]
            else:
                row[key] = draw(st.sampled_from(LANGS) if key == "lang" else JSON_VALUES | st.sampled_from(BLANKS)
                                | st.lists(st.sampled_from(BLANKS + ["n"]), max_size=2))
    text = json.dumps(row, ensure_ascii=draw(st.booleans()))
    if kind == "truncated":
        return text[:draw(st.integers(0, len(text) - 1))]
    if kind == "not-object":
        return json.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict))))
    if kind == "blank":
        return draw(st.sampled_from(["", "  ", "\t"]))
    return text


ARROW_TYPES = {"string": pa.string(), "large_string": pa.large_string(), "int": pa.int64(), "float": pa.float64(),
               "bool": pa.bool_(), "list<string>": pa.list_(pa.string()), "list<int>": pa.list_(pa.int64()),
               "null": pa.null(), "binary": pa.binary(),
               "dictionary": pa.dictionary(pa.int32(), pa.string())}
ARROW_VALUES = {"string": WORDS | st.sampled_from(BLANKS) | st.sampled_from(LANGS), "int": st.integers(-5, 5),
                "float": st.floats(), "bool": st.booleans(), "binary": st.binary(max_size=4),
                "list<string>": st.lists(WORDS | st.sampled_from(BLANKS), max_size=2),
                "list<int>": st.lists(st.integers(-5, 5) | st.none(), max_size=2)}


@st.composite
def arrow_column(draw, name: str, kind: str, rows: int) -> pa.Array:
    if kind == "good":
        good = {"lang": st.sampled_from(["en", "de"]), "id": st.sampled_from(["a", "b", "c"]),
                "negatives": st.lists(WORDS, max_size=2)}.get(name, WORDS)
        return pa.array(draw(st.lists(good, min_size=rows, max_size=rows)),
                        pa.list_(pa.string()) if name == "negatives" else pa.string())
    values_of = ARROW_VALUES.get(kind.replace("large_", "").replace("dictionary", "string"))
    values = [None] * rows if values_of is None else draw(st.lists(values_of | st.none(), min_size=rows, max_size=rows))
    array = pa.array(values, pa.string() if kind == "dictionary" else ARROW_TYPES[kind])
    return array.dictionary_encode() if kind == "dictionary" else array


@st.composite
def parquet_shards(draw, folder: Path) -> Path:
    """A directory of 1-2 Parquet shards: hbt's columns, some missing, renamed, retyped,
    null or blank; or a shard that is not Parquet at all."""
    folder.mkdir()
    required = ["id", "lang", "query", "positive"] if not rarely(draw, 6) else \
        draw(st.lists(st.sampled_from(["id", "lang", "query", "positive"]), max_size=3, unique=True))
    names = required + [name for name in ["negatives", "title", "question", "Query", "extra"] if draw(st.booleans())]
    kinds = {name: "good" for name in names}  # and one or two of them of another type, null or blank
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)) if names else []:
        kinds[name] = draw(st.sampled_from(list(ARROW_TYPES)))
    if "negatives" in kinds and rarely(draw, 3):  # the one list column: lists of other things, or no lists
        kinds["negatives"] = draw(st.sampled_from(["list<int>", "string", "null", "int"]))
    for n in range(draw(st.integers(1, 2))):
        if rarely(draw, 10):
            write(folder / f"part-{n}.parquet", draw(st.sampled_from([b"", b"PAR1", b"PAR1\0\0\0\0PAR1", b"not parquet"])))
            continue
        rows = draw(st.integers(0, 4))
        dropped = draw(st.sampled_from(names)) if n and names and rarely(draw, 3) else None  # shards' columns differ
        columns = {name: draw(arrow_column(name, kind, rows)) for name, kind in kinds.items() if name != dropped}
        table = pa.table(columns) if columns else pa.table({"id": pa.array([], pa.string())})
        pq.write_table(table, folder / f"part-{n}.parquet")
        note(f"part-{n}.parquet: {table.schema.to_string(show_schema_metadata=False)!r} {table.to_pylist()!r}")
    return folder


def lareqa_paths(doc: Any, at: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (dict keys and list indices)."""
    found = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += lareqa_paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += lareqa_paths(v, (*at, i))
    return found


@st.composite
def lareqa_file(draw, folder: Path) -> Path:
    """A LAReQA language file (or a directory of 1-2) with broken structure: values
    replaced, deleted, blanked or wrapped in a list anywhere in the document."""
    good = lareqa_doc([paragraph(["One sentence.", "Two sentence."], [("q1", "which?", 3), ("q2", "what?", 15)])])
    folder.mkdir()
    names = draw(st.lists(st.sampled_from(["en.json", "de.json", "xx.json", "data.json", "xquad-en.json", "en.test.json",
                                           "el.json", "a_de.json"]), min_size=1, max_size=2, unique=True))
    for name in names:
        doc = good
        for _ in range(draw(st.integers(0, 3))):
            paths = lareqa_paths(doc)
            path = paths[draw(st.integers(0, len(paths) - 1))]
            action = draw(st.sampled_from(["replace", "replace", "delete", "blank", "wrap"]))
            mutated = json.loads(json.dumps(doc))
            if not path:
                mutated = draw(JSON_VALUES) if action == "replace" else [mutated]
            else:
                parent = mutated
                for step in path[:-1]:
                    parent = parent[step]
                if action == "delete":
                    del parent[path[-1]]
                elif action == "wrap":
                    parent[path[-1]] = [parent[path[-1]]]
                else:
                    parent[path[-1]] = draw(JSON_VALUES if action == "replace" else st.sampled_from(BLANKS))
            doc = mutated
        if rarely(draw, 5):  # a sentence_breaks entry that is no [begin, end] pair
            try:
                breaks = doc["data"][0]["paragraphs"][0]["sentence_breaks"]
                breaks[draw(st.integers(0, len(breaks) - 1))] = draw(JSON_VALUES | st.just([3]) | st.just([1.5, 2]))
            except (KeyError, TypeError, IndexError, ValueError):
                pass  # a structure already broken above the breaks
        text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
        if rarely(draw, 6):
            text = text[:draw(st.integers(0, len(text) - 1))]
        write(folder / name, text)
    return folder if len(names) > 1 or draw(st.booleans()) else folder / names[0]


@st.composite
def data_source(draw, root: Path) -> str:
    """What ``hbt data`` reads: a malformed file or shard set, or a synthetic spec."""
    kind = draw(st.sampled_from(["jsonl", "jsonl", "jsonl-shards", "parquet", "parquet", "parquet", "lareqa", "lareqa",
                                 "synthetic", "missing"]))
    if kind in ("jsonl", "jsonl-shards"):
        lines = draw(st.lists(jsonl_line(), min_size=0, max_size=5))
        text = "\n".join(lines) + ("\n" if draw(st.booleans()) else "")
        content = not_utf8(draw, text) if rarely(draw, 10) else text
        if kind == "jsonl":
            return str(write(root / draw(st.sampled_from(["pairs.jsonl", "data.jsonl"])), content))
        (root / "shards").mkdir()
        write(root / "shards" / "part-0.jsonl", content)  # empty (0 bytes) too
        if rarely(draw, 5):
            write(root / "shards" / "part-1.jsonl", draw(st.sampled_from(["", "\n", json.dumps(draw(GOOD_ROW)) + "\n"])))
        return str(root / "shards")
    if kind == "parquet":
        folder = draw(parquet_shards(root / "parquet"))
        return draw(st.sampled_from([str(folder), str(folder / "*.parquet"), str(folder / "part-0.parquet")]))
    if kind == "lareqa":
        return str(draw(lareqa_file(root / "lareqa")))
    if kind == "synthetic":
        options = draw(st.lists(st.tuples(st.sampled_from(["items", "languages", "seed", "coverage", "topics", "itemz",
                                                           "query_words", "passage_words", ""]),
                                          st.integers(-2, 40).map(str) | st.sampled_from(["0.5", "nan", "x", "", "1e3"])),
                                max_size=3))
        return "synthetic" + ("" if not options else ":" + ",".join(f"{k}={v}" for k, v in options))
    return str(root / "missing.jsonl")


# Values of each option's type and choices, passed as --option=value; now and then one
# that argparse itself refuses (ARGPARSE_REFUSES: not a number, not one of the choices).
ARGPARSE_REFUSES = st.sampled_from(["abc", "1.5", "", "Exact", "--x", "1e3"])
INTS = st.integers(-3, 40).map(str)
FLOATS = st.floats(-1, 2).map(repr) | st.sampled_from(["nan", "inf", "-inf", "1e-300", "0", "1"])
SAMPLER_OPTIONS = {
    "--batch-size": INTS, "--alpha": FLOATS, "--mix": st.sampled_from(["exact", "bernoulli"]),
    "--language-policy": st.sampled_from(["proportional", "uniform", "temperature"]),
    "--language-temperature": FLOATS, "--remainder": st.sampled_from(["drop", "carry"]),
    "--seed": st.integers(-3, 2**33).map(str), "--epochs": st.integers(-1, 2).map(str), "--show": INTS,
}


def options(draw, table: dict[str, st.SearchStrategy], flags: tuple[str, ...] = ()) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(table)), max_size=5, unique=True))
    return [f"{o}={draw(ARGPARSE_REFUSES) if rarely(draw, 12) else draw(table[o])}" for o in chosen] + draw(st.lists(st.sampled_from(flags), max_size=1) if flags else st.just([]))


@contextmanager
def example_dir(factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh directory per example, the working directory while it runs (where an
    output without a path would go)."""
    with tempfile.TemporaryDirectory(dir=factory.getbasetemp()) as tmp:
        with monkeypatch.context() as m:
            m.chdir(tmp)
            yield Path(tmp)


def refused_models(root: Path) -> dict[str, str]:
    """Encoders every command refuses when it checks the model's config (before data,
    weights or a process group): each a different refusal of hbt.model.locate_model,
    encoder_config or check_lengths."""
    def model(name: str, **files: str) -> str:
        folder = root / "models" / name
        folder.mkdir(parents=True)
        for file, text in files.items():
            (folder / file.replace("_json", ".json")).write_text(text)
        return str(folder)

    bert = json.dumps({"model_type": "bert", "max_position_embeddings": 0})
    (root / "models").mkdir()
    (root / "models" / "a-file").write_text("not a model\n")
    return {
        "missing": str(root / "models" / "missing"), "file": str(root / "models" / "a-file"), "empty": model("empty"),
        "no-tokenizer": model("no-tokenizer", config_json=bert), "no-config": model("no-config", tokenizer_json="{}"),
        "bad-json": model("bad-json", config_json="{", tokenizer_json="{}"),
        "unknown-type": model("unknown-type", config_json='{"model_type": "nosuch"}', tokenizer_json="{}"),
        "no-positions": model("no-positions", config_json=bert, tokenizer_json="{}"),
        "package": "package:nosuchpackage/model",
    }


# --- the fuzz tests ------------------------------------------------------------------------

def load_or_refuse(config: str | None, extra: list[str]) -> bool:
    """Whether the config loads; any refusal must be an InputError of one non-blank line."""
    try:
        load_config(config, extra)
        return True
    except InputError as e:
        assert str(e).strip() and not set(str(e)) & set(LINE_BREAKS), repr(str(e))
        return False


@pytest.mark.parametrize("key", list(SCHEMA))
@fuzz_settings(5)
@given(data=st.data())
def test_every_key_alone(tmp_path_factory, monkeypatch, capfd, key: str, data) -> None:
    """Each key of the schema (sections too) overridden alone on the defaults, with values
    of its type in and out of range and of other types: so every key's own checks run
    (with several wrong keys, only the first refused one's would)."""
    with example_dir(tmp_path_factory, monkeypatch) as root:
        paths = fixture_paths(root)
        value = data.draw(TEXT) if rarely(data.draw, 5) else yaml_literal(data.draw(values_for(SCHEMA[key])))
        override = fill(f"{key}={value}", paths)
        note(f"override: {override!r}")
        loaded = load_or_refuse(None, [override])
        outcome = run_cli(capfd, ["config", override])
        check(outcome)
        assert (outcome.code == 0) == loaded, outcome


@fuzz_settings(100)
@given(data=st.data())
def test_config_files_and_overrides(tmp_path_factory, monkeypatch, capfd, data) -> None:
    """load_config + validate raise InputError (one line) or return a config; ``hbt
    config`` agrees: exit 0 when it loads, else exit 2 with that one line."""
    with example_dir(tmp_path_factory, monkeypatch) as root:
        paths = fixture_paths(root)
        config = data.draw(st.sampled_from([None, str(ROOT / "configs/tiny.yaml")]) | config_files(root, paths).map(str))
        extra = [fill(o, paths) for o in data.draw(overrides(list(SCHEMA)))]
        loaded = load_or_refuse(config, extra)
        get = data.draw(st.none() | st.sampled_from(["train.alpha", "model.tiny", "train.bogus", "x", "run.dir.x", ""]))
        argv = ["config", *(["--config", config] if config else []), *(["--get", get] if get is not None else []), *extra]
        outcome = run_cli(capfd, argv)
        check(outcome)
        if outcome.code == 0:
            assert loaded, outcome
        else:
            assert not loaded or get is not None, outcome


@fuzz_settings(170)
@given(data=st.data())
def test_data_commands_on_malformed_files(tmp_path_factory, monkeypatch, capfd, data) -> None:
    """``hbt data stats|sample|plan`` on malformed JSONL, Parquet and LAReQA files; on
    exit 2 nothing outside the cache directory is written (the data files, an existing
    ``--out`` directory)."""
    with example_dir(tmp_path_factory, monkeypatch) as root:
        paths = fixture_paths(root)
        (paths["DIR"] / "marker").write_text("kept\n")
        (root / "cache").mkdir()  # made here, so that the datasets cache written into it leaves root's mtime alone
        source = data.draw(data_source(root))
        command = data.draw(st.sampled_from(["stats", "sample", "plan"]))
        argv = ["data", command, source, f"--cache-dir={root / 'cache'}"]
        if command != "stats":
            table = SAMPLER_OPTIONS if command == "sample" else {k: v for k, v in SAMPLER_OPTIONS.items() if k != "--show"}
            argv += options(data.draw, table, ("--same-source", "--no-same-source"))
        if command == "plan":
            out = data.draw(st.sampled_from(["plan.jsonl", "dir", "missing/plan.jsonl", "titles.txt", "titles.txt/plan.jsonl"]))
            argv.append(f"--out={root / out}")
        before = snapshot(root)
        outcome = run_cli(capfd, argv)
        check(outcome)
        if outcome.code == 2:
            after = snapshot(root)
            outside = lambda files: {k: v for k, v in files.items() if k.split(os.sep)[0] != "cache"}  # noqa: E731
            assert outside(after) == outside(before), outcome


def no_process_group(env: DistEnv | None = None, timeout_min: float = 30.0) -> DistEnv:
    """hbt.dist.init for one process in this pytest worker: the same single-process env,
    without starting a gloo group that would outlive the test."""
    return DistEnv(0, 1, 0, "127.0.0.1", 0, "single")


def training_starts(*_args, **_kwargs):
    raise AssertionError("hbt train got past its checks (the data would be read): the fuzzed config was not refused")


# Keys the train fuzz leaves alone: the run directory and cache it sets itself, after the
# fuzzed overrides (so an override or config file cannot move them elsewhere).
TRAIN_KEYS = [k for k in SCHEMA if k not in ("run", "run.dir", "data.cache_dir")]


@fuzz_settings(50)
@given(data=st.data())
def test_train_refused_leaves_the_run_directory_alone(tmp_path_factory, monkeypatch, capfd, data) -> None:
    """``hbt train`` with a fuzzed config file and overrides, the last override a model
    every check refuses: exit 2, one line, and the existing run directory (and all else
    in the working directory) byte for byte as it was."""
    monkeypatch.setattr("hbt.dist.init", no_process_group)
    monkeypatch.setattr("hbt.train.training_data", training_starts)
    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))  # hbt.train.start sets it
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # or start sets torch's threads
    with example_dir(tmp_path_factory, monkeypatch) as root:
        paths = fixture_paths(root)
        models = refused_models(root)
        run = existing_run_dir(root / "run")
        argv = ["train"]
        config = data.draw(st.sampled_from([None, str(ROOT / "configs/tiny.yaml")]) | config_files(root, paths).map(str))
        if config:
            argv += ["--config", config]
        argv += data.draw(st.lists(st.sampled_from(["--resume=never", "--resume=step-00000002", "--resume=..",
                                                    "--resume=auto", "--accept-changes"]), max_size=2))
        argv += [fill(o, paths) for o in data.draw(overrides(TRAIN_KEYS))]
        argv += [f"run.dir={run}", f"data.cache_dir={root / 'cache'}", f"model.name={data.draw(st.sampled_from(sorted(models.values())))}"]
        before = snapshot(root)
        outcome = run_cli(capfd, argv)
        check(outcome, exit_codes=(2,))
        assert snapshot(root) == before, outcome


EVAL_OPTIONS = {
    "--settings": st.sampled_from(["mono", "cross,multi", "", ",", "mono,bogus", "MONO"]) | TEXT,
    "--holdout-titles": st.sampled_from(["0.2", "0", "1.5", "T", "@@@MISSING@@", "@@@DIR@@", "@@@TITLES@@", "@@@BINARY@@",
                                         ",", "nan"]) | TEXT,
    "--seed": INTS, "--pooling": st.sampled_from(["mean", "cls"]), "--query-prefix": TEXT,
    "--passage-prefix": TEXT, "--max-length": st.integers(-2, 10**6).map(str), "--k": INTS, "--batch-size": INTS,
    "--index": st.sampled_from(["flat", "hnsw", "ivf"]), "--cache-dir": st.sampled_from(["cache", "@@DIR@@"]),
}
MINE_OPTIONS = {
    **{k: v for k, v in EVAL_OPTIONS.items() if k not in ("--settings",)},
    "--columns": st.sampled_from(["id=qid", "id=question_id,query=question", "=", "id", "bogus=x", "id=,"]) | TEXT,
    "--holdout-seed": INTS, "--range": st.sampled_from(["10-100", "0-1", "5-5", "-", "a-b", "100-10", "3"]) | TEXT,
    "--pick": st.sampled_from(["sample", "top"]), "--languages": st.sampled_from(["en", "en,de", "", "xx"]) | TEXT,
    "--max-score-ratio": FLOATS, "--format": st.sampled_from(["jsonl", "parquet"]),
}


@fuzz_settings(40)
@given(data=st.data())
def test_eval_and_mine_bad_options(tmp_path_factory, monkeypatch, capfd, data) -> None:
    """``hbt eval``/``hbt mine`` with fuzzed options and a model they refuse: exit 2 and
    one line before any data is read or process group started, nothing written (an
    existing ``--out`` directory unchanged, no default output directory made)."""
    monkeypatch.setattr("hbt.dist.init", no_process_group)
    with example_dir(tmp_path_factory, monkeypatch) as root:
        paths = fixture_paths(root)
        (paths["DIR"] / "marker").write_text("kept\n")
        models = refused_models(root)
        command = data.draw(st.sampled_from(["eval", "mine"]))
        argv = [command, f"--model={data.draw(st.sampled_from(sorted(models.values())))}",
                f"--data={data.draw(st.sampled_from(['synthetic', 'synthetic:items=5', str(root / 'missing.jsonl'), str(paths['DIR'])]))}"]
        argv += [fill(o, paths) for o in options(data.draw, EVAL_OPTIONS if command == "eval" else MINE_OPTIONS,
                                                 ("--with-scores",) if command == "mine" else ())]
        out = data.draw(st.sampled_from([None, "out", "@@DIR@@", "@@TITLES@@", "@@TITLES@@/sub"]))
        if out is not None or command == "mine":
            argv.append(f"--out={fill(out or 'out', paths)}")
        before = snapshot(root)
        outcome = run_cli(capfd, argv)
        check(outcome, exit_codes=(2,))
        assert snapshot(root) == before, outcome


# --- the known bugs, kept out of the generators above ---------------------------------------

def lareqa_breaks(root: Path) -> list[str]:
    doc = lareqa_doc([paragraph(["One sentence.", "Two."], [("q1", "which?", 3)])])
    doc["data"][0]["paragraphs"][0]["sentence_breaks"] = [5, 6]
    return ["data", "stats", str(write(root / "en.json", json.dumps(doc)))]


def parquet(root: Path, *tables: list[dict]) -> str:
    (root / "shards").mkdir()
    for n, rows in enumerate(tables):
        pq.write_table(pa.Table.from_pylist(rows), root / "shards" / f"part-{n}.parquet")
    return str(root / "shards")


def jsonl_shard(root: Path, text: str) -> str:
    (root / "s").mkdir()
    return str(write(root / "s" / "part-0.jsonl", text).parent)


def under_a_file(root: Path) -> str:
    return str(write(root / "a-file", "") / "plan.jsonl")


ROW = {"id": "a", "lang": "en", "query": "q", "positive": "p"}
# Bugs this fuzzing found (and a few found by probing beside it), each at its smallest
# case: what it did then, the exit status it gets now and a part of its one line.
FOUND_BUGS = {
    "argparse-type": ("a value argparse refuses ended in the subcommand's usage, 7 lines",
                      lambda root: ["eval", "--model", root / 'no-model', "--data", "synthetic", "--k", "abc"],
                      2, "argument --k: invalid int value: 'abc'"),
    "empty-culprit": ("'hbt config .x=1' (and ' =1') said 'hbt: error: : unknown key', naming no culprit",
                      lambda root: ["config", ".x=1"], 2, "'': unknown key"),
    "newline-key": ("a key with a newline was repeated as given: a two-line error",
                    lambda root: ["config", "train.alpha\nx=1"], 2, "train.alpha\\nx: unknown key"),
    "newline-path": ("a hold-out file name with a newline was repeated as given: a two-line error",
                     lambda root: ["config", f"data.holdout_titles=@{root}/no\nfile"], 2, "/no\\nfile: cannot read"),
    "float-overflow": ("an integer too large for a float, for a float key, was an OverflowError traceback",
                       lambda root: ["config", "train.alpha=1" + "0" * 400], 2, "train.alpha: must be a finite number"),
    "yaml-not-utf8": ("a config file that is not UTF-8 was a UnicodeDecodeError traceback",
                      lambda root: ["config", "--config", str(write(root / "c.yaml", b"train:\n  alpha: \xff\n"))],
                      2, "c.yaml: is not UTF-8 text"),
    "yaml-nul": ("a NUL in a config file's hold-out file name was a ValueError traceback (embedded null byte)",
                 lambda root: ["config", "--config", str(write(root / "c.yaml", 'data:\n  holdout_titles: "@a\\0b"\n'))],
                 2, "data.holdout_titles: a\\x00b: cannot read"),
    "jsonl-not-utf8": ("a JSONL file that is not UTF-8 was a UnicodeDecodeError traceback",
                       lambda root: ["data", "stats", str(write(root / "pairs.jsonl", b'{"id": "a", "lang": "en", '
                                                                                     b'"query": "q\xff", "positive": "p"}\n'))],
                       2, "pairs.jsonl:1: is not UTF-8 text"),
    "jsonl-empty-shard": ("an empty JSONL shard in a shard directory was a StopIteration traceback from datasets",
                          lambda root: ["data", "stats", jsonl_shard(root, "")], 2, "every shard is empty"),
    "jsonl-empty-negatives": ("a JSONL shard whose rows all have \"negatives\": [] was an ArrowNotImplementedError traceback",
                              lambda root: ["data", "stats", jsonl_shard(root, json.dumps({**ROW, "negatives": []}) + "\n")],
                              0, None),
    "plan-out-under-file": ("hbt data plan --out FILE/plan.jsonl was a NotADirectoryError traceback",
                            lambda root: ["data", "plan", "synthetic:items=50", "--batch-size", "8", "--out", under_a_file(root)],
                            2, "--out: "),
    "lareqa-breaks": ("a sentence_breaks entry that is not a pair was a TypeError traceback", lareqa_breaks,
                      2, "sentence_breaks[0]' should be a [begin, end] pair of integers"),
    "parquet-int-negatives": ("a negatives column of integer lists was an ArrowNotImplementedError traceback",
                              lambda root: ["data", "stats", parquet(root, [{**ROW, "negatives": [1, 2]}])],
                              2, "column 'negatives' should hold lists of strings"),
    "parquet-strings-negatives": ("a negatives column of plain strings was accepted (and read as lists of characters)",
                                  lambda root: ["data", "stats", parquet(root, [{**ROW, "negatives": "n"}])],
                                  2, "column 'negatives' should hold lists of strings, not string"),
    "parquet-schemas": ("shards with different columns (one with title) printed datasets' 7-line CastError log before "
                        "hbt's line, which said only 'An error occurred while generating the dataset'",
                        lambda root: ["data", "stats", parquet(root, [ROW], [{**ROW, "id": "b", "title": "T"}])],
                        2, "part-1.parquet: its columns differ from part-0.parquet's (has title)"),
    "lock-written": ("a train refused by check_model (model.name) had already rewritten run.dir/.lock with its pid",
                     lambda root: ["train", "--config", str(ROOT / "configs/tiny.yaml"), f"run.dir={existing_run_dir(root / 'run')}",
                                   f"data.cache_dir={root / 'cache'}", f"model.name={root / 'no-model'}"],
                     2, "model.name: "),
}


@pytest.mark.parametrize("name", list(FOUND_BUGS))
def test_found_bugs_stay_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture, name: str) -> None:
    """Each bug's smallest case, held to the fuzz tests' contract, with the exit status
    and the words of its line (so a refusal that names the wrong culprit fails too)."""
    why, make, code, words = FOUND_BUGS[name]
    monkeypatch.setattr("hbt.dist.init", no_process_group)
    monkeypatch.setattr("hbt.train.training_data", training_starts)
    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cache").mkdir()  # the data commands' default cache (.cache/hbt) goes here
    argv = [str(a) for a in make(tmp_path)]
    before = snapshot(tmp_path)
    outcome = run_cli(capfd, argv)
    check(outcome)
    assert outcome.code == code, (why, outcome)
    assert words is None or words in outcome.lines()[-1], (why, outcome)
    outside = lambda files: {k: v for k, v in files.items() if k.split(os.sep)[0] != ".cache"}  # noqa: E731
    assert outcome.code == 0 or outside(snapshot(tmp_path)) == outside(before), (why, outcome)
