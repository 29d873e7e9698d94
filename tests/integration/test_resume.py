"""A requeued job can be trusted blindly: resume finds the newest complete checkpoint,
refuses changed inputs with one line, and a stop signal at any moment (start-up,
mid-evaluation, mid-checkpoint) ends in exit 75 with a state that resumes. What a resume
reads without running hbt (the newest complete checkpoint, fingerprints compared) is
tests/unit/test_checkpoint.py."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hbt.checkpoint import MANIFEST, write_manifest
from tests.helpers import ROOT, hbt_command, losses, ok, overrides, run_hbt, steps_per_epoch, torchrun, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume")]  # one worker: its module fixture is built once


def test_resume_auto_uses_a_complete_checkpoint_when_latest_points_nowhere(tmp_path: Path) -> None:
    args = overrides(tmp_path, "run", "train.max_steps=6", "train.checkpoint_every=3")
    ok(run_hbt("train", *args))
    full = losses(tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.rmtree(checkpoints / "step-00000006")  # 'latest' now names nothing
    out = run_hbt("train", *args)
    ok(out)
    assert f"resumed from {checkpoints / 'step-00000003'} at step 3" in out.stderr
    assert losses(tmp_path / "run") == pytest.approx(full, abs=1e-6)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("fp")
    args = overrides(tmp, "run", "train.max_steps=3", "train.checkpoint_every=3")
    ok(run_hbt("train", *args))
    return tmp, args


def refused(out: subprocess.CompletedProcess, launcher_exit: int = 2) -> str:
    """The one error line of a refused resume (torchrun reports a child's exit 2 as 1)."""
    assert out.returncode == launcher_exit, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(("hbt: error:", "[rank0]:"))]
    assert len(set(lines)) == 1 and lines[0].startswith("hbt: error: --resume: "), out.stderr[-2000:]  # every rank says the same
    return lines[0]


@pytest.mark.parametrize("change,named", [
    ("data.train=synthetic:items=600,languages=3,seed=2", "data"),
    ("train.lr=0.01", "train.lr (0.003 -> 0.01)"),
    ("model.max_passage_length=24", "model.max_passage_length (32 -> 24)"),
    ("train.alpha=1.0", "train.alpha (0.5 -> 1.0)"),
    ("train.chunk_tokens=auto", "train.chunk_tokens (None -> 'packed')"),  # what runs (auto on a CPU, this XLM-R encoder), not "auto"
])
def test_resume_refuses_changed_inputs(finished, change: str, named: str) -> None:
    _, args = finished
    line = refused(run_hbt("train", *args, change))
    assert f"changed: {named}" in line and "--accept-changes" in line


@pytest.mark.parametrize("change,named", [
    ("data.train=synthetic:items=600,languages=3,seed=2", "data"),
    ("model.max_passage_length=24", "model.max_passage_length (32 -> 24)"),
    ("train.alpha=1.0", "train.alpha (0.5 -> 1.0)"),
    ("train.grad_accum=2", "train.grad_accum (1 -> 2)"),
])
def test_accept_changes_still_refuses_what_cannot_change_mid_run(finished, change: str, named: str) -> None:
    """The batch sequence, the model and the optimizer's structure are fixed by the
    checkpoint: --accept-changes cannot let them through, and the line names them."""
    _, args = finished
    line = refused(run_hbt("train", *args, change, "train.lr=0.01", "--accept-changes"))
    assert f"cannot change mid-run: {named}" in line and "train.lr" not in line


def _param_groups(state: object) -> list[dict] | None:
    """The optimizer's param groups, wherever a stage's checkpoint nests them."""
    if isinstance(state, dict):
        if "param_groups" in state:
            return state["param_groups"]
        return next((g for g in map(_param_groups, state.values()) if g is not None), None)
    return None


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_accepted_changes_take_effect_from_the_next_step(tmp_path: Path, stage: int) -> None:
    """A 3-step run resumed with another lr, weight decay and step count applies, from step
    4 on, the rates of a run started with those values (not the old schedule's), and its
    optimizer holds the new weight decay, at each ZeRO stage's optimizer."""
    changes = ("train.max_steps=6", "train.lr=0.001", "train.weight_decay=0.05")
    zero = f"train.deepspeed=configs/deepspeed/zero{stage}.json"
    ok(run_hbt("train", *overrides(tmp_path, "fresh", zero, *changes)))
    args = overrides(tmp_path, "resumed", zero, "train.max_steps=3", "train.checkpoint_every=3")
    ok(run_hbt("train", *args))
    ok(run_hbt("train", *args, *changes, "--accept-changes"))
    rates = [{r["step"]: r["lr"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())}
             for run in ("fresh", "resumed")]
    assert [rates[1][s] for s in (4, 5, 6)] == [rates[0][s] for s in (4, 5, 6)]
    assert rates[1][3] != rates[0][3]  # steps 1-3 ran the old schedule
    saved = tmp_path / "resumed" / "checkpoints" / "step-00000006"
    files = sorted(saved.glob("*optim_states.pt")) or [saved / "mp_rank_00_model_states.pt"]
    group = _param_groups(torch.load(files[0], map_location="cpu", weights_only=False))[0]
    assert (group["weight_decay"], group["initial_lr"]) == (0.05, 0.001)


