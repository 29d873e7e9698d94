"""Config loading (extends, overrides, validation), what auto keys resolve to, the sampler's
keys defined once, and launcher environment detection."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

from hbt.cli import build_parser
from hbt.config import SAMPLER_KEYS, TrainConfig, load_config, sampler_keys
from hbt.dist import detect, first_host
from hbt.errors import InputError
from hbt.resolve import deepspeed_json, padding, precision
from hbt.sampling import SamplerConfig
from tests.helpers import ROOT


def test_shipped_configs_load_and_baselines_differ_only_in_alpha() -> None:
    hybrid = load_config(ROOT / "configs/xlmr-base-hybrid.yaml")
    for name, alpha in (("xlmr-base-mono", 1.0), ("xlmr-base-cross", 0.0)):
        cfg = load_config(ROOT / f"configs/{name}.yaml")
        assert cfg.train.alpha == alpha and cfg.run.dir == f"runs/{name}"
        assert cfg.model == hybrid.model and cfg.data == hybrid.data
    labse = load_config(ROOT / "configs/labse-mono.yaml")
    assert labse.model.pooling == "cls" and labse.train.alpha == 1.0 and labse.train.lr == hybrid.train.lr


def test_overrides_are_typed_yaml_values() -> None:
    cfg = load_config(ROOT / "configs/tiny.yaml", ["train.alpha=0.25", "train.lr=1e-3", "data.holdout_titles=Warsaw,Normans",
                                                   "train.symmetric=true", "model.tiny.layers=3"])
    assert cfg.train.alpha == 0.25 and cfg.train.lr == 0.001 and cfg.train.symmetric is True
    assert cfg.data.holdout_titles == "Warsaw,Normans" and cfg.model.tiny.layers == 3
    assert Path(cfg.train.deepspeed).is_absolute() and Path(cfg.train.deepspeed).is_file()
    e5 = load_config(ROOT / "configs/tiny.yaml", ["model.query_prefix=query: ", "model.passage_prefix=passage: "])
    assert (e5.model.query_prefix, e5.model.passage_prefix) == ("query: ", "passage: ")


def test_chunk_tokens_auto_packs_or_chunks_on_a_cpu_and_not_on_a_gpu() -> None:
    """The measured defaults (BENCHMARKS §1): packed on a CPU where the encoder allows it,
    else 512-token chunks; one padded pass on a GPU. A number, packed or null is kept on
    both, and packed for an encoder that cannot pack is refused, naming the key."""
    auto = load_config(None, []).train.chunk_tokens
    assert auto == "auto" and padding(auto, gpu=True, packs=True) is None
    assert padding(auto, gpu=False, packs=True) == "packed" and padding(auto, gpu=False, packs=False) == 512
    for value, budget in (("256", 256), ("null", None), ("packed", "packed")):
        given = load_config(None, [f"train.chunk_tokens={value}"]).train.chunk_tokens
        assert padding(given, gpu=False, packs=True) == padding(given, gpu=True, packs=True) == budget
    with pytest.raises(InputError) as e:
        padding(load_config(None, ["train.chunk_tokens=packed"]).train.chunk_tokens, gpu=False, packs=False)
    assert e.value.where == "train.chunk_tokens"
    with pytest.raises(InputError, match="'auto'"):
        load_config(None, ["train.chunk_tokens=big"])


def test_precision_auto_resolves_to_what_the_device_supports() -> None:
    """fp32 and bf16 are kept; auto is bf16 only on a GPU with bf16 (fp32 on this CPU machine)."""
    assert precision("fp32") == "fp32" and precision("bf16") == "bf16"
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert precision("auto") == ("bf16" if gpu_bf16 else "fp32")


def test_sampler_keys_are_the_sampler_config_fields() -> None:
    """The train section's sampler keys are SamplerConfig's fields (but seed, which is
    run.seed), with its types and defaults; TrainConfig.sampler() hands every one over,
    and the contrastive batch defaults to 64 in a config and on the command line."""
    hints, train_hints = typing.get_type_hints(SamplerConfig), typing.get_type_hints(TrainConfig)
    fields = [f for f in dataclasses.fields(SamplerConfig) if f.name != "seed"]
    assert SAMPLER_KEYS == tuple(f.name for f in fields) == tuple(f.name for f in dataclasses.fields(TrainConfig))[:len(fields)]
    assert all(train_hints[f.name] == hints[f.name] for f in fields)
    assert all(getattr(TrainConfig(), f.name) == f.default for f in fields if f.name != "batch_size")
    cfg = load_config(None, ["train.alpha=0.25", "train.mix=bernoulli", "train.remainder=carry", "run.seed=7"])
    assert cfg.train.sampler(cfg.run.seed) == SamplerConfig(batch_size=64, alpha=0.25, mix="bernoulli", remainder="carry", seed=7)
    keys = sampler_keys()
    assert set(keys) == {f.name for f in dataclasses.fields(SamplerConfig)} and keys["seed"] == ("run.seed", 0)
    assert keys["batch_size"] == ("train.batch_size", 64)
    args = build_parser().parse_args(["data", "sample", "synthetic"])
    assert {name: getattr(args, name) for name in keys} == {name: default for name, (_, default) in keys.items()}


@pytest.mark.parametrize("override,where", [
    ("train.nope=1", "train.nope"), ("model.tiny.layers=two", "model.tiny.layers"), ("train.symmetric=3", "train.symmetric"),
    ("train.mix=sometimes", "train.mix"), ("train.warmup_ratio=1", "train.warmup_ratio"), ("model.dropout=1.5", "model.dropout"),
    ("train=3", "train"), ("alpha", "override"),
    ("train.grad_cache_chunk=0", "train.grad_cache_chunk"), ("train.chunk_tokens=0", "train.chunk_tokens"), ("train.lr=inf", "train.lr"), ("train.lr=.nan", "train.lr"),
    ("train.temperature=-.inf", "train.temperature"), ("train.log_every=5", "train.log_every"),
    # issue 21 item 4: tracebacks or silent acceptance before, each now refused naming its key
    ("model.tiny.heads=3", "model.tiny.heads"), ("model.tiny.heads=0", "model.tiny.heads"),
    ("model.tiny.vocab_size=0", "model.tiny.vocab_size"), ("model.tiny.vocab_size=499", "model.tiny.vocab_size"),
    ("run.seed=-1", "run.seed"), ("run.seed=4294967296", "run.seed"), ("eval.k=0", "eval.k"),
    ("eval.batch_size=0", "eval.batch_size"), ("data.holdout_titles=@no/such/titles.txt", "data.holdout_titles"),
    ("data.holdout_titles=,", "data.holdout_titles"), ("data.sources=[{name: a}]", "data.sources[0].path"),
    # named the section ("train: weight_decay, grad_clip and hard_negatives must be >= 0")
    ("train.weight_decay=-0.1", "train.weight_decay"), ("train.grad_clip=-1", "train.grad_clip"),
    ("train.hard_negatives=-1", "train.hard_negatives"),
])
def test_bad_overrides_name_the_key(override: str, where: str) -> None:
    with pytest.raises(InputError) as e:
        load_config(ROOT / "configs/tiny.yaml", [override])
    assert e.value.where == where


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  alpha: [1,\n")
    with pytest.raises(InputError, match="malformed YAML"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(InputError, match="the extends chain is a cycle"):
        load_config(loop)


def test_an_extends_cycle_is_named_file_by_file(tmp_path: Path) -> None:
    """a.yaml -> b.yaml -> a.yaml was reported as 'a.yaml: extends itself'."""
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntrain: {alpha: 0.5}\n")
    with pytest.raises(InputError) as e:
        load_config(tmp_path / "a.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert e.value.where == str(a) and e.value.problem == f"the extends chain is a cycle: {a} -> {b} -> {a}"


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n"], ids=["empty", "blank", "comment"])
def test_an_empty_config_file_is_refused(tmp_path: Path, text: str) -> None:
    """It trained on the built-in defaults, as if no --config had been given."""
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(InputError, match="is empty") as e:
        load_config(empty)
    assert e.value.where == str(empty)


def test_a_null_section_is_an_empty_one(tmp_path: Path) -> None:
    """``train:`` with nothing under it is YAML's null; an override into it said
    'train.max_steps: is not a section', and over an extended file it wiped the parent's section."""
    bare = tmp_path / "bare.yaml"
    bare.write_text("run: {dir: runs/x}\ntrain:\nmodel:\n  tiny:\n")
    cfg = load_config(bare, ["train.max_steps=3", "model.tiny.layers=1"])
    assert cfg.train.max_steps == 3 and cfg.model.tiny.layers == 1 and cfg.train.alpha == 0.5
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {ROOT / 'configs/tiny.yaml'}\ntrain:\n")
    assert load_config(child).train == load_config(ROOT / "configs/tiny.yaml").train


