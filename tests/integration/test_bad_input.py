"""Bad input: one line on stderr naming the file, field or option; exit 2; no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import (ME5_SMALL, assert_one_line_error, lareqa_doc, need, overrides, paragraph, rows_of, run_hbt,
                           status_line, write_parquet)


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


GOOD = paragraph(["One sentence.", "Two sentence."], [("q1", "which?", 3)])


@pytest.mark.parametrize(
    "name,doc,needles",
    [
        ("en.json", '{"data": [', ["en.json", "malformed JSON", "line 1"]),
        ("en.json", {"data": [{"paragraphs": [GOOD]}]}, ["en.json", "data[0].title"]),
        ("en.json", {"data": [{"title": "T", "paragraphs": [{**GOOD, "qas": [{"id": "q", "answers": []}]}]}]},
         ["en.json", "data[0].paragraphs[0].qas[0].question"]),
        ("en.json", lareqa_doc([paragraph(["Short."], [("q9", "far?", 500)])]), ["en.json", "q9", "outside every"]),
        ("xx.json", lareqa_doc([GOOD]), ["xx.json", "unknown language code 'xx'"]),
        ("en.json", {"data": [{"title": "T", "paragraphs": [{**GOOD, "qas": []}]}]}, ["en.json", "no questions"]),
        ("en.json", lareqa_doc([paragraph(["One sentence.", " \t"], [("q1", "which?", 3)])]),
         ["en.json", "data[0].paragraphs[0].sentences[1]", "non-blank"]),
        ("en.json", lareqa_doc([paragraph(["One sentence."], [("q1", "\u3000 ", 3)])]),
         ["en.json", "data[0].paragraphs[0].qas[0].question", "non-blank"]),
    ],
    ids=["malformed", "missing-title", "missing-question", "answer-outside", "unknown-lang", "empty-lang",
         "blank-sentence", "blank-question"],
)
def test_lareqa_bad_input(tmp_path: Path, name: str, doc, needles: list[str]) -> None:
    out = run_hbt("data", "stats", str(write(tmp_path / name, doc)))
    assert_one_line_error(out, *needles)


@pytest.mark.parametrize(
    "line,needles",
    [
        ('{"id": "a", "lang": "en", "query": "q"', ["pairs.jsonl:2", "malformed JSON"]),
        ('{"id": "a", "lang": "en", "query": "q"}', ["pairs.jsonl:2", "'positive'"]),
        ('{"id": "a", "lang": "english", "query": "q", "positive": "p"}', ["pairs.jsonl:2", "'english'"]),
        ('{"id": "a", "lang": "en", "query": "  ", "positive": "p"}', ["pairs.jsonl:2", "field 'query'", "non-blank"]),
        ('{"id": "a", "lang": "en", "query": "q", "positive": "p", "negatives": ["n", "\\t"]}',
         ["pairs.jsonl:2", "'negatives'", "non-blank"]),
    ],
    ids=["malformed", "missing-positive", "unknown-lang", "blank-query", "blank-negative"],
)
def test_jsonl_bad_input(tmp_path: Path, line: str, needles: list[str]) -> None:
    good = '{"id": "b", "lang": "en", "query": "q", "positive": "p"}'
    out = run_hbt("data", "stats", str(write(tmp_path / "pairs.jsonl", good + "\n" + line + "\n")))
    assert_one_line_error(out, *needles)


def test_missing_path_and_bad_synthetic_option() -> None:
    assert_one_line_error(run_hbt("data", "stats", "no/such/dir"), "no/such/dir", "no such file")
    assert_one_line_error(run_hbt("data", "stats", "synthetic:itemz=3"), "unknown synthetic option 'itemz'")


def test_sampler_options(tmp_path: Path) -> None:
    """With a fresh cache, so the index is built (and reported) before the error, as on a new clone."""
    cache = ("--cache-dir", str(tmp_path))
    assert_one_line_error(run_hbt("data", "sample", "synthetic:items=200", "--alpha", "1.5", *cache),
                          "--alpha (train.alpha)", "[0, 1]")
    assert_one_line_error(run_hbt("data", "sample", "synthetic:items=50", "--batch-size", "64", *cache),
                          "--batch-size (train.batch_size)", "larger than language")
    # named by the key a config sets it with, not the option typed, before
    assert_one_line_error(run_hbt("data", "sample", "synthetic:items=200", "--seed", "-1", *cache), "--seed (run.seed)")


def test_shard_sources_bad_input(tmp_path: Path) -> None:
    """Shards: a pattern that matches nothing, mixed formats, an unreachable hub dataset,
    a bad row and a missing mapped column all end in one line naming the source (after
    datasets' conversion progress bar, where shards were converted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = f"--cache-dir={tmp_path / 'cache'}"
    assert_one_line_error(run_hbt("data", "stats", str(tmp_path / "none" / "*.parquet"), cache), "matches no file")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    row = {"id": "a", "lang": "en", "query": "q", "positive": "p"}
    pq.write_table(pa.Table.from_pylist([row]), mixed / "a.parquet")
    (mixed / "b.jsonl").write_text(json.dumps(row) + "\n")
    assert_one_line_error(run_hbt("data", "stats", str(mixed), cache), str(mixed), "shards must all be .parquet")
    assert_one_line_error(run_hbt("data", "stats", "hf:nobody/nothing", cache, env={"HF_HUB_OFFLINE": "1"}),
                          "hf:nobody/nothing", "cannot read")
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist([row, {**row, "id": "b", "positive": None}]), bad / "part-0.parquet")
    out = run_hbt("data", "stats", str(bad), cache)
    assert_one_line_error(out, str(bad), "row 2: column 'positive' is empty")  # row 2 of the file, as line 2 of a JSONL file
    blank = tmp_path / "blank"
    blank.mkdir()
    pq.write_table(pa.Table.from_pylist([row, {**row, "id": "b", "query": " \u00a0\n"}]), blank / "part-0.parquet")
    assert_one_line_error(run_hbt("data", "stats", str(blank), cache), str(blank), "row 2: column 'query' is empty or blank")
    out = run_hbt("train", "data.train=null", f"data.sources=[{{path: {bad}, columns: {{query: question}}}}]",
                  f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}")
    assert_one_line_error(out, str(bad), "no column 'question'")



