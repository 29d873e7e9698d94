"""Encoding a list of texts (a rank's share of them: :func:`shard_bounds`)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from hbt.data.tokenize import pad
from hbt.model import BiEncoder
from hbt.padding import inference_packed


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [start, end) of rank ``rank``: every index exactly once, sizes differ by at most 1."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@torch.no_grad()
def encode(model: BiEncoder, tokenizer, texts: list[str], max_length: int, batch_size: int = 128,
           desc: str | None = None, packed: bool | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (prefixes already applied), in order.
    Texts are encoded shortest first so that each batch pads little, and the few batches
    that still pad much packed, as :func:`hbt.padding.inference_packed` decides (the same
    embeddings up to float rounding, without computing the padding), unless ``packed``
    says which (``hbt mine``, benchmarks and tests)."""
    device = next(model.parameters()).device
    dim = model.encoder.config.hidden_size
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, leave=False):
        rows = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad([ids[i] for i in rows], tokenizer.pad_token_id).items()}
        with model.packing(inference_packed(model.encoder, batch) if packed is None else packed):
            out[rows] = model(**batch).float().cpu().numpy()
    model.train(was_training)
    return out
