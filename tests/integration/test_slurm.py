"""Real Slurm (the local clusters of slurm/local/up.sh, started by .ci/run): ``sbatch
slurm/train.sh`` with 2 CPU tasks, USR1 pre-emptions that requeue, resume and finish with
the step count of an uninterrupted run, a killed task, and a two-node job (two slurmd on
loopback addresses; its SLURM_CONF in HBT_SLURM2_CONF) whose losses equal one process's.
Every wait has a timeout. Skips without Slurm, unless HBT_REQUIRE_CLUSTER=1 (CI) makes
that a failure."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (ENDS_WITHIN_S, LOST, ROOT, SLURM_MISSING, SMALL, kill_rank_1_mid_training, losses, need_cluster,
                           slurm_here, steps_per_epoch)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]  # one after another: one Slurm, timed waits
CPU = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


@pytest.fixture(autouse=True)
def slurm() -> None:
    need_cluster(slurm_here(), *SLURM_MISSING)


def sbatch(*args: str, timeout: float = 300, conf: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_CONF": conf} if conf else None
    return subprocess.run(["sbatch", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def wait_gone(job: str, timeout: float = 300, conf: str | None = None) -> None:
    env = {**os.environ, "SLURM_CONF": conf} if conf else None
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=env).stdout.strip():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env)
            pytest.fail(f"job {job} still queued or running after {timeout} s")
        time.sleep(0.5)


def steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sbatch_train_two_tasks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = sbatch("--wait", *CPU, f"--output={tmp_path}/job.out", "slurm/train.sh", "configs/tiny.yaml", f"run.dir={run}",
                 f"data.cache_dir={tmp_path}/cache", "train.epochs=1")
    assert out.returncode == 0, out.stderr + (tmp_path / "job.out").read_text()
    assert "2 tasks" in (tmp_path / "job.out").read_text()
    logs = sorted(p.name for p in (run / "logs").iterdir())
    assert len(logs) == 2 and logs[0].endswith("-0.log") and logs[1].endswith("-1.log")
    assert (run / "eval.jsonl").exists() and (run / "model" / "model.safetensors").exists()
    assert max(steps(run)) == steps_per_epoch(["--config", "configs/tiny.yaml"])


def test_usr1_requeues_and_resumes_to_the_same_final_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["configs/tiny.yaml", f"run.dir={run}", f"data.cache_dir={tmp_path}/cache", "train.epochs=3", "eval.every_epoch=false"]
    out = sbatch("--parsable", *CPU, f"--output={tmp_path}/job.out", "slurm/train.sh", *args)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").exists() and len(steps(run)) >= 5):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_gone(job)
    log = (tmp_path / "job.out").read_text()
    assert "requeueing job" in log and "(restart 1)" in log, log
    assert max(steps(run)) == 3 * steps_per_epoch(["--config", *args[:1], *args[1:]])
    assert "resumed from" in "".join(p.read_text() for p in (run / "logs").iterdir())


def test_sbatch_eval_and_mine(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = sbatch("--wait", *CPU, f"--output={tmp_path}/train.out", "slurm/train.sh", "configs/tiny.yaml", f"run.dir={run}",
                 f"data.cache_dir={tmp_path}/cache", "train.max_steps=5", "eval.settings=mono")
    assert out.returncode == 0, out.stderr
    ev = sbatch("--wait", *CPU, f"--output={tmp_path}/eval.out", "slurm/eval.sh", str(run / "model"),
                "synthetic:items=300,languages=3", "--out", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stderr + (tmp_path / "eval.out").read_text()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(metrics["cross"]) == 6 and metrics["summary"]["multi_map"] > 0
    mine = sbatch("--wait", *CPU, f"--output={tmp_path}/mine.out", "slurm/mine.sh", str(run / "model"),
                  "synthetic:items=300,languages=3", str(tmp_path / "mined"), "--k", "3")
    assert mine.returncode == 0, mine.stderr + (tmp_path / "mine.out").read_text()
    report = json.loads((tmp_path / "mined" / "mine.json").read_text())
    rows = (tmp_path / "mined" / "train.jsonl").read_text().splitlines()
    assert report["world_size"] == 2 and len(rows) == report["counts"]["written"] == 900


def test_usr1_during_start_up_requeues_and_the_job_finishes(tmp_path: Path) -> None:
    """The signal reaches the ranks while they load data and start DeepSpeed: they exit
    75 with nothing to save, the script requeues, and the restarted job trains to the end."""
    run = tmp_path / "run"
    args = ["configs/tiny.yaml", f"run.dir={run}", f"data.cache_dir={tmp_path}/cache", "train.max_steps=6", "eval.every_epoch=false"]
    out = sbatch("--parsable", *CPU, f"--output={tmp_path}/job.out", "slurm/train.sh", *args)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while not (run / "launch.json").exists():  # the ranks are up; data, model and DeepSpeed still ahead
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_gone(job)
    log = (tmp_path / "job.out").read_text()
    ranks = "".join(p.read_text() for p in (run / "logs").iterdir())
    assert "requeueing job" in log and "(restart 1)" in log, log + ranks
    assert "before training started" in ranks
    assert steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_killed_task_ends_the_job_with_one_line_naming_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["configs/tiny.yaml", f"run.dir={run}", f"data.cache_dir={tmp_path}/cache", "train.epochs=3",
            "train.checkpoint_every=3", "eval.every_epoch=false"]
    out = sbatch("--parsable", *CPU, f"--output={tmp_path}/job.out", "slurm/train.sh", *args)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    queued = lambda: bool(subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip())  # noqa: E731
    killed = kill_rank_1_mid_training(run, ("SLURM_PROCID",), queued)
    wait_gone(job, timeout=ENDS_WITHIN_S + 30)
    took = time.monotonic() - killed
    print(f"sbatch: task 1 SIGKILLed, job gone after {took:.1f} s")
    assert took <= ENDS_WITHIN_S
    rank0 = next(p for p in (run / "logs").iterdir() if p.name.endswith("-0.log")).read_text()
    ours = [line for line in rank0.splitlines() if line.startswith("hbt:") or "Traceback" in line]
    assert len(ours) == 1 and ours[0].startswith(LOST), rank0[-3000:]
    assert "requeueing" not in (tmp_path / "job.out").read_text()
    latest = (run / "checkpoints" / "latest").read_text()
    assert (run / "checkpoints" / latest / "fingerprint.json").exists()


@pytest.fixture
def two_nodes() -> str:
    conf = os.environ.get("HBT_SLURM2_CONF", "/tmp/hbt-slurm2/slurm.conf")
    need_cluster(Path(conf).exists(), f"no two-node cluster at {conf}", "HBT_SLURM_NODES=2 bash slurm/local/up.sh")
    return conf


TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


def test_two_nodes_share_the_contrastive_batch_and_match_one_process(tmp_path: Path, two_nodes: str, single_run: Path) -> None:
    """One task on each node, the contrastive batch split across them: the per-step
    losses of the one-process run (the ``single_run`` fixture, same settings)."""
    run = tmp_path / "run"
    out = sbatch("--wait", *TWO_NODES, f"--output={tmp_path}/job.out", "slurm/train.sh", "configs/tiny.yaml", f"run.dir={run}",
                 f"data.cache_dir={tmp_path}/cache", *SMALL, "model.dropout=0.0", "train.max_steps=12", conf=two_nodes)
    assert out.returncode == 0, out.stderr + (tmp_path / "job.out").read_text()
    assert "on n[1-2], 2 tasks" in (tmp_path / "job.out").read_text()
    assert json.loads((run / "launch.json").read_text())["world_size"] == 2
    got, reference = losses(run), losses(single_run)
    diff = max(abs(got[s] - reference[s]) for s in reference)
    print(f"two nodes vs one process: max per-step loss difference {diff:.2e} over {len(reference)} steps")
    assert got.keys() == reference.keys() and diff < 1e-4


def test_two_node_job_preempted_requeues_and_resumes(tmp_path: Path, two_nodes: str) -> None:
    run = tmp_path / "run"
    args = ["configs/tiny.yaml", f"run.dir={run}", f"data.cache_dir={tmp_path}/cache", *SMALL, "train.epochs=2",
            "eval.every_epoch=false"]
    out = sbatch("--parsable", *TWO_NODES, f"--output={tmp_path}/job.out", "slurm/train.sh", *args, conf=two_nodes)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").exists() and len(steps(run)) >= 5):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], check=True, env={**os.environ, "SLURM_CONF": two_nodes})
    wait_gone(job, conf=two_nodes)
    log = (tmp_path / "job.out").read_text()
    assert "requeueing job" in log and "(restart 1)" in log, log
    assert steps(run) == list(range(1, 2 * steps_per_epoch(["--config", *args[:1], *args[1:]]) + 1))
