"""What a resume reads, in-process: the newest complete checkpoint when ``latest`` is
missing or points nowhere, the manifest that names every file of a checkpoint and its
size (a file deleted or truncated afterwards makes the checkpoint incomplete), and the
fingerprint comparison that refuses changed inputs (tests/integration/test_resume.py and
test_run_directory.py resume real runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbt.checkpoint import Checkpointer, incomplete, write_manifest
from hbt.dist import DistEnv, detect
from hbt.fingerprint import differences


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    ckpt = Checkpointer(root, keep=2, env=detect({}))
    assert ckpt.latest() is None
    for tag in ("step-00000004", "step-00000008", "tmp-step-00000012"):  # tmp-*: a write cut short
        (root / tag).mkdir(parents=True)
        (root / tag / "rng-rank0.pt").write_bytes(b"x")
        write_manifest(root / tag)  # complete, as Checkpointer.save leaves it (but for the rename)
    assert ckpt.latest() == "step-00000008"  # no pointer at all
    (root / "latest").write_text("step-00000012")  # names a directory that is gone
    assert ckpt.latest() == "step-00000008"
    (root / "latest").write_text("step-00000004")
    assert ckpt.latest() == "step-00000004" and ckpt.newest_before(8) == "step-00000004"


def test_a_saved_auto_precision_is_taken_as_what_auto_runs_as_here() -> None:
    """Fingerprints written before hbt resolved train.precision hold "auto"; it compares
    equal to what auto resolves to on this machine, and unequal to anything else."""
    saved = {"data": "d", "tokenizer": "t", "model": "m", "deepspeed": "z", "config": {"train.precision": "auto", "train.lr": 0.1}}
    now = {**saved, "config": {"train.precision": "fp32", "train.lr": 0.1}}
    assert differences(saved, now, auto_precision="fp32") == {}
    assert differences(saved, now, auto_precision="bf16") == {"train.precision": "train.precision ('auto' -> 'fp32')"}
    assert differences(now, {**now, "config": {"train.precision": "bf16", "train.lr": 0.1}}, auto_precision="bf16") == \
        {"train.precision": "train.precision ('fp32' -> 'bf16')"}  # only a saved "auto" is read that way


SINGLE = DistEnv(0, 1, 0, "127.0.0.1", 0, "single")
FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng-rank0.pt", "fingerprint.json")


def fake_checkpoint(root: Path, step: int) -> Path:
    """A checkpoint directory as :meth:`Checkpointer.save` leaves it (its files' content is
    beside the point here: only their presence and sizes are checked)."""
    folder = root / f"step-{step:08d}"
    folder.mkdir(parents=True)
    for n, name in enumerate(FILES):
        (folder / name).write_bytes(b"x" * (100 + n))
    write_manifest(folder)
    (root / "latest").write_text(folder.name)
    return folder


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_file_makes_resume_fall_back_to_the_previous_checkpoint(tmp_path: Path, name: str, damage: str) -> None:
    fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 4)
    if damage == "delete":
        (newest / name).unlink()
    else:
        (newest / name).write_bytes(b"x")
    reason = incomplete(newest)
    assert reason is not None and name in reason
    checkpoints = Checkpointer(tmp_path, keep=2, env=SINGLE)
    assert checkpoints.latest() == "step-00000002"
    assert checkpoints.skipped("step-00000002") == [f"step-00000004 ({reason})"]
    assert checkpoints.newest_before(10) == "step-00000002"


def test_a_missing_manifest_is_incomplete(tmp_path: Path) -> None:
    folder = fake_checkpoint(tmp_path, 2)
    (folder / "manifest.json").unlink()
    assert "no manifest.json" in incomplete(folder)
    assert Checkpointer(tmp_path, keep=2, env=SINGLE).latest() is None


@pytest.mark.parametrize("pointer", ["..", "../..", "step-00000009", "", "tmp-step-00000004"])
def test_latest_names_only_a_complete_checkpoint(tmp_path: Path, pointer: str) -> None:
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    (tmp_path / "latest").write_text(pointer)
    (tmp_path / "tmp-step-00000004").mkdir()
    assert Checkpointer(tmp_path, keep=2, env=SINGLE).latest() == "step-00000004"


def test_the_pointer_wins_over_a_newer_complete_checkpoint(tmp_path: Path) -> None:
    """After a diverged loss ``latest`` is pointed back at an older checkpoint on purpose."""
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    (tmp_path / "latest").write_text("step-00000002")
    assert Checkpointer(tmp_path, keep=2, env=SINGLE).latest() == "step-00000002"
