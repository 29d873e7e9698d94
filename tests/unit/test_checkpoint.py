"""What a resume reads, in-process: the newest complete checkpoint when ``latest`` is
missing or points nowhere, and the fingerprint comparison that refuses changed inputs
(tests/integration/test_resume.py resumes real runs)."""

from __future__ import annotations

from pathlib import Path

from hbt.checkpoint import Checkpointer, write_manifest
from hbt.dist import detect
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
    assert differences(saved, now, auto_precision="fp32") == []
    assert differences(saved, now, auto_precision="bf16") == ["train.precision ('auto' -> 'fp32')"]
    assert differences(now, {**now, "config": {"train.precision": "bf16", "train.lr": 0.1}}, auto_precision="bf16") == \
        ["train.precision ('fp32' -> 'bf16')"]  # only a saved "auto" is read that way
