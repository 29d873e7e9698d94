"""Encoding a mining job's texts, sharded over ranks so that the embeddings do not depend
on their number.

Texts are encoded in *global* batches (all texts sorted by length, cut every
``batch_size``), batch ``b`` on rank ``b mod world``, so each text is encoded in the
same batch whatever the rank count. Embeddings go to memory-mapped ``.npy`` files: each
rank keeps its own candidates and a full copy of the queries (exchanged in rounds).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hbt.dist import DistEnv, gather_objects
from hbt.eval.encode import encode
from hbt.mine.layout import MineLayout

EXCHANGE_ROWS = 16384  # query embeddings sent per rank and round when ranks share them


def global_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Every text's index in batches of similar length (by characters; the order and cut
    depend on the texts and ``batch_size`` only, never on the rank count)."""
    order = np.argsort(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def encode_shard(model, tokenizer, texts: list[str], prefix: str, max_length: int, batch_size: int, path: Path,
                 env: DistEnv, desc: str | None) -> tuple[np.ndarray, np.memmap]:
    """This rank's share of ``texts`` (global batches ``rank, rank + world, ...`` of
    ``env``): the ascending global ids it encoded and their embeddings, row for row, in a
    ``.npy`` map."""
    mine = global_batches(texts, batch_size)[env.rank::env.world_size]
    own = np.sort(np.concatenate(mine)) if mine else np.zeros(0, dtype=np.int64)
    dim = model.encoder.config.hidden_size
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(own), dim))
    for batch in tqdm(mine, desc=desc, disable=desc is None, leave=False):
        # Padded, though these batches (cut by characters) pad much and would encode faster
        # packed (docs/BENCHMARKS.md §4): packing moves embeddings by float rounding, which
        # swaps near-tied candidates and so changes mined negatives, and issue 23 wants a
        # corpus mined to the same bytes.
        emb = encode(model, tokenizer, [prefix + texts[i] for i in batch], max_length, batch_size=len(batch), packed=False)
        out[np.searchsorted(own, batch)] = emb
    out.flush()
    return own, out


def share_rows(own: np.ndarray, rows: np.ndarray, n: int, path: Path, env: DistEnv) -> np.memmap:
    """All ``n`` rows on every rank of ``env``, in a ``.npy`` map at ``path``, from each
    rank's ``rows`` (global ids ``own``): exchanged in rounds of :data:`EXCHANGE_ROWS` per
    rank, so no rank ever holds more than a round of other ranks' rows in memory."""
    full = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, rows.shape[1]))
    rounds = max(-(-c // EXCHANGE_ROWS) for c in gather_objects(len(own), env))
    for r in range(rounds):
        s = slice(r * EXCHANGE_ROWS, (r + 1) * EXCHANGE_ROWS)
        for ids, emb in gather_objects((own[s], np.asarray(rows[s])), env):
            full[ids] = emb
    full.flush()
    return full


def encode_layout(model, tokenizer, layout: MineLayout, spec, batch_size: int, work: Path, env: DistEnv,
                  timings: dict[str, float]) -> tuple[np.memmap, np.memmap, np.ndarray]:
    """Every query's embedding (shared by all ranks) and this rank's candidates' with their
    global ids, in ``.npy`` maps under ``work``; the seconds each took go into ``timings``."""
    show = env.is_main
    tick = time.perf_counter()
    q_own, q_rows = encode_shard(model, tokenizer, layout.query_texts, spec.query_prefix, spec.max_query_length,
                                 batch_size, work / "queries-own.npy", env, "encode queries" if show else None)
    queries = share_rows(q_own, q_rows, len(layout.query_texts), work / "queries.npy", env)
    del q_rows
    timings["encode_queries_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    c_own, cands = encode_shard(model, tokenizer, layout.candidates.texts, spec.passage_prefix, spec.max_passage_length,
                                batch_size, work / "candidates.npy", env, "encode candidates" if show else None)
    timings["encode_candidates_s"] = time.perf_counter() - tick
    return queries, cands, c_own
