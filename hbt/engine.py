"""The training engine: DeepSpeed around the bi-encoder, the hybrid sampler's batches,
the cross-rank loss, checkpoints, pre-emption and NaN handling, and the monitor.

The loop is deliberately plain: each contrastive batch is one DeepSpeed micro-step
(``train.grad_accum`` of them make an optimizer step); GradCache, when on, replaces
the forward/backward of a micro-step and nothing else.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from hbt import signals
from hbt.signals import Preempted, stop_requested
from hbt.batches import RankBatches, stream
from hbt.checkpoint import Checkpointer
from hbt.config import Config, TrainConfig
from hbt.data.tokenize import PairTokenizer
from hbt.data.training import TrainingData
from hbt.dist import DistEnv, all_max, all_mean
from hbt.errors import InputError
from hbt.loss import ContrastiveLoss, grad_cache_step
from hbt.model import BiEncoder
from hbt.padding import encode_chunked
from hbt.monitor import Monitor
from hbt.resolve import Resolved
from hbt.sampling import HybridBatchSampler


class Diverged(Exception):
    """The loss became NaN or infinite; ``latest`` now names the newest checkpoint whose
    weights never produced a non-finite loss."""


def deepspeed_config(train: TrainConfig, resolved: Resolved, world_size: int) -> dict:
    """The DeepSpeed JSON (ZeRO stage and engine options) with hbt's batch, optimizer,
    schedule and precision filled in from the experiment config, its single source (as
    resolved for this run)."""
    per_rank = resolved.per_rank_batch
    ds = dict(resolved.deepspeed)
    ds.update({
        "train_micro_batch_size_per_gpu": per_rank,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": per_rank * world_size * train.grad_accum,
        "gradient_clipping": 0.0 if clips_in_torch(resolved) else train.grad_clip,
        # torch's fused AdamW (CPU and CUDA), not DeepSpeed's FusedAdam: that one is compiled
        # on first use, which needs nvcc on every node and failed on an H200 (DeepSpeed
        # 0.19.8 cannot read the "9.0a" architecture in TORCH_CUDA_ARCH_LIST); the update is
        # the same, and a fused update is several times faster than torch's per-tensor one.
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr, "weight_decay": train.weight_decay, "betas": [0.9, 0.999],
                                                  "eps": 1e-8, "torch_adam": True, "fused": True}},
        # bf16 without ZeRO: fp32 weights, the forward under autocast (Resolved.autocast);
        # under ZeRO, the stage's bf16 optimizer.
        "bf16": {"enabled": resolved.bf16 and not resolved.autocast},
        "torch_autocast": {"enabled": resolved.autocast, "dtype": "bfloat16"},
        "steps_per_print": 10**9,
    })
    ds.pop("fp16", None)  # refused unless off or "auto" (hbt.resolve.SET_BY_HBT): precision is train.precision's
    ds.setdefault("zero_optimization", {"stage": 0})
    ds.pop("scheduler", None)  # likewise: the schedule is hbt's (see linear_schedule)
    return ds


def clips_in_torch(resolved: Resolved) -> bool:
    """Without ZeRO, the gradient is clipped by torch's multi-tensor ``clip_grad_norm_``
    (in :meth:`Engine._train_epoch`), not DeepSpeed's, which takes each parameter's norm and scales
    it apart: hundreds of tiny kernels a step (docs/BENCHMARKS.md §1, operators per step).
    The clip is the same: the global norm over every gradient, scaled down past the limit.
    Under ZeRO 1-3 the gradient lives in the stage's partitions, which only DeepSpeed's
    clipping sees whole."""
    return resolved.zero_stage == 0


def linear_schedule(train: TrainConfig, total_steps: int) -> Callable:
    """Linear warm-up over ``warmup_ratio`` of the run, then linear decay to 0
    (transformers' schedule, handed to DeepSpeed, which saves and restores it). Not
    DeepSpeed's WarmupDecayLR: that one warms up over at least 2 steps, the first at lr 0,
    so ``warmup_ratio=0`` would still waste the first step."""
    from transformers import get_linear_schedule_with_warmup

    warmup = math.floor(train.warmup_ratio * total_steps)
    return lambda optimizer: get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, warmup + 1))


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro: int = 0  # contrastive batches done
    evaluated: int = -1  # the optimizer step of the latest evaluation

    def to_dict(self) -> dict:
        return {"step": self.step, "micro": self.micro, "evaluated": self.evaluated}


class Engine:
    """DeepSpeed around ``model`` on this rank (``env``), training as ``resolved`` decided
    (padding remedy, precision, per-rank batch, steps)."""

    def __init__(self, cfg: Config, env: DistEnv, resolved: Resolved, model: BiEncoder, data: TrainingData,
                 tokenize: PairTokenizer, sampler: HybridBatchSampler, run_dir: Path, fingerprint: dict | None = None):
        import deepspeed

        self.cfg, self.env, self.data, self.tokenize, self.sampler, self.run_dir = cfg, env, data, tokenize, sampler, run_dir
        self.resolved = resolved
        t = cfg.train
        self.ds_config = deepspeed_config(t, resolved, env.world_size)
        if resolved.padding == "packed":
            model.pack()
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=self.ds_config,
                                                    lr_scheduler=linear_schedule(t, resolved.total_steps))
        if env.world_size == 1 and self.engine.zero_optimization_stage() == 0:
            # An all-reduce over one rank changes nothing, but DeepSpeed still flattens and
            # copies every gradient for it, a share of a CPU step worth saving.
            # Only without ZeRO: under ZeRO 1-3 the same call is what moves the gradients
            # into the optimizer's partitions, and skipping it breaks the step.
            self.engine.enable_backward_allreduce = False
        self.loss_fn = ContrastiveLoss(temperature=t.temperature, symmetric=t.symmetric, rank=env.rank, world_size=env.world_size)
        self.checkpointer = Checkpointer(run_dir / "checkpoints", keep=t.keep_checkpoints, env=env, fingerprint=fingerprint)
        self.state = TrainState()

    @property
    def module(self) -> BiEncoder:
        return self.engine.module

    # -- resume -------------------------------------------------------------------------
    def resume(self, tag: str) -> None:
        client = self.checkpointer.load(self.engine, tag)
        self.sampler.load_state_dict(client["sampler"])
        self.state = TrainState(**client["state"])
        self._apply_optimisation()

    def _apply_optimisation(self) -> None:
        """A checkpoint restores the optimizer's lr and weight decay and the schedule's base
        rate as they were; set them from this run's config, so values changed with
        ``--accept-changes`` (:data:`hbt.fingerprint.ADJUSTABLE`) take effect from the next
        step. The schedule's shape (warm-up, total steps) is this run's already
        (:func:`linear_schedule`); unchanged values give the very rates an uninterrupted
        run applies."""
        t, scheduler = self.cfg.train, self.engine.lr_scheduler
        scheduler.base_lrs = [t.lr] * len(scheduler.base_lrs)
        for group, shape in zip(self.engine.optimizer.param_groups, scheduler.lr_lambdas):
            group.update(initial_lr=t.lr, lr=t.lr * shape(scheduler.last_epoch), weight_decay=t.weight_decay)

    def save(self) -> str:
        client = {"state": self.state.to_dict(), "sampler": self.sampler.state_dict(), "config": self.cfg.to_dict()}
        return self.checkpointer.save(self.engine, self.state.step, client)

    # -- one contrastive batch --------------------------------------------------------------
    def _encode(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engine(**{k: v.to(self.engine.device, non_blocking=True) for k, v in part.items()})

    def _micro_step(self, batch: dict) -> torch.Tensor:
        """Forward + backward of one contrastive batch; returns this rank's loss. Each side
        is encoded packed or in length-sorted chunks, as ``train.chunk_tokens`` says."""
        chunk, budget = self.cfg.train.grad_cache_chunk, self.resolved.chunk_tokens
        if chunk:
            boundary = (self.state.micro + 1) % self.cfg.train.grad_accum == 0

            def backward(surrogate: torch.Tensor, last: bool) -> None:
                self.engine.set_gradient_accumulation_boundary(last and boundary)
                self.engine.backward(surrogate)

            return grad_cache_step(self._encode, backward, self.loss_fn, batch, chunk, budget)
        encoded = {name: encode_chunked(self._encode, part, budget) for name, part in batch.items()}
        loss = self.loss_fn(encoded["query"], encoded["passage"], encoded.get("negatives"))
        self.engine.backward(loss)
        return loss.detach()

    def _evaluate(self, evaluate: Callable[[str], dict], label: str, monitor: Monitor) -> None:
        self.engine.eval()
        summary = evaluate(label)
        self.engine.train()
        self.state.evaluated = self.state.step
        monitor.evaluation(self.state.step, label, summary)

    def _diverged(self, epoch: int) -> Diverged:
        """The error for a non-finite loss in optimizer step ``step + 1``. That loss came
        from the weights after step ``step``, so the checkpoint of that step is not a good
        one: ``latest`` is pointed at the newest checkpoint before it."""
        failing = self.state.step + 1
        good = self.checkpointer.newest_before(failing - 1)
        where = f"loss is not finite at step {failing} (epoch {epoch})"
        if good is None:
            return Diverged(f"{where}; no checkpoint in {self.checkpointer.root} predates the weights that produced it")
        self.checkpointer.point_to(good)
        return Diverged(f"{where}; the last good checkpoint is {good} in {self.checkpointer.root} (now 'latest')")

    def _preempt(self, monitor: Monitor) -> Preempted:
        tag = self.save()
        monitor.event(f"signal received: checkpoint {tag} written, exiting for requeue")
        return Preempted(tag)

    # -- the loop -----------------------------------------------------------------------
    def fit(self, evaluate: Callable[[str], dict] | None = None, on_gradients: Callable[[], None] | None = None) -> TrainState:
        """Train to the end (or ``train.max_steps``). ``evaluate(label)`` runs on every rank
        after each epoch (with ``eval.every_epoch``) and once at the end; it returns the
        headline numbers, which are logged with the step. ``on_gradients()`` runs on every
        rank once an optimizer step's gradients are complete (after the backward of its
        last contrastive batch, before the optimizer applies them), for a probe that reads
        them (tests/integration/matrix_worker.py). A stop signal (see :mod:`hbt.signals`) ends it after
        the current step, or after the current evaluation, with a checkpoint and
        :class:`Preempted`."""
        signals.install()
        t = self.cfg.train
        monitor = Monitor(self.run_dir, self.resolved.total_steps, self.state.step, enabled=self.env.is_main)
        self.engine.train()
        try:
            while self.state.step < self.resolved.total_steps and self.sampler.epoch < t.epochs:
                epoch = self.sampler.epoch
                self._train_epoch(epoch, monitor, on_gradients)
                if self.sampler.cursor >= len(self.sampler):
                    self.sampler.set_epoch(epoch + 1)
                    if evaluate is not None and (self.cfg.eval.every_epoch or self.sampler.epoch >= t.epochs):
                        self._evaluate(evaluate, f"epoch-{epoch}", monitor)
                    if stop_requested():  # arrived during the evaluation (or the last checkpoint)
                        raise self._preempt(monitor)
            if self.state.step and self.checkpointer.latest() != f"step-{self.state.step:08d}":
                self.save()
            if evaluate is not None and self.state.evaluated != self.state.step:
                self._evaluate(evaluate, f"step-{self.state.step}", monitor)
        finally:
            monitor.close()
        return self.state

    def _train_epoch(self, epoch: int, monitor: Monitor, on_gradients: Callable[[], None] | None) -> None:
        """Train on the current epoch from the sampler's cursor to its end, or to the run's
        last step: one DeepSpeed micro-step per contrastive batch, every rank agreeing on
        stop signals and non-finite losses after each, and after each optimizer step the
        metrics, a pre-emption checkpoint if asked, and the periodic checkpoint."""
        t = self.cfg.train
        tick = time.perf_counter()
        step_loss = 0.0  # sum of this optimizer step's contrastive-batch losses (this rank)
        step_wait = 0.0  # seconds this step waited for its batches
        lo, hi = self.sampler.rank_slice()
        batches = RankBatches(self.sampler.plan(), lo, hi, self.data, self.tokenize)
        for b, batch, waited in stream(batches, self.sampler.cursor, self.cfg.data.num_workers, self.cfg.data.prefetch):
            self.sampler.cursor = b + 1  # what was trained on; the workers may have read further
            step_wait += waited
            loss = self._micro_step(batch)
            if on_gradients is not None and (self.state.micro + 1) % t.grad_accum == 0:
                on_gradients()
            value = loss.item()  # the one wait for the device per contrastive batch: agreeing on a NaN needs it
            stop, bad = all_max([float(signals.received()), float(not math.isfinite(value))])
            if bad:
                raise self._diverged(epoch)
            step_loss += value
            lr = self.engine.get_lr()[0]  # the rate this step applies (step() moves the schedule on)
            if self.cfg.train.grad_clip > 0 and clips_in_torch(self.resolved) and self.engine.is_gradient_accumulation_boundary():
                torch.nn.utils.clip_grad_norm_(self.engine.module.parameters(), self.cfg.train.grad_clip, foreach=True)
            self.engine.step()
            self.state.micro += 1
            if self.state.micro % t.grad_accum:
                continue
            self.state.step += 1
            now = time.perf_counter()
            kind = self.sampler.plan()[self.sampler.cursor - 1].label
            monitor.step({"step": self.state.step, "epoch": epoch, "loss": all_mean(step_loss / t.grad_accum),
                          "lr": lr, "samples_per_s": t.batch_size * t.grad_accum / (now - tick),
                          "data_wait": step_wait / (now - tick), "batch": kind})
            step_loss = step_wait = 0.0
            tick = now
            if stop:
                raise self._preempt(monitor)
            if self.state.step % t.checkpoint_every == 0:
                self.save()
            if self.state.step >= self.resolved.total_steps:
                return