def test_detect_torchrun_slurm_and_single() -> None:
    env = detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == (3, 4, 1, "n1", 1234, "torchrun")
    slurm = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "77",
             "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2"}
    env = detect(slurm)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (1, 2, 1, "localhost", "slurm")
    assert env.master_port == 20077
    batch_shell = {k: v for k, v in slurm.items() if k != "SLURM_STEP_NUM_TASKS"}  # sbatch script, no srun
    assert detect(batch_shell).launcher == "single"
    assert detect({}).world_size == 1


def test_first_host_of_a_nodelist() -> None:
    assert first_host("gpu[03-05,9],cpu1") == "gpu03"
    assert first_host("node7") == "node7"


@pytest.mark.parametrize("section,setting", [
    ('"fp16": {"enabled": true}', "train.precision"), ('"bf16": {"enabled": true}', "train.precision"),
    ('"optimizer": {"type": "Adam", "params": {"lr": 0.1}}', "train.lr and train.weight_decay"),
    ('"scheduler": {"type": "WarmupLR"}', "train.lr and train.warmup_ratio"), ('"train_batch_size": 32', "train.batch_size"),
    ('"gradient_clipping": 1.0', "train.grad_clip"),
])
def test_a_deepspeed_config_setting_what_hbt_sets_is_refused(tmp_path: Path, section: str, setting: str) -> None:
    """An fp16 section was dropped and an optimizer, schedule or batch size overwritten
    without a word; "auto" and a section turned off pass."""
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}, ' + section + "}")
    with pytest.raises(InputError, match=f"is set from {setting}; remove it") as e:
        deepspeed_json(str(path))
    assert e.value.where == str(path)
    path.write_text('{"zero_optimization": {"stage": 2}, "fp16": {"enabled": false}, "bf16": {"enabled": "auto"}, '
                    '"train_batch_size": "auto", "gradient_clipping": "auto"}')
    assert deepspeed_json(str(path))["zero_optimization"] == {"stage": 2}
