"""A run directory that cannot be corrupted or lie, as users run ``hbt train``: a second
job on the same ``run.dir`` is refused while the first runs, and a checkpoint with any
file deleted or truncated is passed over on resume (named on stderr) for the previous
complete one, from which the run continues exactly."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, SMALL, assert_one_line_error, hold, losses, ok, overrides, run_hbt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("run_directory")]  # one worker: the module fixture is built once

STEPS = ["train.max_steps=8", "train.deepspeed=configs/deepspeed/zero1.json", "train.checkpoint_every=2", "train.keep_checkpoints=4", "model.dropout=0.1",
         "eval.every_epoch=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run of 8 steps with checkpoints at 2, 4, 6 and 8, under ZeRO 1 (its optimizer states are a file of their own)."""
    tmp = tmp_path_factory.mktemp("finished")
    ok(run_hbt("train", *overrides(tmp, "run", *STEPS)))
    return tmp / "run"


def resume(run: Path, finished: Path, *extra: str) -> subprocess.CompletedProcess:
    """``hbt train`` of the finished run's config on ``run`` (a copy of it), sharing its data cache."""
    return run_hbt("train", "--config", "configs/tiny.yaml", f"run.dir={run}", f"data.cache_dir={finished.parent / 'cache'}",
                   *SMALL, *STEPS, *extra)


def damaged_copy(finished: Path, tmp: Path, damage) -> Path:
    run = tmp / "run"
    shutil.copytree(finished, run)
    damage(run / "checkpoints" / "step-00000008")
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGES = {
    "rng deleted": lambda c: (c / "rng-rank0.pt").unlink(),
    "model states truncated": lambda c: truncate(next(c.rglob("mp_rank_00_model_states.pt"))),
    "optimizer states deleted": lambda c: next(c.rglob("*optim_states.pt")).unlink(),
    "fingerprint deleted": lambda c: (c / "fingerprint.json").unlink(),
    "latest names ..": lambda c: (c.parent / "latest").write_text(".."),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_passes_over_a_damaged_checkpoint_and_continues_exactly(finished: Path, tmp_path: Path, damage: str) -> None:
    run = damaged_copy(finished, tmp_path, DAMAGES[damage])
    out = resume(run, finished)
    ok(out)
    if damage != "latest names ..":  # a bad pointer only falls back to the newest complete checkpoint
        assert "skipping incomplete checkpoint step-00000008" in out.stderr, out.stderr
        assert "resumed from" in out.stderr and "step-00000006" in out.stderr, out.stderr
    assert losses(run) == losses(finished)


def test_a_checkpoint_without_manifest_is_resumed_only_by_name(finished: Path, tmp_path: Path) -> None:
    """A checkpoint written before manifests: auto passes over it; naming it loads it with a warning."""
    no_manifest = lambda c: (c / "manifest.json").unlink()  # noqa: E731
    auto = resume(damaged_copy(finished, tmp_path / "auto", no_manifest), finished)
    ok(auto)
    assert "step-00000008 (no manifest.json" in auto.stderr and "step-00000006" in auto.stderr, auto.stderr
    named = resume(damaged_copy(finished, tmp_path / "named", no_manifest), finished, "--resume", "step-00000008")
    ok(named)
    assert "warning:" in named.stderr and "loading it as named" in named.stderr, named.stderr


def test_no_complete_checkpoint_is_refused_not_restarted(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for folder in (run / "checkpoints").glob("step-*"):
        (folder / "manifest.json").unlink()
    out = resume(run, finished)
    assert_one_line_error(out, "--resume", "no complete checkpoint")


def test_a_second_job_on_a_busy_run_dir_is_refused(tmp_path: Path) -> None:
    busy = ["train.epochs=1000", "train.max_steps=100000"]  # far longer than the test: it is killed at the end
    first = subprocess.Popen([sys.executable, "-m", "hbt", "train", *overrides(tmp_path, "run", *busy)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "run" / ".lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline, "the first job never took the lock"
            time.sleep(0.2)
        second = run_hbt("train", *overrides(tmp_path, "run", *busy, "train.alpha=1.0"))
        assert_one_line_error(second, "run.dir", f"pid {first.pid} on {socket.gethostname()}")
        assert first.poll() is None, "the refused job must leave the running one alone"
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        first.kill()
        first.wait()


def test_a_refused_job_writes_nothing_into_the_run_dir(finished: Path, tmp_path: Path) -> None:
    """With the lock held (by a process that only holds it), ``hbt train`` on a finished run
    directory leaves every file as it was."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    holder = hold(run, 120)
    try:
        state = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        assert_one_line_error(resume(run, finished), "run.dir", f"pid {holder.pid}")
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == state
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_jobs_lock_is_free_at_once(tmp_path: Path) -> None:
    """The DataLoader worker forked while rank 0 held the lock kept it ~5 s after rank 0
    was SIGKILLed (a flock belongs to the open file, which the fork shared), so a rerun was
    refused naming a dead pid; now every forked child closes its copy."""
    from hbt.runlock import RunLock

    busy = ["train.epochs=1000", "train.max_steps=100000", "data.num_workers=1"]
    job = subprocess.Popen([sys.executable, "-m", "hbt", "train", *overrides(tmp_path, "run", *busy)],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # training: the worker is forked and running
            assert job.poll() is None and time.monotonic() < deadline, "the job never trained"
            time.sleep(0.2)
        job.kill()
        job.wait()
        RunLock(tmp_path / "run").acquire(wait_s=0)  # raises while any copy of the lock lives
    finally:
        job.kill()
        job.wait()


@pytest.mark.parametrize("refusal", ["changed input", "never"])
def test_a_refused_resume_leaves_the_run_dir_as_it_was(finished: Path, tmp_path: Path, refusal: str) -> None:
    """A resume refused after the lock was taken rewrote .lock and launch.json (a launch
    that never ran); now it is refused before DeepSpeed starts and puts .lock back."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in run.rglob("*")}
    extra = ["train.alpha=1.0"] if refusal == "changed input" else ["--resume", "never"]
    out = resume(run, finished, *extra)
    assert_one_line_error(out, *(["was written with other inputs", "train.alpha"] if refusal == "changed input" else ["--resume"]))
    assert {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in run.rglob("*")} == before


def test_a_checkpoint_file_overwritten_at_its_size_is_one_line(finished: Path, tmp_path: Path) -> None:
    """The manifest holds sizes, so a file zeroed in place passes it; loading it was a
    KeyError traceback from torch.load, now one line naming the checkpoint."""
    def zero(c: Path) -> None:
        rng = c / "rng-rank0.pt"
        rng.write_bytes(bytes(rng.stat().st_size))

    out = resume(damaged_copy(finished, tmp_path, zero), finished)
    assert_one_line_error(out, "step-00000008: cannot be loaded", "delete it to resume from the one before")
