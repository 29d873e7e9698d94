"""``hbt train`` end to end, as users run it: one process, torchrun with 2 ranks under
every ZeRO stage, GradCache, exact resume after SIGKILL, pre-emption by SIGUSR1, a
diverging loss, the export, and config errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import (ME5_SMALL, ROOT, XQUAD_R, hbt_command, losses, need, ok, overrides, run_hbt, steps_per_epoch, torchrun,
                           wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train")]  # one worker: its module fixture (single_run) is built once


def test_single_process_run_directory(single_run: Path) -> None:
    assert (single_run / "config.yaml").exists() and (single_run / "init" / "tokenizer.json").exists()
    assert (single_run / "checkpoints" / "latest").read_text() == "step-00000012"
    records = [json.loads(line) for line in (single_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    last = records[-1]
    assert {"loss", "lr", "samples_per_s", "data_wait", "batch", "mix", "epoch"} <= set(last)
    assert 0 <= last["data_wait"] < 1
    assert abs(sum(last["mix"].values()) - 1) < 1e-3 and "cross" in last["mix"]
    assert any((single_run / "tensorboard").iterdir())
    final = json.loads((single_run / "eval.jsonl").read_text())
    assert final["eval"] == "step-12" and (single_run / "eval" / "step-12" / "cross_heatmap.png").exists()


def test_export_loads_in_sentence_transformers_with_the_same_vectors(single_run: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from hbt.data.tokenize import pad
    from hbt.model import BiEncoder

    path = single_run / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    ours = BiEncoder(AutoModel.from_pretrained(path), "mean").eval()
    texts = ["ab cd ef", "αβ γδ", "один два три четыре пять шесть"]
    with torch.no_grad():
        batch = pad(tokenizer(texts, truncation=True, max_length=32)["input_ids"], tokenizer.pad_token_id)
        mine = ours(**batch).numpy()
    st = SentenceTransformer(str(path), device="cpu").encode(texts, prompt_name="query")
    assert np.abs(mine - st).max() < 1e-5


def test_export_carries_a_model_card(single_run: Path) -> None:
    """README.md: the hub's metadata header, then the training and the final evaluation."""
    import yaml

    card = (single_run / "model" / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["language"] == ["el", "en", "ru"] and "base_model" not in meta  # the tiny preset has no hub id
    assert "hybrid (alpha 0.5" in body and "| steps | 12 optimizer steps of 1 contrastive batch of 16 pairs" in body
    final = json.loads((single_run / "eval" / "step-12" / "metrics.json").read_text())["summary"]
    assert f"{final['mono_map']:.4f}" in body and "(cross_heatmap.png)" in body
    assert (single_run / "model" / "cross_heatmap.png").exists()


def test_two_ranks_under_zero_0_and_3_match_one_process(tmp_path: Path, single_run: Path) -> None:
    """The same global batches and an exact cross-rank loss: 2 ranks of ``hbt train`` train
    like 1, end to end (launch, loss, export). Stages 0 and 3 are the two ends; every stage
    at 1-3 ranks has its gradient checked against one process in tests/integration/test_matrix.py."""
    reference = losses(single_run)
    for stage in (0, 3):
        out = torchrun(2, "train", *overrides(tmp_path, f"z{stage}", "model.dropout=0.0", "train.max_steps=12",
                                              f"train.deepspeed=configs/deepspeed/zero{stage}.json"))
        ok(out)
        assert json.loads((tmp_path / f"z{stage}" / "launch.json").read_text())["world_size"] == 2
        got = losses(tmp_path / f"z{stage}")
        assert got.keys() == reference.keys()
        diff = max(abs(got[s] - reference[s]) for s in reference)
        print(f"ZeRO-{stage}, 2 ranks vs 1 process: max per-step loss difference {diff:.2e} over {len(reference)} steps")
        assert diff < 1e-4, (stage, diff)
        assert (tmp_path / f"z{stage}" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_one_rank_under_zero_trains_and_resumes_exactly(tmp_path: Path, stage: int) -> None:
    """The one-GPU recipe (README): ZeRO 2 (the shipped configs) and 3 on a single rank
    train, checkpoint, and a run cut after its step-3 checkpoint resumes to the same losses
    as the uncut run. ZeRO 1 saves its optimizer partitions through the same code as 2;
    it trains in every cell of tests/integration/test_matrix.py."""
    args = overrides(tmp_path, "full", "model.dropout=0.0", "train.max_steps=6", "train.checkpoint_every=3",
                     f"train.deepspeed=configs/deepspeed/zero{stage}.json")
    ok(run_hbt("train", *args))
    full = tmp_path / "full"
    assert sorted(p.name for p in (full / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000006"]
    cut = tmp_path / "cut"  # the same run as it was right after step 3: later steps never happened
    shutil.copytree(full, cut, ignore=shutil.ignore_patterns("step-00000006", "model", "eval*"))
    (cut / "checkpoints" / "latest").write_text("step-00000003")
    lines = (full / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:3]))
    out = run_hbt("train", *[a.replace(str(full), str(cut)) for a in args])
    ok(out)
    assert "resumed from" in out.stderr
    got, reference = losses(cut), losses(full)
    assert got.keys() == reference.keys() == set(range(1, 7))
    diff = max(abs(got[s] - reference[s]) for s in reference)
    print(f"ZeRO-{stage}, 1 rank, resumed after step 3: max per-step loss difference {diff:.2e}")
    assert diff <= 1e-6


def test_bf16_run_evaluates_and_exports(tmp_path: Path) -> None:
    """``train.precision=bf16`` end to end on CPU: training, the per-epoch evaluation in
    bf16, and an export that sentence-transformers loads (the matrix test bounds its
    losses against fp32)."""
    from sentence_transformers import SentenceTransformer

    ok(run_hbt("train", *overrides(tmp_path, "bf16", "train.precision=bf16", "train.max_steps=3",
                                    "train.deepspeed=configs/deepspeed/zero2.json")))
    final = json.loads((tmp_path / "bf16" / "eval.jsonl").read_text().splitlines()[-1])
    assert final["eval"] == "step-3" and 0 < final["mono_map"] <= 1
    vectors = SentenceTransformer(str(tmp_path / "bf16" / "model"), device="cpu").encode(["ab cd", "αβ"])
    assert np.isfinite(vectors).all() and vectors.shape[0] == 2


def test_grad_cache_trains_like_the_plain_step(tmp_path: Path, single_run: Path) -> None:
    out = torchrun(2, "train", *overrides(tmp_path, "gc", "model.dropout=0.0", "train.max_steps=12",
                                          "train.grad_cache_chunk=3", "train.deepspeed=configs/deepspeed/zero2.json"))
    ok(out)
    got, reference = losses(tmp_path / "gc"), losses(single_run)
    assert max(abs(got[s] - reference[s]) for s in reference) < 1e-4


def test_exact_resume_after_sigkill(tmp_path: Path) -> None:
    args = overrides(tmp_path, "full", "train.checkpoint_every=4")
    ok(run_hbt("train", *args))
    full = losses(tmp_path / "full")
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert kept == ["latest", "step-00000028", "step-00000030"]  # the last train.keep_checkpoints=2, no tmp-* left

    args = overrides(tmp_path, "killed", "train.checkpoint_every=4")
    proc = subprocess.Popen(hbt_command("train", *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    pointer = tmp_path / "killed" / "checkpoints" / "latest"
    wait_for(pointer.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(tmp_path / "killed"))
    assert killed_at < max(full), "the run finished before it was killed"
    out = run_hbt("train", *args)  # --resume auto is the default
    ok(out)
    assert f"resumed from {tmp_path / 'killed' / 'checkpoints'}" in out.stderr
    history = sorted((tmp_path / "killed" / "config-history").glob("*.yaml"))
    assert [p.name for p in history] == ["000.yaml", "001.yaml"]  # both starts kept
    assert "resumed_from: step-" in history[1].read_text() and "resumed_from: null" in history[0].read_text()
    resumed = losses(tmp_path / "killed")
    assert resumed.keys() == full.keys()
    diff = max(abs(resumed[s] - full[s]) for s in full)
    print(f"SIGKILL after step {killed_at}, resumed: max per-step loss difference {diff:.2e} over {len(full)} steps")
    assert diff <= 1e-6


def test_sigusr1_checkpoints_exits_for_requeue_and_resumes(tmp_path: Path) -> None:
    args = overrides(tmp_path, "pre")
    proc = subprocess.Popen(hbt_command("train", *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "pre" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    tag = (tmp_path / "pre" / "checkpoints" / "latest").read_text()
    stopped = max(losses(tmp_path / "pre"))
    assert tag == f"step-{stopped:08d}" and "pre-empted" in err
    out = run_hbt("train", *args)
    ok(out)
    assert "resumed from" in out.stderr and max(losses(tmp_path / "pre")) == steps_per_epoch(args)


def test_diverging_loss_names_a_checkpoint_whose_weights_never_produced_it(tmp_path: Path) -> None:
    """A 1e30 learning rate after one warm-up step at lr 0: step 2's update wrecks the
    weights, step 3's loss is not finite. step-2 holds the wrecked weights, so the good
    checkpoint is step-1; resuming from it gives step 2's finite loss again."""
    args = overrides(tmp_path, "nan", "train.lr=1e30", "train.grad_clip=0", "train.checkpoint_every=1", "train.warmup_ratio=0.1")
    out = run_hbt("train", *args)
    assert out.returncode == 1, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "loss is not finite at step 3" in line and "last good checkpoint is step-00000001" in line, line
    assert (tmp_path / "nan" / "checkpoints" / "latest").read_text() == "step-00000001"
    first = losses(tmp_path / "nan")
    assert sorted(first) == [1, 2] and all(np.isfinite(v) for v in first.values())
    again = run_hbt("train", *args)  # resumes from 'latest', the good checkpoint
    assert "resumed from" in again.stderr and "at step 1" in again.stderr, again.stderr[-2000:]
    assert losses(tmp_path / "nan")[2] == first[2] and again.returncode == 1


@pytest.mark.parametrize("override,needle", [
    ("train.alpa=0.5", "train.alpa: unknown key"),
    ("train.alpha=lots", "train.alpha: should be float"),
    ("train.alpha=1.5", "train.alpha: must be in [0, 1]"),
    ("train.batch_size=0", "train.batch_size: must be a positive integer"),
    ("train.deepspeed=nope.json", "train.deepspeed: no such file"),
])
def test_bad_config_is_one_line_exit_2(tmp_path: Path, override: str, needle: str) -> None:
    out = run_hbt("train", *overrides(tmp_path, "bad", override))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [f"hbt: error: {needle}" + out.stderr.strip().split(needle, 1)[1]]
    assert "Traceback" not in out.stderr


def test_pretrained_encoder_with_e5_prefixes(tmp_path: Path) -> None:
    """A real multilingual encoder from a local directory: e5 prefixes, mean pooling,
    trained on XQuAD-R for two steps, exported, and loadable by sentence-transformers."""
    need(ME5_SMALL), need(XQUAD_R)
    out = run_hbt("train", "--config", "configs/me5-small-xquad.yaml", f"run.dir={tmp_path / 'me5'}",
                  f"data.cache_dir={tmp_path / 'cache'}", "train.batch_size=8", "train.max_steps=2",
                  "data.holdout_titles=null", "model.max_passage_length=48")
    ok(out)
    records = [json.loads(line) for line in (tmp_path / "me5" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    settings = json.loads((tmp_path / "me5" / "model" / "hbt.json").read_text())
    assert settings["query_prefix"] == "query: " and settings["passage_prefix"] == "passage: "


def test_gradient_clipping_without_zero_is_deepspeeds_under_zero(tmp_path: Path) -> None:
    """Without ZeRO hbt clips with torch's multi-tensor clip_grad_norm_, under ZeRO 2
    DeepSpeed clips its partitions: at a limit every step exceeds, the two train to the
    same losses, and unclipped training does not (so the clip is doing something)."""
    runs = {}
    for name, stage, clip in (("z0", 0, 0.05), ("z2", 2, 0.05), ("z0-off", 0, 0.0)):
        args = overrides(tmp_path, name, "model.dropout=0.0", "train.max_steps=4", f"train.grad_clip={clip}",
                         f"train.deepspeed=configs/deepspeed/zero{stage}.json", "eval.every_epoch=false")
        ok(run_hbt("train", *args))
        runs[name] = losses(tmp_path / name)
    same = max(abs(runs["z0"][s] - runs["z2"][s]) for s in runs["z0"])
    apart = max(abs(runs["z0"][s] - runs["z0-off"][s]) for s in runs["z0"])
    print(f"clipped at 0.05: ZeRO 0 vs ZeRO 2 max loss difference {same:.2e}; clipped vs not {apart:.2e}")
    assert same <= 1e-5 and apart > 100 * max(same, 1e-6)
