"""``hbt sweep --select``: the criterion's grammar, the choice among cells (maximum,
deterministic ties, constraints against the zero-shot baseline, incomplete cells),
best.yaml reproducing the chosen cell, the validation split (never a test title), and
the command line's refusals, before anything is submitted."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hbt import cli
from hbt.config import load_config
from hbt.errors import InputError
from hbt.sweep import ZERO_SHOT, SweepSpec
from hbt.sweep_grid import parse_grid
from hbt.sweep_select import Constraint, candidates, choose, final_spec, parse_criterion, select
from hbt.sweep_split import make_split
from hbt.train import evaluation_set, training_data

TINY = "configs/tiny.yaml"
SMALL = ["data.train=synthetic:items=480,languages=3,seed=3"]


def test_criteria_parse() -> None:
    assert parse_criterion("multi").terms == ("multi",)
    mean = parse_criterion("mean(mono, cross,multi)")
    assert mean.terms == ("mono", "cross", "multi") and mean.constraints == () and not mean.needs_zero_shot
    assert mean.score({"mono_map": 0.9, "cross_map": 0.3, "multi_map": 0.3}) == pytest.approx(0.5)
    constrained = parse_criterion("multi:mono>=zero_shot, own_language_first<0.6")
    assert constrained.constraints == (Constraint("mono", ">=", None), Constraint("own_language_first", "<", 0.6))
    assert constrained.needs_zero_shot


@pytest.mark.parametrize("text, needle", [
    ("multilingual", "--select: 'multilingual' is not a score: choose mono, cross, multi"),
    ("mean(mono,rank_spread)", "'rank_spread' is not a score"),
    ("max(mono)", "'max(mono)' is not a score"),
    ("multi:", "constraint '' should look like METRIC>=zero_shot"),
    ("multi:mono=zero_shot", "constraint 'mono=zero_shot' should look like"),
    ("multi:mAP>=zero_shot", "unknown metric 'mAP'"),
    ("multi:mono>=baseline", "compare with zero_shot or a number, not 'baseline'"),
])
def test_bad_criteria_are_one_line_naming_select(text: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        parse_criterion(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def row(cell: str, alpha, seed: int, mono: float, multi: float, strategy: str = "hybrid", config: str = "tiny") -> dict:
    lr = "" if strategy == ZERO_SHOT else cell
    return {"config": config, "cell": "" if strategy == ZERO_SHOT else f"lr{cell}", "strategy": strategy, "alpha": alpha,
            "seed": seed, "run_dir": "/none", "train.lr": lr, "mono_map": mono, "cross_map": 0.1, "multi_map": multi,
            "rank_spread": 1.0, "own_language_first": 0.9}


ZERO = row("", "", 0, 0.80, 0.20, ZERO_SHOT)


def test_the_highest_mean_over_seeds_wins() -> None:
    rows = [ZERO, row("1", 0.5, 0, 0.9, 0.30), row("1", 0.5, 1, 0.9, 0.50), row("2", 0.5, 0, 0.9, 0.45), row("2", 0.5, 1, 0.9, 0.45)]
    cands = candidates(rows, parse_criterion("multi"))
    assert [(c.cell, round(c.score, 6)) for c in cands] == [("lr1", 0.4), ("lr2", 0.45)]
    assert choose(cands).cell == "lr2"


def test_ties_go_to_the_first_cell_in_the_sweep_order() -> None:
    rows = [row("1", 0.5, 0, 0.9, 0.4), row("2", 0.5, 0, 0.9, 0.4 + 1e-12), row("3", 0.5, 0, 0.9, 0.4)]
    assert choose(candidates(rows, parse_criterion("multi"))).cell == "lr1"
    assert choose(candidates(rows[::-1], parse_criterion("multi"))).cell == "lr3"  # the order decides, not the name
    rows[1]["multi_map"] = 0.4 + 1e-6  # more than a tie
    assert choose(candidates(rows, parse_criterion("multi"))).cell == "lr2"


def test_a_constraint_against_the_zero_shot_baseline_rules_out_the_best_multilingual_cell() -> None:
    rows = [ZERO, row("1", 0.5, 0, 0.70, 0.60), row("2", 0.5, 0, 0.81, 0.40), row("3", 0.5, 0, 0.80, 0.35)]
    cands = candidates(rows, parse_criterion("multi:mono>=zero_shot"))
    assert cands[0].problems == ["mono>=zero_shot fails (0.7000 vs 0.8000)"] and not cands[0].eligible
    assert choose(cands).cell == "lr2"  # 0.80 >= 0.80 holds too, but lr2 scores higher
    assert choose(candidates(rows, parse_criterion("multi"))).cell == "lr1"  # unconstrained: the best multi
    assert choose(candidates(rows, parse_criterion("multi:mono>0.9"))) is None
    no_baseline = candidates(rows[1:], parse_criterion("multi:mono>=zero_shot"))
    assert all(c.problems == ["mono>=zero_shot: no zero-shot result"] for c in no_baseline)


def test_a_cell_with_a_run_missing_is_not_chosen_and_pooling_averages_alphas() -> None:
    nan = float("nan")
    rows = [row("1", 0.0, 0, 0.9, 0.9), row("1", 1.0, 0, 0.9, nan), row("2", 0.0, 0, 0.9, 0.5), row("2", 1.0, 0, 0.9, 0.3)]
    per_alpha = candidates(rows, parse_criterion("multi"))
    assert [(c.cell, c.alpha) for c in per_alpha] == [("lr1", 0.0), ("lr1", 1.0), ("lr2", 0.0), ("lr2", 1.0)]
    assert choose(per_alpha).alpha == 0.0 and choose(per_alpha).cell == "lr1"
    pooled = candidates(rows, parse_criterion("multi"), pool_alphas=True)
    assert pooled[0].problems == ["1 of 2 runs without the criterion's metrics"]
    assert choose(pooled).cell == "lr2" and choose(pooled).alpha is None and choose(pooled).score == pytest.approx(0.4)


def test_best_yaml_with_the_split_is_the_chosen_cells_config(tmp_path: Path) -> None:
    """What the chosen job ran (its config, as ``TrainJob`` loads it) is what best.yaml's
    header command loads; best.yaml alone is --final's first job."""
    out = tmp_path / "sweep"
    spec = SweepSpec(configs=[TINY], alphas=[0.5, 1.0], seeds=[3], out=out, overrides=SMALL,
                     grid=parse_grid(["train.lr=1e-3,3e-3", "model.dropout=0.0,0.1"]), zero_shot=True)
    spec.split[TINY] = make_split(TINY, SMALL, 0.2, out).overrides
    rows = [{"config": "tiny", "cell": r.cell.name, "strategy": r.strategy, "alpha": "" if r.alpha is None else r.alpha,
             "seed": r.seed, "run_dir": str(r.run_dir), **dict.fromkeys(spec.grid.keys, ""), **dict(r.cell.settings),
             "mono_map": 0.8, "cross_map": 0.1, "multi_map": 0.3 + 0.1 * (r.run_dir.name == "tiny-lr3e-3-dropout0.0-alpha1-seed3"),
             "rank_spread": 1.0, "own_language_first": 0.9} for r in spec.runs()]
    chosen, table = select(spec, rows, parse_criterion("multi:mono>=zero_shot"))
    assert (chosen.cell, chosen.alpha) == ("lr3e-3-dropout0.0", 1.0)
    assert "| **yes** | tiny | lr3e-3-dropout0.0 | 1 | 1 |" in table and (out / "selection.md").read_text() == table
    job = next(r for r in spec.runs() if r.run_dir.name == "tiny-lr3e-3-dropout0.0-alpha1-seed3")
    text = (out / "best.yaml").read_text()
    again = shlex.split(next(line for line in text.splitlines() if line.startswith("#   hbt train") and "run.dir" in line)[4:])
    assert load_config(again[3], again[4:]).to_dict() == load_config(job.config, list(job.overrides)).to_dict()
    final = final_spec(spec, chosen)
    first = next(r for r in final.runs() if r.alpha is not None)
    best = load_config(out / "best.yaml")
    assert (best.train.lr, best.model.dropout, best.train.alpha, best.run.seed) == (3e-3, 0.0, 1.0, 3)
    assert best.run.dir == str(first.run_dir) and best.data.holdout_titles == 0.2  # the test split, no validation hold-out
    assert best.eval.data is None and [r.run_dir.name for r in final.runs()] == ["best-zero-shot", "best-alpha1-seed3"]
    assert load_config(first.config, list(first.overrides)).to_dict() == best.to_dict()
    select(spec, rows, parse_criterion("multi:mono>=zero_shot"), final_seeds=[5, 6])  # --final-seeds: tune on 3, test on 5 and 6
    assert [r.run_dir.name for r in final_spec(spec, chosen, [5, 6]).runs()][1:] == ["best-alpha1-seed5", "best-alpha1-seed6"]
    assert load_config(out / "best.yaml").run.seed == 5
    select(spec, rows, parse_criterion("multi:mono>=zero_shot"), final_alphas=[0.0, 1.0])  # --final-alphas 0,1
    assert [r.run_dir.name for r in final_spec(spec, chosen, None, [0.0, 1.0]).runs()][1:] == ["best-alpha1-seed3", "best-alpha0-seed3"]
    assert load_config(out / "best.yaml").train.alpha == 1.0  # best.yaml stays at the chosen alpha, not the first given


