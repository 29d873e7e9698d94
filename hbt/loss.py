"""InfoNCE with in-batch negatives gathered across ranks, and GradCache.

The gather follows OpenCLIP's ``ClipLoss(local_loss=True, gather_with_grad=True)``:
each rank scores its own queries against the passages of *all* ranks, gathered with
``torch.distributed.nn.functional.all_gather``, whose backward sums the gradients back
to the rank that produced each passage (a reduce-scatter on NCCL, an all-to-all on
gloo). Not torch's newer functional ``all_gather_single_autograd``: on gloo (torch
2.13) its asynchronous reduce-scatters corrupt the heap when several are in flight in
one backward, as the symmetric loss with hard negatives has three (a SIGSEGV in CI;
tests/integration/test_loss_ranks.py's many-step test reproduces it). With the usual
averaging of parameter gradients over ranks this gives exactly the gradient of the
single-process loss over the whole contrastive batch (tests/integration/test_loss_ranks.py
checks it on 2 and 3 processes). Like OpenCLIP's loss, :class:`ContrastiveLoss` is
handed its rank and the world size rather than asking torch.distributed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather

from hbt.padding import in_batch_order, length_chunks, take


def gather_with_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order; gradients flow back to their owners."""
    if world_size == 1:
        return x
    return torch.cat(all_gather(x.contiguous()))


class ContrastiveLoss:
    """InfoNCE over the contrastive batch: query i's positive is passage i; every other
    passage of every rank (and every hard negative) is a negative. ``symmetric`` adds
    the passage -> query direction. ``rank`` and ``world_size`` place this rank's pairs in
    the contrastive batch (its labels) and say whose passages to gather."""

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, rank: int = 0, world_size: int = 1):
        self.temperature = temperature
        self.symmetric = symmetric
        self.rank = rank
        self.world_size = world_size

    def __call__(self, queries: torch.Tensor, passages: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        local = queries.shape[0]
        labels = torch.arange(local, device=queries.device) + self.rank * local
        all_passages = gather_with_grad(passages, self.world_size)
        candidates = all_passages if negatives is None else torch.cat([all_passages, gather_with_grad(negatives, self.world_size)])
        loss = F.cross_entropy(queries @ candidates.T / self.temperature, labels)
        if self.symmetric:
            all_queries = gather_with_grad(queries, self.world_size)
            loss = (loss + F.cross_entropy(passages @ all_queries.T / self.temperature, labels)) / 2
        return loss


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(d) for d in _cuda_devices()]}


@contextmanager
def _replayed_rng(state: dict) -> Iterator[None]:
    """Run with the RNG as it was in ``state`` (then put it back), so that re-encoding a
    chunk with graph draws the same dropout masks as its first, gradient-free pass."""
    devices = _cuda_devices()
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state["cpu"])
        for d, s in zip(devices, state["cuda"]):
            torch.cuda.set_rng_state(s, d)
        yield


Encode = Callable[[dict[str, torch.Tensor]], torch.Tensor]
Backward = Callable[[torch.Tensor, bool], None]


def grad_cache_step(encode: Encode, backward: Backward, loss_fn: ContrastiveLoss, batch: dict, chunk: int,
                    max_tokens: int | None = None) -> torch.Tensor:
    """One contrastive batch with GradCache (Gao et al., 2021): embed every chunk without
    a graph, take the loss and its gradient w.r.t. the embeddings, then re-embed chunk by
    chunk with a graph and backpropagate the cached gradient. Memory grows with the chunk,
    not the batch; gradients equal the plain step's. ``backward(surrogate, is_last)``
    is the engine's backward (DeepSpeed needs to know which call ends the step).

    With ``max_tokens`` the chunks are length-sorted (at most ``chunk`` texts and
    ``max_tokens`` padded tokens each, see :func:`hbt.padding.length_chunks`) and each is
    cut to its own longest text; the embeddings are put back in batch order before the
    loss, so its gradient rows are found by the chunk's row indices."""
    parts = [name for name in ("query", "passage", "negatives") if name in batch]
    plans = {name: length_chunks(batch[name]["attention_mask"], max_tokens, chunk) for name in parts}
    states: dict[str, list[dict]] = {name: [] for name in parts}
    embeddings = {}
    with torch.no_grad():
        for name in parts:
            outs = []
            for rows in plans[name]:
                states[name].append(_rng_state())
                outs.append(encode(take(batch[name], rows)))
            embeddings[name] = in_batch_order(outs, plans[name]).requires_grad_()
    loss = loss_fn(embeddings["query"], embeddings["passage"], embeddings.get("negatives"))
    loss.backward()
    pending = [(name, i) for name in parts for i in range(len(plans[name]))]
    for n, (name, i) in enumerate(pending):
        rows = plans[name][i]
        grad = embeddings[name].grad[rows.to(embeddings[name].device)]
        with _replayed_rng(states[name][i]):
            surrogate = (encode(take(batch[name], rows)) * grad).sum()
        backward(surrogate, n == len(pending) - 1)
    return loss.detach()
