"""Tokenisation with an Arrow cache (Hugging Face ``datasets``), and the training collator.

Every (item, language) of a corpus is one row: its query, positive passage and hard
negatives, tokenised once with ``Dataset.map(batched=True)`` into an Arrow file named
by what determines its content (corpus fingerprint, tokenizer, prefixes, lengths). A
second run, or every other rank, memory-maps that file instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from hbt.data.corpus import Corpus
from hbt.sampler import PairKey


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


class TokenizedCorpus:
    """Token ids of every query, passage and hard negative of a corpus, by (item, language)."""

    def __init__(self, corpus: Corpus, tokenizer: PreTrainedTokenizerBase, spec: TextSpec, cache_dir: str | Path):
        self.tokenizer, self.spec = tokenizer, spec
        key = hashlib.sha256(f"{corpus.fingerprint()}|{tokenizer_fingerprint(tokenizer)}|{spec}".encode()).hexdigest()[:20]
        self.cache_file = Path(cache_dir) / f"tokens-{key}.arrow"
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        rows = [(n, lang, pair) for n, item in enumerate(corpus.items) for lang, pair in sorted(item.pairs.items())]
        self.row_of: dict[tuple[int, str], int] = {(n, lang): r for r, (n, lang, _) in enumerate(rows)}
        self._views: dict[str, datasets.Dataset] = {}
        if self.cache_file.exists():
            self.table = datasets.Dataset.from_file(str(self.cache_file))
            return
        raw = datasets.Dataset.from_dict({
            "query": [spec.query_prefix + p.query for _, _, p in rows],
            "passage": [spec.passage_prefix + p.passage for _, _, p in rows],
            "negatives": [[spec.passage_prefix + n for n in p.negatives] for _, _, p in rows],
        })
        # map() writes to a temporary file and renames it: a reader never sees half a cache.
        self.table = raw.map(
            self._tokenize, batched=True, batch_size=1000, remove_columns=raw.column_names,
            cache_file_name=str(self.cache_file), desc="tokenising",
        )

    def _tokenize(self, batch: dict) -> dict:
        tok, spec = self.tokenizer, self.spec
        flat_negs = [n for negs in batch["negatives"] for n in negs]
        neg_ids = tok(flat_negs, truncation=True, max_length=spec.max_passage_length)["input_ids"] if flat_negs else []
        grouped, start = [], 0
        for negs in batch["negatives"]:
            grouped.append(neg_ids[start:start + len(negs)])
            start += len(negs)
        return {
            "query_ids": tok(batch["query"], truncation=True, max_length=spec.max_query_length)["input_ids"],
            "passage_ids": tok(batch["passage"], truncation=True, max_length=spec.max_passage_length)["input_ids"],
            "negative_ids": grouped,
        }

    def _column(self, name: str, rows: list[int]) -> list:
        if name not in self._views:  # a one-column view: a lookup then decodes only that column
            self._views[name] = self.table.select_columns([name])
        return self._views[name][rows][name]

    def rows(self, keys: list[PairKey], negatives: bool = True) -> list[dict]:
        """The token ids of a batch of pairs (query in one language, passage in another),
        read with one Arrow lookup per column rather than one per pair."""
        q_rows = [self.row_of[(item, q)] for item, q, _ in keys]
        p_rows = [self.row_of[(item, p)] for item, _, p in keys]
        queries, passages = self._column("query_ids", q_rows), self._column("passage_ids", p_rows)
        negs = self._column("negative_ids", p_rows) if negatives else [[] for _ in keys]
        return [{"query": q, "passage": p, "negatives": n} for q, p, n in zip(queries, passages, negs)]

    def __getitem__(self, key: PairKey) -> dict:
        return self.rows([key])[0]

    def __len__(self) -> int:
        return len(self.table)


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
class PairCollator:
    """Pads a batch of pairs; with ``hard_negatives=k`` takes k negatives per pair
    (cycling when a pair has fewer), so every rank's negative block has the same shape."""

    pad_id: int
    hard_negatives: int = 0

    def __call__(self, rows: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        batch = {"query": pad([r["query"] for r in rows], self.pad_id), "passage": pad([r["passage"] for r in rows], self.pad_id)}
        if self.hard_negatives:
            negs = [r["negatives"][i % len(r["negatives"])] for r in rows for i in range(self.hard_negatives)]
            batch["negatives"] = pad(negs, self.pad_id)
        return batch
