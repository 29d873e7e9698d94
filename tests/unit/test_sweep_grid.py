"""``hbt sweep --grid``: the axes read and refused up front (hbt/sweep_grid.py), their
cartesian product with configs x alphas x seeds (hbt.sweep.SweepSpec.runs), the run
names that say the cell, and the report's tables grouped by cell."""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.errors import InputError
from hbt.sweep import ZERO_SHOT, SweepSpec, zero_shot_of
from hbt.sweep_grid import Axis, Grid, check_split_keys, check_values, config_keys, parse_grid, value_token
from hbt.sweep_report import markdown_tables

TINY = "configs/tiny.yaml"
KEYS = sorted(k for k, leaf in config_keys().items() if leaf and k not in ("train.alpha", "run.seed", "run.dir"))


def test_values_are_override_texts_in_order_and_lists_carry_commas() -> None:
    grid = parse_grid(["train.lr=1e-4, 3e-4", "eval.settings=['mono,cross', multi]", "model.query_prefix=['query: ', '']"])
    assert [a.values for a in grid.axes] == [("1e-4", "3e-4"), ("mono,cross", "multi"), ("'query: '", "''")]
    assert grid.cells()[0].overrides() == ("train.lr=1e-4", "eval.settings=mono,cross", "model.query_prefix='query: '")
    check_values(grid, [TINY], [])  # each value is one the config takes (1e-4 is YAML's string; the config reads a float)
    from hbt.config import load_config

    cfg = load_config(TINY, list(grid.cells()[-1].overrides()))
    assert (cfg.train.lr, cfg.eval.settings, cfg.model.query_prefix) == (3e-4, "multi", "")