# --- issue 21 item 4: each case below was a traceback, a silent acceptance, a slow failure
# or the wrong culprit; now one line naming it, exit 2, before any expensive work

TRAIN = ("train", "--config", "configs/tiny.yaml", "train.max_steps=2")


@pytest.mark.parametrize("override,needles", [
    ("model.tiny.heads=3", ["model.tiny.heads", "must divide model.tiny.hidden_size (64)"]),  # transformers' ValueError
    ("run.seed=-1", ["run.seed", "[0, 2**32)"]),  # numpy's ValueError
    ("model.tiny.vocab_size=0", ["model.tiny.vocab_size", ">= 500"]),  # trained on a 7-piece vocabulary, at chance
    ("eval.k=0", ["eval.k", ">= 1"]),  # was named 'eval'
    ("data.holdout_titles=@no-such-titles.txt", ["data.holdout_titles", "no-such-titles.txt", "cannot read"]),
    ("model.name=/no/such/dir", ["model.name: /no/such/dir: no such directory"]),  # the hub's "Repo id must be ..."
], ids=["tiny-heads", "negative-seed", "tiny-vocab", "eval-k", "holdout-file", "model-path"])
def test_train_refuses_before_any_work(tmp_path: Path, override: str, needles: list[str]) -> None:
    """No data read, no tokenizer trained, no DeepSpeed."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert_one_line_error(run_hbt(*TRAIN, f"run.dir={run}", f"data.cache_dir={cache}", override), *needles)
    assert not cache.exists() and not (run / "init").exists()


def test_unknown_holdout_titles_name_the_setting(tmp_path: Path) -> None:
    """They were reported as --holdout-titles, an option of hbt eval and hbt mine."""
    out = run_hbt("train", *overrides(tmp_path, "a", "data.holdout_titles=NoSuchTitle"))
    assert_one_line_error(out, "data.holdout_titles: unknown title(s) NoSuchTitle")
    out = run_hbt("train", *overrides(tmp_path, "b", "eval.data=synthetic:items=60", "eval.holdout_titles=NoSuchTitle"))
    assert_one_line_error(out, "eval.holdout_titles: unknown title(s) NoSuchTitle")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained tiny encoder exported as hbt exports one: 34 positions, XLM-R's
    padding offset of 2, so texts of at most 32 tokens."""
    from hbt.data import load_corpus
    from hbt.model import BiEncoder, build_tiny, export

    out = tmp_path_factory.mktemp("tiny") / "model"
    texts = [t for item in load_corpus("synthetic:items=60").items for p in item.pairs.values() for t in (p.query, p.passage)]
    encoder, tokenizer = build_tiny(texts, vocab_size=600, hidden_size=16, layers=1, heads=2, intermediate_size=32,
                                    max_length=32, seed=0)
    export(BiEncoder(encoder), tokenizer, out, "", "", 16, 32)
    return out


