"""The cross-rank contrastive loss: 2 and 3 gloo processes, each with a slice of the
contrastive batch, give the loss and parameter gradients of one process with all of it.
Also: GradCache gives the plain step's gradients, and hard negatives and the symmetric
term take part in both."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import XLMRobertaConfig, XLMRobertaModel

from hbt.loss import ContrastiveLoss, grad_cache_step
from hbt.model import BiEncoder

BATCH, NEGS = 12, 6  # divisible by 1, 2 and 3 ranks


def tiny_model() -> BiEncoder:
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BiEncoder(XLMRobertaModel(config, add_pooling_layer=False), "mean")


def fake_batch() -> dict:
    g = torch.Generator().manual_seed(1)

    def texts(n: int) -> dict:
        ids = torch.randint(5, 300, (n, 16), generator=g)
        mask = (torch.arange(16) < torch.randint(4, 17, (n, 1), generator=g)).long()
        return {"input_ids": ids, "attention_mask": mask}

    return {"query": texts(BATCH), "passage": texts(BATCH), "negatives": texts(NEGS)}


def shard(batch: dict, rank: int, world: int) -> dict:
    return {name: {k: v.chunk(world)[rank] for k, v in part.items()} for name, part in batch.items()}


def loss_and_grads(rank: int, world: int, symmetric: bool, negatives: bool, grad_cache: int | None) -> tuple[float, dict]:
    """This rank's view: local loss and gradients averaged over ranks (what DDP/ZeRO do)."""
    model = tiny_model()
    batch = shard(fake_batch(), rank, world)
    if not negatives:
        batch.pop("negatives")
    loss_fn = ContrastiveLoss(temperature=0.05, symmetric=symmetric)
    encode = lambda part: model(**part)  # noqa: E731
    if grad_cache:
        loss = grad_cache_step(encode, lambda surrogate, last: surrogate.backward(), loss_fn, batch, grad_cache)
    else:
        loss = loss_fn(encode(batch["query"]), encode(batch["passage"]),
                       encode(batch["negatives"]) if negatives else None)
        loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:
        dist.all_reduce(loss)
        loss /= world
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
    return loss.item(), grads


def _worker(rank: int, world: int, init: str, out: str, kwargs: dict) -> None:
    torch.set_num_threads(1)
    if kwargs.pop("classic_gather", False):  # what a torch without the functional collective runs
        import hbt.loss

        hbt.loss.all_gather_single_autograd = None
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = loss_and_grads(rank, world, **kwargs)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def run_world(world: int, **kwargs) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(world, f"file://{tmp}/rendezvous", out, kwargs), nprocs=world, join=True)
        return torch.load(out)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


CASES = [dict(symmetric=False, negatives=False), dict(symmetric=True, negatives=True)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", CASES, ids=["plain", "symmetric+hard-negatives"])
def test_distributed_loss_equals_single_process(world: int, case: dict) -> None:
    ref_loss, ref_grads = loss_and_grads(0, 1, grad_cache=None, **case)
    loss, grads = run_world(world, grad_cache=None, **case)
    assert abs(loss - ref_loss) <= 1e-5
    assert max_diff(grads, ref_grads) <= 1e-5
    assert len(grads) == len(ref_grads) > 10


@pytest.mark.parametrize("case", CASES, ids=["plain", "symmetric+hard-negatives"])
def test_grad_cache_equals_plain_step(case: dict) -> None:
    ref_loss, ref_grads = loss_and_grads(0, 1, grad_cache=None, **case)
    loss, grads = loss_and_grads(0, 1, grad_cache=5, **case)
    assert abs(loss - ref_loss) <= 1e-5
    assert max_diff(grads, ref_grads) <= 1e-5


@pytest.mark.slow
def test_classic_autograd_all_gather_gives_the_same_gradients() -> None:
    """The fallback for torch releases without ``all_gather_single_autograd``."""
    ref_loss, ref_grads = loss_and_grads(0, 1, grad_cache=None, symmetric=True, negatives=True)
    loss, grads = run_world(2, grad_cache=None, symmetric=True, negatives=True, classic_gather=True)
    assert abs(loss - ref_loss) <= 1e-5 and max_diff(grads, ref_grads) <= 1e-5


@pytest.mark.slow
def test_grad_cache_across_ranks_equals_single_process() -> None:
    ref_loss, ref_grads = loss_and_grads(0, 1, grad_cache=None, symmetric=True, negatives=True)
    loss, grads = run_world(2, grad_cache=4, symmetric=True, negatives=True)
    assert abs(loss - ref_loss) <= 1e-5 and max_diff(grads, ref_grads) <= 1e-5


def test_loss_prefers_the_positive() -> None:
    q = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = ContrastiveLoss(0.05)
    assert loss(q, q) < 0.01 < loss(q, q.roll(1, 0))