@pytest.mark.parametrize("options, overrides, needle", [
    (["train.lrr=1e-4"], [], "--grid: unknown config key 'train.lrr' (did you mean train.lr?)"),
    (["model.tiny=1,2"], [], "--grid: model.tiny is a section"),
    (["train.alpha=0.3,0.7"], [], "--grid: train.alpha is set by the sweep itself; give its values with --alphas or --strategies"),
    (["run.seed=0,1"], [], "give its values with --seeds"),
    (["run.dir=a,b"], [], "give its values with --out"),
    (["train.lr="], [], "--grid: train.lr has no values"),
    (["train.lr=1e-4,,3e-4"], [], "--grid: train.lr: an empty value in '1e-4,,3e-4'"),
    (["train.lr=1e-4", "train.lr=3e-4"], [], "--grid: train.lr is given twice"),
    (["train.lr"], [], "--grid: 'train.lr' should look like KEY=V1,V2,..."),
    (["train.lr=1e-4,3e-4"], ["train.lr=1e-3"], "--grid: train.lr is also an override for every job"),
    (["eval.settings=[mono, [cross]]"], [], "--grid: eval.settings: a [...] list holds scalar values only"),
])
def test_bad_axes_are_refused_naming_grid(options: list[str], overrides: list[str], needle: str) -> None:
    with pytest.raises(InputError) as e:
        parse_grid(options, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("option, needle", [
    ("train.lr=1e-4,0.0001", "--grid: train.lr: 1e-4 and 0.0001 are the same value (0.0001); give each once"),
    ("train.lr=1e-4,fast", "--grid: train.lr=fast (tiny.yaml): should be float, got str 'fast'"),
    ("train.epochs=1,0", "--grid: train.epochs=0 (tiny.yaml): must be >= 1, got 0"),
    ("model.tiny.heads=4,3", "--grid: model.tiny.heads=3 (tiny.yaml): must divide model.tiny.hidden_size (64)"),
    ("train.precision=fp32,fp8", "--grid: train.precision=fp8 (tiny.yaml): must be one of"),
])
def test_values_the_config_refuses_are_named_with_grid(option: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        check_values(parse_grid([option]), [TINY], [])
    assert needle in str(e.value)


def test_a_validation_split_refuses_a_grid_over_its_own_keys() -> None:
    check_split_keys(parse_grid(["train.lr=1e-4,3e-4"]))
    with pytest.raises(InputError, match="--grid: data.holdout_titles is set by --validation-titles"):
        check_split_keys(parse_grid(["data.holdout_titles=0.1,0.2"]))


def test_names_say_the_cell_and_zero_shot_runs_vary_only_outside_train() -> None:
    spec = SweepSpec(configs=[TINY], alphas=[0.0, 1.0], seeds=[0, 1], out=Path("/o"), zero_shot=True,
                     grid=parse_grid(["train.lr=1e-4,3e-4", "model.dropout=0.0,0.1"]))
    names = [run.run_dir.name for run in spec.runs()]
    assert names[:2] == ["tiny-dropout0.0-zero-shot", "tiny-dropout0.1-zero-shot"]
    assert names[2:6] == ["tiny-lr1e-4-dropout0.0-alpha0-seed0", "tiny-lr1e-4-dropout0.0-alpha0-seed1",
                          "tiny-lr1e-4-dropout0.0-alpha1-seed0", "tiny-lr1e-4-dropout0.0-alpha1-seed1"]
    assert len(names) == 2 + 2 * 2 * 2 * 2 and len(set(names)) == len(names)
    run = spec.runs()[2]
    assert run.overrides[:2] == ("train.lr=1e-4", "model.dropout=0.0") and run.overrides[-2:] == ("train.alpha=0.0", "run.seed=0")
    assert "train.max_steps=0" in spec.runs()[0].overrides and "train.lr=1e-4" not in spec.runs()[0].overrides
    # without a grid the names are what they always were
    plain = SweepSpec(configs=[TINY], alphas=[0.5], seeds=[0], out=Path("/o"), zero_shot=True)
    assert [r.run_dir.name for r in plain.runs()] == ["tiny-zero-shot", "tiny-alpha0.5-seed0"]


def test_keys_sharing_a_last_part_are_named_in_full_and_paths_by_their_last_part() -> None:
    grid = Grid((Axis("train.batch_size", ("16",)), Axis("eval.batch_size", ("8",)),
                 Axis("model.name", ("../shared/models/me5-small/", "tiny"))))
    assert [c.name for c in grid.cells()] == ["train.batch_size16-eval.batch_size8-nameme5-small",
                                              "train.batch_size16-eval.batch_size8-nametiny"]


axes = st.lists(st.tuples(st.sampled_from(KEYS), st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3, unique=True)),
                max_size=3, unique_by=lambda kv: kv[0])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(axes=axes, configs=st.integers(1, 2), alphas=st.integers(1, 3), seeds=st.integers(1, 2), zero_shot=st.booleans())
def test_runs_are_the_cartesian_product_with_unique_names_that_say_the_cell(
        axes: list[tuple[str, list[str]]], configs: int, alphas: int, seeds: int, zero_shot: bool) -> None:
    grid = Grid(tuple(Axis(k, tuple(v)) for k, v in axes))
    spec = SweepSpec(configs=[f"c{n}/cfg{n}.yaml" for n in range(configs)], alphas=[a / 4 for a in range(alphas)],
                     seeds=list(range(seeds)), out=Path("/o"), zero_shot=zero_shot, grid=grid)
    runs = spec.runs()
    cells = math.prod(len(v) for _, v in axes)
    untrained = math.prod(len(v) for k, v in axes if not k.startswith("train."))
    assert len(runs) == configs * (cells * alphas * seeds + (untrained if zero_shot else 0))
    assert len({r.run_dir for r in runs}) == len(runs)  # names unique
    trained = [r for r in runs if r.alpha is not None]
    wanted = {(c, cell, a, s) for c, cell, a, s in product(spec.configs, product(*[[(k, x) for x in v] for k, v in axes]),
                                                           spec.alphas, spec.seeds)}
    assert {(r.config, r.cell.settings, r.alpha, r.seed) for r in trained} == wanted
    for run in runs:
        name = run.run_dir.name
        assert name.startswith(Path(run.config).stem) and run.cell.name in name
        assert name.endswith(ZERO_SHOT if run.alpha is None else f"alpha{run.alpha:g}-seed{run.seed}")
        for key, value in run.cell.settings:  # each value, by its key, in the name
            assert grid.short(key) + value_token(value) in name
            assert f"{key}={value}" in run.overrides
        if run.alpha is None:
            assert all(not k.startswith("train.") for k, _ in run.cell.settings)


def _row(config: str, cell: str, strategy: str, alpha, seed: int, multi: float, **grid: str) -> dict:
    return {"config": config, "cell": cell, "strategy": strategy, "alpha": alpha, "seed": seed, "run_dir": "/none",
            **grid, "mono_map": 0.8, "cross_map": 0.2, "multi_map": multi, "rank_spread": 10.0, "own_language_first": 0.9}


def test_tables_are_grouped_by_cell_each_with_its_zero_shot_baseline() -> None:
    rows = [_row("tiny", "", ZERO_SHOT, "", 0, 0.1, **{"train.lr": ""}),
            _row("tiny", "lr1e-4", "hybrid", 0.5, 0, 0.3, **{"train.lr": "1e-4"}),
            _row("tiny", "lr1e-4", "hybrid", 0.5, 1, 0.5, **{"train.lr": "1e-4"}),
            _row("tiny", "lr3e-4", "hybrid", 0.5, 0, 0.6, **{"train.lr": "3e-4"})]
    assert zero_shot_of(rows[3], rows) is rows[0]
    tables = markdown_tables(rows)
    assert tables.count("### tiny-lr") == 2 and "### tiny-lr1e-4 (train.lr=1e-4)" in tables
    assert tables.count("| zero-shot | - | 1 |") == 2
    assert "| hybrid | 0.5 | 2 | 0.8000 ± 0.0000 | 0.2000 ± 0.0000 | 0.4000 ± 0.1414 |" in tables


def test_centred_figures_get_a_table_beside_the_plain_one_where_they_were_evaluated() -> None:
    """Runs evaluated with eval.debias=center carry centered_* figures (hbt.eval.debias):
    each group gets a second table of them; runs without them get none."""
    plain = [_row("tiny", "", ZERO_SHOT, "", 0, 0.1), _row("tiny", "", "hybrid", 0.5, 0, 0.3)]
    assert "centred" not in markdown_tables(plain)
    centred = [r | {"centered_mono_map": 0.7, "centered_cross_map": 0.3, "centered_multi_map": m, "centered_rank_spread": 5.0,
                    "centered_own_language_first": 0.6} for r, m in zip(plain, (0.25, 0.45))]
    tables = markdown_tables(centred)
    assert "#### tiny, centred (eval.debias=center)" in tables
    assert "| hybrid | 0.5 | 1 | 0.7000 | 0.3000 | 0.4500 | 5.0 | 0.6000 |" in tables
    assert "| hybrid | 0.5 | 1 | 0.8000 | 0.2000 | 0.3000 | 10.0 | 0.9000 |" in tables  # the plain table unchanged