def test_token_limits_above_the_models_positions(tmp_path: Path, tiny_model: Path) -> None:
    """A limit the model has no positions for failed at the first long text (or not at all
    on short ones, and was written into the exported sentence_bert_config.json)."""
    ev = ("eval", "--model", str(tiny_model), "--data", "synthetic:items=60", "--out", str(tmp_path / "ev"))
    assert_one_line_error(run_hbt(*ev, "--max-length", "100000"),
                          "--max-length: 100000 tokens", "at most 32 (max_position_embeddings 34 less 2")
    mine = ("mine", "--model", str(tiny_model), "--data", "synthetic:items=60", "--out", str(tmp_path / "mined"))
    assert_one_line_error(run_hbt(*mine, "--max-length", "33"), "--max-length: 33 tokens", "at most 32")
    assert not (tmp_path / "ev").exists() and not (tmp_path / "mined").exists()
    init = tmp_path / "run" / "init"  # the tiny preset as an earlier start of this run.dir built it
    init.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (init / name).write_bytes((tiny_model / name).read_bytes())
    out = run_hbt(*TRAIN, f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", "model.max_passage_length=64")
    assert_one_line_error(out, "model.max_passage_length: 64 tokens", f"{init} takes: at most 32")


def test_token_limit_above_e5_small_positions(tmp_path: Path) -> None:
    """e5-small is a BERT: 512 positions, 512 tokens, no offset."""
    out = run_hbt(*TRAIN, f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                  f"model.name={need(ME5_SMALL)}", "model.max_passage_length=100000")
    assert_one_line_error(out, "model.max_passage_length: 100000 tokens", "at most 512 (max_position_embeddings 512)")
    assert not (tmp_path / "cache").exists()


def test_eval_and_mine_options_checked_before_encoding(tmp_path: Path, tiny_model: Path) -> None:
    """Each of these failed after every text was encoded, or with a traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (no_config / name).write_bytes((tiny_model / name).read_bytes())
    ev = ("eval", "--model", str(tiny_model), "--data", "synthetic:items=60")
    mine = ("mine", "--model", str(tiny_model), "--data", "synthetic:items=60")
    cases = [
        ((*ev, "--k", "0"), ["--k", ">= 1"]),
        ((*ev, "--batch-size", "0"), ["--batch-size", ">= 1"]),
        ((*ev, "--max-length", "0"), ["--max-length", ">= 1"]),
        ((*ev, "--out", str(a_file)), ["--out", f"{a_file} is a file"]),
        (("eval", "--model", str(no_config), "--data", "synthetic:items=60"), ["--model", str(no_config), "no config.json"]),
        ((*mine, "--out", str(a_file)), ["--out", f"{a_file} is a file"]),
        ((*mine, "--out", str(tmp_path / "m"), "--max-score-ratio", "2"), ["--max-score-ratio", "(0, 1]"]),
        ((*mine, "--out", str(tmp_path / "m"), "--seed", "-1"), ["--seed", ">= 0"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_hbt(*args), *needles)


def test_eval_reads_shards(tmp_path: Path, tiny_model: Path) -> None:
    """A Parquet shard directory was refused as 'no <lang>.json files'; it is evaluated as
    its rows in one JSONL file would be, and a directory of nothing hbt reads says what it reads."""
    shards = write_parquet(rows_of("synthetic:items=60,languages=2,seed=3"), tmp_path / "shards", shards=2)
    out = run_hbt("eval", "--model", str(tiny_model), "--data", str(shards), "--settings", "mono",
                  "--out", str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["mono"].keys() == {"el", "en"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("")
    out = run_hbt("eval", "--model", str(tiny_model), "--data", str(tmp_path / "other"))
    assert_one_line_error(out, str(tmp_path / "other"), "no <lang>.json files", "Parquet/JSONL shards", "qrels.txt")


def test_a_hub_name_without_the_hub_fails_at_once(tmp_path: Path) -> None:
    """It took 56 s and 22 retry lines: now the hub is asked once (whether it answers at
    all) and, unreachable, the name is looked up in the local cache only."""
    out = run_hbt(*TRAIN, f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                  "model.name=nosuchorg/nosuchmodel", timeout=120)
    assert_one_line_error(out, "model.name: nosuchorg/nosuchmodel")


def test_command_line_options(tmp_path: Path) -> None:
    """Options that were a traceback (--seeds x), printed nothing (--epochs -1), left a
    .tmp file behind (--out naming a directory) or blamed the wrong thing."""
    assert_one_line_error(run_hbt("sweep", "--config", "configs/tiny.yaml", "--strategies", "hybrid", "--seeds", "0,x",
                                  "--out", str(tmp_path / "sweep")), "--seeds: not an integer: 'x'")
    assert_one_line_error(run_hbt("sweep", "--config", "configs/tiny.yaml", "--strategies", "hybrid", "--seeds", "-1",
                                  "--out", str(tmp_path / "sweep")), "--seeds (run.seed): must be in [0, 2**32)")
    cache = ("--cache-dir", str(tmp_path / "cache"))
    assert_one_line_error(run_hbt("data", "sample", "synthetic:items=50", "--epochs", "-1", *cache), "--epochs", "at least 1")
    taken = tmp_path / "taken"
    taken.mkdir()
    out = run_hbt("data", "plan", "synthetic:items=50", "--batch-size", "8", "--out", str(taken), *cache)
    assert_one_line_error(out, "--out", f"{taken} is a directory")
    assert not (tmp_path / "taken.tmp").exists() and not list(taken.iterdir())
    assert_one_line_error(run_hbt("report", str(tmp_path / "no-run"), "--out", str(tmp_path / "report")),
                          f"{tmp_path / 'no-run'}: no such file or directory")


def test_config_files(tmp_path: Path) -> None:
    """An empty file trained on the built-in defaults; a null section refused overrides into it."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("# to do\n")
    assert_one_line_error(run_hbt("train", "--config", str(empty)), str(empty), "is empty")
    bare = tmp_path / "bare.yaml"
    bare.write_text("run: {dir: runs/x}\ntrain:\n")
    out = run_hbt("config", "--config", str(bare), "--get", "train.max_steps", "train.max_steps=3")
    assert out.returncode == 0 and out.stdout == "3\n", out.stderr


def test_metrics_cut_short_are_named_on_resume(tmp_path: Path) -> None:
    """A metrics.jsonl whose last line a kill cut short lost that step without a word;
    the resume now says which steps it no longer has."""
    args = overrides(tmp_path, "run", "train.max_steps=4", "train.checkpoint_every=2", "data.holdout_titles=null")
    first = run_hbt("train", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-20])  # step 4's line, cut short
    again = run_hbt("train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    warnings = [line for line in again.stderr.splitlines() if line.startswith("hbt: warning:")]
    assert warnings == [f"hbt: warning: {metrics}: 1 unreadable line dropped (cut short?); no line for step 4, "
                        "which the resumed run does not log again"], again.stderr


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest):
    """A 4.5 MB tmpfs (or ``request.param`` kB): room for the tiny preset's init/ (0.9 MB)
    and one checkpoint of the small run (2.5 MB), not two. Mounting needs root (CAP_SYS_ADMIN)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    size = getattr(request, "param", 4500)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_naming_what_could_not_be_written(tmp_path: Path, small_disk: Path) -> None:
    """Two tracebacks from inside torch.save (40 lines) before: now one line naming the
    checkpoint, which is removed (it would keep the disk full), and the previous one is
    intact and still what --resume auto takes."""
    from hbt.checkpoint import incomplete

    run = small_disk / "run"
    out = run_hbt("train", *overrides(tmp_path, "unused", f"run.dir={run}", "train.max_steps=4", "train.checkpoint_every=2",
                                      "train.keep_checkpoints=2"))
    assert_one_line_error(out, f"{run / 'checkpoints' / 'tmp-step-00000004'}: cannot write: no space left",
                          "the last complete checkpoint, step-00000002, is intact")
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000002"]
    assert incomplete(checkpoints / "step-00000002") is None and (checkpoints / "latest").read_text() == "step-00000002"


@pytest.mark.parametrize("small_disk", [4000], indirect=True)
def test_a_full_disk_after_training_is_one_line_too(tmp_path: Path, small_disk: Path) -> None:
    """Room for init/ and the last checkpoint but not for the evaluation's outputs and the exported model: was a
    32-line traceback from hbt/eval/report.py (only checkpoints and metrics named their
    path); now one line naming the file that could not be written."""
    run = small_disk / "run"
    out = run_hbt("train", *overrides(tmp_path, "unused", f"run.dir={run}", "train.max_steps=2", "train.checkpoint_every=1000"))
    lines = [line for line in out.stderr.strip().splitlines() if line.strip() and not status_line(line)]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith(f"hbt: error: {run / 'eval'}") and "cannot write: no space left on its filesystem" in lines[-1], lines
    assert not any(line.startswith("hbt: error") for line in lines[:-1]), lines
