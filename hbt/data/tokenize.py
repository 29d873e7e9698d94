"""Texts to token ids: the prefixes and length limits of a run, and padding."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from hbt.errors import InputError


@dataclass(frozen=True)
class TextSpec:
    """How texts become token ids: prefixes (e5's ``query: ``) and length limits."""

    query_prefix: str = ""
    passage_prefix: str = ""
    max_query_length: int = 32
    max_passage_length: int = 64


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what the tokenizer does; not of its current truncation/padding settings,
    which every call with ``truncation=True`` rewrites (those are in :class:`TextSpec`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def pad(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: ``input_ids`` and ``attention_mask``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class PairTokenizer:
    """Texts of a batch of pairs -> padded token ids: queries, positives and, with
    ``hard_negatives=k``, k negatives per pair (cycling when a pair has fewer), so every
    rank's negative block has the same shape. Tokenising per batch (in DataLoader
    workers, see :mod:`hbt.batches`) costs a few milliseconds and no start-up time,
    whatever the corpus size; a cached pass over 10^7 pairs would cost minutes first."""

    tokenizer: PreTrainedTokenizerBase
    spec: TextSpec
    hard_negatives: int = 0

    def _ids(self, texts: list[str], prefix: str, max_length: int) -> dict[str, torch.Tensor]:
        ids = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
        return pad(ids, self.tokenizer.pad_token_id)

    def __call__(self, queries: list[str], passages: list[str], negatives: list[list[str]] | None = None) -> dict:
        spec = self.spec
        batch = {"query": self._ids(queries, spec.query_prefix, spec.max_query_length),
                 "passage": self._ids(passages, spec.passage_prefix, spec.max_passage_length)}
        if self.hard_negatives:
            if negatives is None or any(not n for n in negatives):
                raise InputError("train.hard_negatives", "a pair of this batch has no hard negative")
            flat = [n[i % len(n)] for n in negatives for i in range(self.hard_negatives)]
            batch["negatives"] = self._ids(flat, spec.passage_prefix, spec.max_passage_length)
        return batch
