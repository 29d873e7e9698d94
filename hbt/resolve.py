"""What a run's config means on this machine, decided once at start-up.

Some keys of a config say how to decide rather than what: ``train.chunk_tokens=auto``
and ``train.precision=auto`` depend on the device and the encoder, the per-rank batch on
the world size, the run's optimizer steps on the epoch plans of its data, and the texts'
prefixes and token limits sit in the model section. :func:`resolve` decides them once,
after the encoder and the sampler exist and before the engine does. The checkpoint's
fingerprint records what it decided (a run keeps its padding remedy and precision on
resume), and the engine is handed the :class:`Resolved` instead of deciding again, so
what the fingerprint says is what ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from hbt.config import Config, ModelConfig, TrainConfig
from hbt.data.tokenize import TextSpec
from hbt.dist import DistEnv
from hbt.errors import InputError
from hbt.padding import packable
from hbt.sampling import HybridBatchSampler, per_rank_batch

Padding = int | Literal["packed"] | None
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Resolved:
    """A run's settings as they run (see :func:`resolve`)."""

    padding: Padding  # train.chunk_tokens as it runs: packed, length-sorted chunks of N tokens, or None (one padded pass)
    precision: Precision  # train.precision as it runs
    per_rank_batch: int  # pairs of each contrastive batch on one rank
    total_steps: int  # optimizer steps of the whole run: train.epochs, cut at train.max_steps
    text: TextSpec  # the prefixes and token limits of queries and passages
    deepspeed: dict  # the train.deepspeed JSON as read (hbt fills in batch, optimizer and precision)

    @property
    def chunk_tokens(self) -> int | None:
        """The token budget of a side's length-sorted chunks; None for one pass per side
        (one padded pass, or one packed row)."""
        return None if self.padding == "packed" else self.padding

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    @property
    def autocast(self) -> bool:
        """bf16 as the bare loop runs it: fp32 weights and torch's fused AdamW untouched,
        the forward under ``torch.autocast``. Without ZeRO, DeepSpeed's own bf16 mode
        wraps a torch optimizer in ``FP16_UnfusedOptimizer``, whose per-tensor overflow
        check and norm cost a large share of a GPU step (docs/BENCHMARKS.md §1); under
        ZeRO 1-3 the stage's own bf16 optimizer runs (flat partitions, bf16 weights that
        halve what ZeRO-3 gathers)."""
        return self.bf16 and self.zero_stage == 0

    def config_as_run(self, cfg: Config) -> dict:
        """``cfg`` as a dict with its ``auto`` keys as they run: what a fingerprint records.
        (``config.yaml`` keeps the config as given.)"""
        tree = cfg.to_dict()
        tree["train"]["chunk_tokens"] = self.padding
        # A checkpoint of bf16 without ZeRO written before autocast held bf16 weights in
        # DeepSpeed's wrapper, whose state this run cannot load: "bf16-autocast" tells it apart.
        tree["train"]["precision"] = "bf16-autocast" if self.autocast else self.precision
        return tree


def resolve(cfg: Config, env: DistEnv, encoder: torch.nn.Module, sampler: HybridBatchSampler) -> Resolved:
    """Every setting of ``cfg`` that depends on this machine, the world size, the encoder
    (whether it packs) or the data (its epoch plans in ``sampler``), decided once."""
    t = cfg.train
    return Resolved(padding=padding(t.chunk_tokens, gpu=torch.cuda.is_available(), packs=packable(encoder)),
                    precision=precision(t.precision), per_rank_batch=per_rank_batch(t.batch_size, env.world_size),
                    total_steps=total_steps(t, sampler), text=text_spec(cfg.model), deepspeed=deepspeed_json(t.deepspeed))


# DeepSpeed keys hbt fills in from the experiment config (hbt.engine.deepspeed_config): one
# in the JSON would be overwritten without a word. "auto" (Hugging Face's convention for
# "filled in by the trainer") and a section turned off say as much and pass.
SET_BY_HBT = {"fp16": "train.precision", "bf16": "train.precision", "torch_autocast": "train.precision",
              "optimizer": "train.lr and train.weight_decay", "scheduler": "train.lr and train.warmup_ratio",
              "train_batch_size": "train.batch_size", "train_micro_batch_size_per_gpu": "train.batch_size",
              "gradient_accumulation_steps": "train.grad_accum", "gradient_clipping": "train.grad_clip"}


def deepspeed_json(path: str) -> dict:
    """The train.deepspeed file (its path checked by Config.validate)."""
    try:
        tree = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"malformed JSON at line {e.lineno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InputError(path, f"is not UTF-8 text (byte {e.start})") from None
    if not isinstance(tree, dict):
        raise InputError(path, "a DeepSpeed config must be a JSON object")
    for key, setting in SET_BY_HBT.items():
        value = tree.get(key, "auto")
        if value != "auto" and not (isinstance(value, dict) and value.get("enabled", True) in (False, "auto")):
            raise InputError(path, f"'{key}' is set from {setting}; remove it from the DeepSpeed config (or make it \"auto\")")
    return tree


def padding(chunk_tokens: int | Literal["auto", "packed"] | None, gpu: bool, packs: bool) -> Padding:
    """``train.chunk_tokens`` on this device for an encoder that packing supports or not
    (:mod:`hbt.padding`). ``auto`` on a CPU packs where it can (``hbt train`` on e5-small
    ran faster packed than in one padded pass or in 512-token chunks, with the same
    gradients) and otherwise takes 512-token chunks; on a GPU it is one padded pass, since
    512-token chunks ran e5-small several times slower there (every chunk pays the kernel
    launches of a whole pass) and packing is not measured there (BENCHMARKS §1)."""
    if chunk_tokens == "auto":
        return None if gpu else "packed" if packs else 512
    if chunk_tokens == "packed" and not packs:
        raise InputError("train.chunk_tokens", "packed needs a BERT, RoBERTa or XLM-R encoder with absolute positions; "
                         "use auto or a number of tokens")
    return chunk_tokens


def precision(value: Literal["auto", "fp32", "bf16"]) -> Precision:
    """``train.precision`` here: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    if value == "bf16" or (value == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return "bf16"
    return "fp32"


def total_steps(train: TrainConfig, sampler: HybridBatchSampler) -> int:
    """Optimizer steps of the whole run; epochs are planned only as far as needed."""
    batches = 0
    for epoch in range(train.epochs):
        batches += len(sampler.plan(epoch))
        if train.max_steps is not None and batches // train.grad_accum >= train.max_steps:
            return train.max_steps
    return batches // train.grad_accum


def text_spec(model: ModelConfig) -> TextSpec:
    """How the run's texts become token ids: the model section's prefixes and limits."""
    return TextSpec(model.query_prefix, model.passage_prefix, model.max_query_length, model.max_passage_length)
