"""The contrastive loss in one process: GradCache gives the plain step's loss and
gradients, with hard negatives and the symmetric term taking part; encoding in
length-sorted chunks or packed (plain and GradCache) changes neither the loss nor the
gradients. That 2 and 3 ranks, each with a slice of the contrastive batch, give these
is tests/integration/test_loss_ranks.py."""

from __future__ import annotations

import pytest
import torch

from hbt.loss import ContrastiveLoss
from hbt.padding import length_chunks
from tests.helpers import LOSS_BATCH, LOSS_CASES, LOSS_CHUNK_TOKENS, fake_batch, loss_and_grads, max_diff


@pytest.mark.parametrize("case", LOSS_CASES, ids=["plain", "symmetric+hard-negatives"])
def test_grad_cache_equals_plain_step(case: dict) -> None:
    ref_loss, ref_grads = loss_and_grads(0, 1, grad_cache=None, **case)
    loss, grads = loss_and_grads(0, 1, grad_cache=5, **case)
    assert abs(loss - ref_loss) <= 1e-5
    assert max_diff(grads, ref_grads) <= 1e-5


def test_length_chunks_sort_and_fit_the_budget() -> None:
    """The chunks partition the batch, longest first, each within the token budget at its
    own width (or a single text) and within GradCache's text count; so fake_batch really
    is encoded in several chunks of different widths by the equivalence tests below."""
    mask = fake_batch()["passage"]["attention_mask"]
    lengths = mask.sum(1)
    for max_texts in (None, 3):
        chunks = length_chunks(mask, LOSS_CHUNK_TOKENS, max_texts)
        order = torch.cat(chunks)
        assert sorted(order.tolist()) == list(range(LOSS_BATCH))
        assert lengths[order].tolist() == sorted(lengths.tolist(), reverse=True)
        widths = [int(lengths[rows].max()) for rows in chunks]
        assert all(len(rows) * w <= LOSS_CHUNK_TOKENS or len(rows) == 1 for rows, w in zip(chunks, widths))
        assert all(len(rows) <= (max_texts or LOSS_BATCH) for rows in chunks)
        assert len(set(widths)) > 2
    assert [c.tolist() for c in length_chunks(mask, None, 5)] == [list(range(5)), list(range(5, 10)), [10, 11]]


@pytest.mark.parametrize("remedy", [LOSS_CHUNK_TOKENS, "packed"], ids=["chunks", "packed"])
@pytest.mark.parametrize("grad_cache", [None, 5], ids=["plain", "grad-cache"])
@pytest.mark.parametrize("case", LOSS_CASES, ids=["plain", "symmetric+hard-negatives"])
def test_chunks_and_packing_give_the_padded_loss_and_gradients(case: dict, grad_cache: int | None, remedy: int | str) -> None:
    ref_loss, ref_grads = loss_and_grads(0, 1, grad_cache=None, **case)
    loss, grads = loss_and_grads(0, 1, grad_cache=grad_cache, chunk_tokens=remedy, **case)
    assert abs(loss - ref_loss) <= 1e-5
    assert max_diff(grads, ref_grads) <= 1e-5


def test_loss_prefers_the_positive() -> None:
    q = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = ContrastiveLoss(0.05)
    assert loss(q, q) < 0.01 < loss(q, q.roll(1, 0))
