"""submitit job arrays on the real local Slurm and the LocalExecutor fallback; table, CSV
and plot at the end; a tiny grid chosen on a validation split, both ways (README's first
run, a local sweep, is tests/integration/test_first_run.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import shlex

import pytest
import yaml

from hbt.config import load_config
from hbt.data import load_corpus
from hbt.train import training_data
from tests.helpers import ROOT, SLURM_MISSING, hbt_command, need_cluster, run_hbt, slurm_here

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]  # one after another: one Slurm, timed waits
SMALL = ["data.train=synthetic:items=480,languages=3,seed=3", "train.batch_size=16", "train.epochs=1",
         "model.tiny.vocab_size=2000", "eval.settings=mono,cross,multi"]


def rows(out: Path) -> list[dict]:
    with (out / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def slurm() -> None:
    """Skip without a local Slurm, fail under CI's HBT_REQUIRE_CLUSTER=1."""
    need_cluster(slurm_here(), *SLURM_MISSING)


def test_local_executor_two_task_job_and_bad_strategy(tmp_path: Path) -> None:
    """A 2-task job gets a 2-rank torch.distributed world from submitit's environment helper;
    the zero-shot row evaluates the untrained model; --max-parallel 1 runs one job at a time."""
    out = tmp_path / "local"
    result = run_hbt("sweep", "--config", "configs/tiny.yaml", "--alphas", "0.5", "--zero-shot", "--executor", "local",
                     "--max-parallel", "1", "--out", str(out), "--tasks-per-node", "2", "--wait-timeout", "300", *SMALL, f"data.cache_dir={tmp_path}/cache", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    zero, hybrid = rows(out)
    assert (zero["strategy"], zero["alpha"], hybrid["strategy"], hybrid["alpha"]) == ("zero-shot", "", "hybrid", "0.5")
    steps = [json.loads((Path(r["run_dir"]) / "eval.jsonl").read_text())["step"] for r in (zero, hybrid)]
    assert steps[0] == 0 < steps[1] and float(zero["multi_map"]) > 0  # the untrained model, evaluated
    table = (out / "sweep.md").read_text()
    assert "### tiny" in table and "| zero-shot | - | 1 |" in table and "| hybrid | 0.5 | 1 |" in table
    first_done = (Path(zero["run_dir"]) / "eval.jsonl").stat().st_mtime
    assert first_done <= (Path(hybrid["run_dir"]) / "launch.json").stat().st_mtime  # --max-parallel 1: one wave after the other
    assert result.stdout.count("submitted 1 jobs") == 2
    launch = json.loads((Path(hybrid["run_dir"]) / "launch.json").read_text())
    assert launch["world_size"] == 2 and launch["launcher"] == "torchrun"
    bad = run_hbt("sweep", "--config", "configs/tiny.yaml", "--strategies", "hybird", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown strategy 'hybird'" in bad.stderr


def test_submitit_timeout_signal_checkpoints_requeues_and_resumes(tmp_path: Path, slurm: None) -> None:
    """submitit's time-out signal (USR2) reaches a sweep job mid-training with periodic
    checkpoints far away (checkpoint_every 1000): hbt checkpoints at the step boundary,
    submitit requeues, and the job resumes there, not from scratch, and finishes."""
    out = tmp_path / "sweep"
    cmd = hbt_command("sweep", "--config", "configs/tiny.yaml", "--alphas", "0.5", "--executor", "slurm",
                      "--out", str(out), "--wait-timeout", "400", *SMALL, "train.epochs=3", "train.checkpoint_every=1000",
                      "eval.every_epoch=false", f"data.cache_dir={tmp_path}/cache")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = out / "tiny-alpha0.5-seed0"
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    job = subprocess.run(["squeue", "-h", "-n", "hbt-sweep", "-o", "%A"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    stdout, stderr = proc.communicate(timeout=450)
    assert proc.returncode == 0, stderr[-3000:]
    history = sorted((run_dir / "config-history").glob("*.yaml"))
    assert len(history) == 2, "the job was not requeued"
    resumed_from = yaml.safe_load(history[1].read_text())["resumed_from"]
    assert resumed_from is not None and int(resumed_from.split("-")[1]) >= 5  # the signal's checkpoint, not step 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and len(rows(out)) == 1


SYNTHETIC = "synthetic:items=480,languages=3,seed=3"


def titles_of(item_ids: set[str]) -> set[str]:
    corpus = load_corpus(SYNTHETIC)
    return {item.title for item in corpus.items if item.id in item_ids}


def evaluated_titles(run_dir: Path) -> set[str]:
    """The titles of the queries the run's last evaluation scored (its multi.run)."""
    run = next((run_dir / "eval").glob("*/multi.run")).read_text().splitlines()
    return titles_of({line.split()[0].split("/")[0] for line in run})


def trained_titles(run_dir: Path) -> set[str]:
    """The titles of the rows the run trained on, read as training reads them."""
    data = training_data(load_config(run_dir / "config.yaml"))
    return set(data.column("title", data.rows))


def tiny_grid(tmp_path: Path, executor: str) -> None:
    """2 cells x 1 seed, chosen on a validation split with a zero-shot constraint, then
    the chosen cell trained on all the training titles and tested (--final)."""
    out = tmp_path / "grid"
    tick = time.monotonic()
    result = run_hbt("sweep", "--config", "configs/tiny.yaml", "--grid", "train.lr=1e-3,3e-3", "--alphas", "0.5",
                     "--executor", executor, "--out", str(out), "--validation-titles", "0.2",
                     "--select", "multi:mono>=zero_shot", "--final", "--wait-timeout", "400", *SMALL,
                     "eval.every_epoch=false", f"data.cache_dir={tmp_path}/cache", timeout=500)
    print(f"tiny grid, {executor}: {time.monotonic() - tick:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    table = rows(out)
    assert [r["cell"] for r in table] == ["", "lr1e-3", "lr3e-3"] and [r["train.lr"] for r in table] == ["", "1e-3", "3e-3"]
    assert [Path(r["run_dir"]).name for r in table] == ["tiny-zero-shot", "tiny-lr1e-3-alpha0.5-seed0", "tiny-lr3e-3-alpha0.5-seed0"]
    markdown = (out / "sweep.md").read_text()
    assert "### tiny-lr1e-3 (train.lr=1e-3)" in markdown and markdown.count("| zero-shot | - | 1 |") == 2
    assert (out / "heatmaps-tiny-lr1e-3.png").exists() and (out / "heatmaps-tiny-lr3e-3.png").exists()

    # the choice: the best multilingual mAP among the cells at least as good as zero-shot within a language
    zero = table[0]
    allowed = [r for r in table[1:] if float(r["mono_map"]) >= float(zero["mono_map"])]
    expected = max(allowed, key=lambda r: float(r["multi_map"]))  # max keeps the first of ties, as the selection does
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["lr"] == float(expected["train.lr"]) and best["train"]["alpha"] == 0.5
    selection = (out / "selection.md").read_text()
    assert f"| **yes** | tiny | {expected['cell']} | 0.5 | 1 |" in selection and selection in result.stdout

    # best.yaml reproduces the chosen cell: its header's command loads the job's own config
    header = next(line for line in (out / "best.yaml").read_text().splitlines() if line.startswith("#   hbt train") and "run.dir" in line)
    again = shlex.split(header[4:])
    chosen_dir = Path(expected["run_dir"])
    assert load_config(again[3], again[4:]).to_dict() == yaml.safe_load((chosen_dir / "config.yaml").read_text())

    # validation titles: out of every cell's training, the only ones scored; the test titles: in neither
    validation = set((out / "validation" / "tiny-validation.txt").read_text().split())
    test = set(training_data(load_config("configs/tiny.yaml", [*SMALL, f"data.cache_dir={tmp_path}/cache"])).held_out.titles)
    assert len(validation) == 6 and len(test) == 8 and not validation & test
    for r in table:
        run_dir = Path(r["run_dir"])
        assert not trained_titles(run_dir) & (validation | test)
        assert evaluated_titles(run_dir) == validation
    # --final: best.yaml on all the training titles (the validation ones too), scored on the test titles
    final = rows(out / "final")
    assert [Path(r["run_dir"]).name for r in final] == ["best-zero-shot", "best-alpha0.5-seed0"]
    final_dir = Path(final[1]["run_dir"])
    assert validation <= trained_titles(final_dir) and not trained_titles(final_dir) & test
    assert evaluated_titles(final_dir) == test


def test_tiny_grid_chosen_on_validation_titles_locally(tmp_path: Path) -> None:
    tiny_grid(tmp_path, "local")


def test_tiny_grid_chosen_on_validation_titles_on_slurm(tmp_path: Path, slurm: None) -> None:
    tiny_grid(tmp_path, "slurm")
