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
from hbt.resolve import padding, precision
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
    with pytest.raises(InputError, match="extends itself"):
        load_config(loop)


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