def test_a_checkpoint_of_this_hbt_without_its_fingerprint_is_refused(finished) -> None:
    """Its manifest says this hbt wrote it, and this hbt always writes a fingerprint: with
    the fingerprint gone (and the manifest rewritten so the checkpoint looks complete) its
    inputs cannot be checked, and resuming it is refused, not done unchecked."""
    tmp, args = finished
    fp_file = tmp / "run" / "checkpoints" / "step-00000003" / "fingerprint.json"
    manifest = fp_file.with_name(MANIFEST)
    original, original_manifest = fp_file.read_text(), manifest.read_text()
    fp_file.unlink()
    manifest.unlink()
    write_manifest(fp_file.parent)
    try:
        assert "has no fingerprint.json" in refused(run_hbt("train", *args, "train.alpha=1.0"))
    finally:
        fp_file.write_text(original)
        manifest.write_text(original_manifest)


def test_resume_refuses_changed_model_weights_tokenizer_and_world_size(finished) -> None:
    tmp, args = finished
    weights = tmp / "run" / "init" / "model.safetensors"  # the tiny preset's initial model
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        assert "changed: model" in refused(run_hbt("train", *args))
    finally:
        weights.write_bytes(original)
    tokenizer = tmp / "run" / "init" / "tokenizer.json"  # the same vocabulary, two pieces' ids swapped
    original = tokenizer.read_text(encoding="utf-8")
    tree = json.loads(original)
    vocab = tree["model"]["vocab"]
    a, b = sorted(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer.write_text(json.dumps(tree), encoding="utf-8")
    try:
        assert "changed: tokenizer" in refused(run_hbt("train", *args))
    finally:
        tokenizer.write_text(original, encoding="utf-8")
    line = refused(torchrun(2, "train", *args, "--accept-changes"), launcher_exit=1)  # refused even then
    assert "written by 1 rank(s), this run has 2" in line


def test_a_checkpoint_that_recorded_precision_auto_resumes_on_this_machine(finished) -> None:
    """A checkpoint of an older hbt (train.precision recorded as "auto") resumes with the
    same command on this CPU, where auto is fp32; asking for bf16 is refused, naming the key.
    Its manifest is rewritten with the edited fingerprint, so that the checkpoint stays
    complete and the fingerprint is all that differs."""
    tmp, args = finished
    fp_file = tmp / "run" / "checkpoints" / "step-00000003" / "fingerprint.json"
    manifest = fp_file.with_name(MANIFEST)
    original, original_manifest = fp_file.read_text(), manifest.read_text()
    tree = json.loads(original)
    assert tree["config"]["train.precision"] == "fp32"  # what ran, not "auto"
    tree["config"]["train.precision"] = "auto"
    fp_file.write_text(json.dumps(tree))
    manifest.unlink()  # written afresh, as Checkpointer.save writes it (a manifest present would list itself)
    write_manifest(fp_file.parent)
    try:
        out = run_hbt("train", *args)
        ok(out)
        assert "resumed from" in out.stderr
        assert "changed: train.precision ('auto' -> 'bf16-autocast')" in refused(run_hbt("train", *args, "train.precision=bf16"))
    finally:
        fp_file.write_text(original)
        manifest.write_text(original_manifest)


def test_a_bf16_checkpoint_of_the_wrapper_without_zero_is_refused_naming_precision(tmp_path: Path) -> None:
    """bf16 without ZeRO used to keep bf16 weights in DeepSpeed's FP16_UnfusedOptimizer; it
    is autocast over fp32 weights now, and the old optimizer state cannot be loaded. Such a
    checkpoint's fingerprint says "bf16" where this hbt records "bf16-autocast": it is
    refused in one line naming train.precision, even with --accept-changes, and a bf16 run
    of this hbt resumes."""
    args = overrides(tmp_path, "bf16", "train.precision=bf16", "train.max_steps=2", "train.checkpoint_every=2")
    ok(run_hbt("train", *args))
    fp_file = tmp_path / "bf16" / "checkpoints" / "step-00000002" / "fingerprint.json"
    tree = json.loads(fp_file.read_text())
    assert tree["config"]["train.precision"] == "bf16-autocast"
    out = run_hbt("train", *args, "train.max_steps=3", "--accept-changes")
    ok(out)
    assert "resumed from" in out.stderr
    fp_file = tmp_path / "bf16" / "checkpoints" / "step-00000003" / "fingerprint.json"
    tree = json.loads(fp_file.read_text())
    tree["config"]["train.precision"] = "bf16"  # what an older hbt wrote
    fp_file.write_text(json.dumps(tree))
    fp_file.with_name(MANIFEST).unlink()
    write_manifest(fp_file.parent)
    for extra in ([], ["--accept-changes"]):
        line = refused(run_hbt("train", *args, "train.max_steps=3", *extra))
        assert "train.precision ('bf16' -> 'bf16-autocast')" in line


def test_resume_refuses_another_deepspeed_json(finished, tmp_path: Path) -> None:
    _, args = finished
    ds = tmp_path / "zero0-offload.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "wall_clock_breakdown": True}))
    assert "changed: deepspeed (the train.deepspeed JSON's content)" in refused(run_hbt("train", *args, f"train.deepspeed={ds}"))


def test_stop_signals_are_caught_before_torch_is_imported() -> None:
    """``hbt train`` installs its handlers first; importing what it needs for that must not
    pull in torch (seconds of start-up in which a signal would still kill the job)."""
    code = "import sys, hbt.cli, hbt.signals; print(sorted(m for m in ('torch', 'deepspeed', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_accept_changes_resumes_anyway_and_operational_keys_need_nothing(finished) -> None:
    _, args = finished
    ok(run_hbt("train", *args, "train.checkpoint_every=7", "eval.k=10"))  # where/how often to save, evaluation
    out = run_hbt("train", *args, "train.max_steps=4", "--accept-changes")
    ok(out)
    assert "resumed from" in out.stderr and "at step 3" in out.stderr


def test_signal_during_start_up_exits_75_and_the_run_then_resumes(tmp_path: Path) -> None:
    args = overrides(tmp_path, "early", "train.max_steps=4")
    proc = subprocess.Popen(hbt_command("train", *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "early" / "launch.json").exists(), proc)  # started; data, model, DeepSpeed still ahead
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "before training started" in err and not (tmp_path / "early" / "metrics.jsonl").exists()
    ok(run_hbt("train", *args))
    assert sorted(losses(tmp_path / "early")) == [1, 2, 3, 4]


def test_signal_during_evaluation_exits_75_after_it_and_resumes(tmp_path: Path) -> None:
    """Evaluation at batch size 1 takes seconds: the signal arrives while it runs. The run
    finishes the evaluation, checkpoints, exits 75; the resumed run does not repeat it."""
    args = overrides(tmp_path, "ev", "train.epochs=2", "eval.batch_size=1")
    per_epoch = steps_per_epoch(args)
    proc = subprocess.Popen(hbt_command("train", *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "ev" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= per_epoch, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert (tmp_path / "ev" / "checkpoints" / "latest").read_text() == f"step-{per_epoch:08d}"
    ok(run_hbt("train", *args))
    evals = [json.loads(line)["eval"] for line in (tmp_path / "ev" / "eval.jsonl").read_text().splitlines()]
    assert evals == ["epoch-0", "epoch-1"]
    assert sorted(losses(tmp_path / "ev")) == list(range(1, 2 * per_epoch + 1))


def test_signal_while_checkpoints_are_written_every_step(tmp_path: Path) -> None:
    """With a checkpoint after every step, a signal at a random moment mostly lands in a
    checkpoint write: the write completes, one more step runs and is saved, exit 75."""
    args = overrides(tmp_path, "ck", "train.checkpoint_every=1")
    proc = subprocess.Popen(hbt_command("train", *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    pointer = tmp_path / "ck" / "checkpoints" / "latest"
    wait_for(lambda: pointer.exists() and pointer.read_text() >= "step-00000003", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    stopped = max(losses(tmp_path / "ck"))
    assert pointer.read_text() == f"step-{stopped:08d}"
    assert not list((tmp_path / "ck" / "checkpoints").glob("tmp-*"))
    ok(run_hbt("train", *args))
    assert sorted(losses(tmp_path / "ck")) == list(range(1, steps_per_epoch(args) + 1))
