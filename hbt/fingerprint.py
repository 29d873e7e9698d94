"""What a run was started from, saved with every checkpoint and checked on resume.

A requeued job resumes blindly, so a resume must refuse to continue a run whose inputs
changed underneath it: the training data, the tokenizer, the initial model weights, the
config keys that shape the optimisation, and the world size (per-rank RNG streams and
ZeRO partitions belong to it). Only keys that do not change what is trained may differ
(where checkpoints and caches go, how often to checkpoint, evaluation settings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

# Config keys a resumed run may change: they do not alter the trained weights, or (the
# paths of the data, the model and the DeepSpeed JSON) their content is fingerprinted instead.
OPERATIONAL = ("run.dir", "run.dist_timeout_min", "data.cache_dir", "data.num_workers", "data.prefetch",
               "train.checkpoint_every", "train.keep_checkpoints", "data.train", "model.name", "train.deepspeed")
OPERATIONAL_SECTIONS = ("eval.",)
FILE = "fingerprint.json"
# Shaping keys a resumed run may change when the user says so (``--accept-changes``): each
# is read afresh at start-up (the loss, the clipping, the chunking, the step count) or set
# again on the restored optimizer and schedule (:meth:`hbt.engine.Engine.resume`), so the
# new value takes effect from the next step. Every other shaping input fixes the batch
# sequence, the model or the optimizer's structure, and cannot change mid-run.
ADJUSTABLE = ("train.lr", "train.weight_decay", "train.warmup_ratio", "train.max_steps", "train.epochs",
              "train.grad_clip", "train.temperature", "train.symmetric", "train.grad_cache_chunk", "train.chunk_tokens")


# Config entries that say where or with what a model was saved, not what it computes.
_PROVENANCE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash")


def model_digest(model: torch.nn.Module) -> str:
    """A hash of the architecture and every initial weight, byte for byte (not of where
    the model was loaded from: a run directory may move)."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config = {k: v for k, v in config.items() if k not in _PROVENANCE}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def shaping_config(config: dict) -> dict[str, object]:
    return {k: v for k, v in _flatten(config).items()
            if k not in OPERATIONAL and not k.startswith(OPERATIONAL_SECTIONS)}


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def fingerprint(config: dict, data: str, tokenizer: str, model: str, world_size: int) -> dict:
    return {"data": data, "tokenizer": tokenizer, "model": model, "deepspeed": file_digest(config["train"]["deepspeed"]),
            "world_size": world_size, "config": shaping_config(config)}


def differences(saved: dict, current: dict, auto_precision: str) -> dict[str, str]:
    """What changed: the input's name (a config key, or data/tokenizer/model/deepspeed)
    -> a short phrase saying how (empty when nothing did).

    A fingerprint records ``train.precision`` as it ran (:mod:`hbt.resolve`), but one
    written before hbt resolved it holds ``"auto"``, and what that ran as is not recorded.
    It is taken as ``auto_precision``, what auto runs as on this machine: a run requeued
    on the same kind of machine resumes, and one moved between a CPU and a bf16 GPU under
    such an old checkpoint is not caught."""
    out = {name: name if name != "deepspeed" else "deepspeed (the train.deepspeed JSON's content)"
           for name in ("data", "tokenizer", "model", "deepspeed") if saved.get(name) != current[name]}
    old, new = saved.get("config", {}), current["config"]
    as_run = {**old, "train.precision": auto_precision} if old.get("train.precision") == "auto" else old
    out.update({k: f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if as_run.get(k) != new.get(k)})
    return out


def write(checkpoint_dir: Path, fp: dict) -> None:
    (checkpoint_dir / FILE).write_text(json.dumps(fp, indent=1, sort_keys=True, default=str))


def read(checkpoint_dir: Path) -> dict | None:
    path = checkpoint_dir / FILE
    return json.loads(path.read_text()) if path.exists() else None