def test_pooled_alphas_best_yaml_is_the_first_alphas_final_and_validation_job(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    spec = SweepSpec(configs=[TINY], alphas=[0.0, 1.0], seeds=[0], out=out, overrides=SMALL, grid=parse_grid(["train.lr=1e-3,3e-3"]))
    spec.split[TINY] = make_split(TINY, SMALL, 0.2, out).overrides
    rows = [row(r.cell.name[2:], r.alpha, 0, 0.9, 0.3 if "1e-3" in r.cell.name else 0.2) for r in spec.runs()]
    chosen, _ = select(spec, rows, parse_criterion("multi"), pool_alphas=True)
    assert (chosen.cell, chosen.alpha) == ("lr1e-3", None)
    final = final_spec(spec, chosen)
    assert [r.run_dir.name for r in final.runs()] == ["best-alpha0-seed0", "best-alpha1-seed0"]  # every alpha
    best = load_config(out / "best.yaml")
    assert best.to_dict() == load_config(final.runs()[0].config, list(final.runs()[0].overrides)).to_dict()
    again = shlex.split(next(line for line in (out / "best.yaml").read_text().splitlines()
                             if line.startswith("#   hbt train") and "run.dir" in line)[4:])
    job = next(r for r in spec.runs() if r.run_dir.name == "tiny-lr1e-3-alpha0-seed0")
    assert load_config(again[3], again[4:]).to_dict() == load_config(job.config, list(job.overrides)).to_dict()


def test_the_validation_split_holds_out_no_test_title_and_evaluates_only_its_own(tmp_path: Path) -> None:
    split = make_split(TINY, SMALL, 0.2, tmp_path)
    assert len(split.test) == 8 and len(split.validation) == 6 and split.training == 26  # 40 topics: 8 test, 0.2 of 32
    assert not set(split.test) & set(split.validation)
    cfg = load_config(TINY, [*SMALL, *split.overrides, f"data.cache_dir={tmp_path}/cache"])
    data = training_data(cfg)
    trained = set(data.column("title", data.rows))
    assert len(trained) == 26 and not trained & (set(split.test) | set(split.validation))
    evaluated = evaluation_set(cfg, data)
    plain = load_config(TINY, SMALL)
    test_set = evaluation_set(plain, training_data(plain))
    items = {q.item_id for qs in evaluated.queries.values() for q in qs}
    test_items = {q.item_id for qs in test_set.queries.values() for q in qs}
    assert len(items) == 6 * 12 and not items & test_items  # 480 items over 40 topics: the 6 validation topics' 72
    with pytest.raises(InputError, match="--validation-titles: holds out all 32 training title"):
        make_split(TINY, SMALL, ",".join(f"topic-{n:03d}" for n in range(40) if f"topic-{n:03d}" not in split.test), tmp_path)
    with pytest.raises(InputError, match="--validation-titles: unknown title"):
        make_split(TINY, SMALL, split.test[0], tmp_path)  # a test title cannot be a validation title


@pytest.mark.parametrize("args, needle", [
    (["--select", "multi"], "hbt: error: --select: needs --validation-titles: a criterion on the test set would tune on"),
    (["--validation-titles", "0.2", "--select", "best"], "hbt: error: --select: 'best' is not a score"),
    (["--final"], "hbt: error: --final: needs --select CRITERION"),
    (["--pool-alphas"], "hbt: error: --pool-alphas: needs --select"),
    (["--final-seeds", "0,1"], "hbt: error: --final-seeds: needs --select"),
    (["--validation-titles", "0.2", "--select", "multi", "--final-seeds", "0,x"], "hbt: error: --final-seeds: not an integer: 'x'"),
    (["--final-alphas", "0,1"], "hbt: error: --final-alphas: needs --select"),
    (["--validation-titles", "0.2", "--select", "multi", "--final-alphas", "0,2"], "hbt: error: --final-alphas: give alphas in [0, 1]"),
    (["--validation-titles", "1.5", "--select", "multi"], "hbt: error: --validation-titles: a fraction must be in (0, 1)"),
    (["--grid", "train.alpha=0.3,0.7"], "hbt: error: --grid: train.alpha is set by the sweep itself"),
    (["--grid", "train.lr=1e-4,1e-4"], "hbt: error: --grid: train.lr: 1e-4 and 1e-4 are the same value"),
    (["--grid", "train.temprature=0.01"], "hbt: error: --grid: unknown config key 'train.temprature' (did you mean train.temperature?)"),
    (["--validation-titles", "0.2", "--grid", "eval.data=a,b"], "hbt: error: --grid: eval.data is set by --validation-titles"),
])
def test_the_command_line_refuses_before_anything_is_submitted(tmp_path: Path, args: list[str], needle: str) -> None:
    """Through the parser and ``hbt sweep``'s command, as :func:`hbt.cli.main` runs it
    (main prints the InputError as ``hbt: error: ...`` and exits 2)."""
    out = tmp_path / "sweep"
    parsed = cli.build_parser().parse_args(["sweep", "--config", TINY, "--alphas", "0.5", "--executor", "local",
                                            "--out", str(out), *args, *SMALL])
    with pytest.raises(InputError) as e:
        parsed.run(parsed)
    assert f"hbt: error: {e.value}".startswith(needle) and "\n" not in str(e.value)
    assert not (out / "submitit").exists()
