"""submitit job arrays on the real local Slurm and the LocalExecutor fallback; table, CSV
and plot at the end (README's first run, a local sweep, is tests/integration/test_first_run.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, hbt_command, run_hbt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]  # one after another: one Slurm, timed waits
SMALL = ["data.train=synthetic:items=480,languages=3,seed=3", "train.batch_size=16", "train.epochs=1",
         "model.tiny.vocab_size=2000", "eval.settings=mono,cross,multi"]


def rows(out: Path) -> list[dict]:
    with (out / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


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


def test_submitit_timeout_signal_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    """submitit's time-out signal (USR2) reaches a sweep job mid-training with periodic
    checkpoints far away (checkpoint_every 1000): hbt checkpoints at the step boundary,
    submitit requeues, and the job resumes there, not from scratch, and finishes."""
    if shutil.which("sbatch") is None or not os.environ.get("SLURM_CONF"):
        if os.environ.get("HBT_REQUIRE_CLUSTER") == "1":
            pytest.fail("HBT_REQUIRE_CLUSTER=1 but no Slurm here")
        pytest.skip("no Slurm here (slurm/local/up.sh)")
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
