"""Hard negatives kept away from the queries they answer: which answer groups each
(item, language) pair blocks, and the swaps that mend a plan where a pair shares a batch
with an item of a group it blocks (docs/sampler.md, "Hard negatives").

This is not an equivalence (two pairs may block one group and still meet), so it is not
folded into the answer groups; the planner plans as without negatives and then mends."""

from __future__ import annotations

from typing import Callable

import numpy as np

from hbt.errors import InputError
from hbt.sampling.csr import csr_positions

# (item, batch) -> the (query, passage) languages the item would have in that batch, or
# None when it cannot be there: the planner's rule, which a swap must keep.
SlotLanguages = Callable[[int, int], tuple[int, int] | None]


class PairBlocks:
    """Per (item, language) pair, in the index's pair order, the answer groups other than
    its own that hold one of the pair's hard negatives as a passage text (CSR over the
    pairs: ``offsets``, ``groups``). A batch never holds a pair together with an item of a
    group it blocks, so no hard negative is relevant to another query of its batch."""

    def __init__(self, item_group: np.ndarray, n_langs: np.ndarray, langs: np.ndarray, n_languages: int,
                 offsets: np.ndarray, groups: np.ndarray):
        self.item_group, self.n_langs, self.langs, self.n_languages = item_group, n_langs, langs, n_languages
        self.offsets, self.groups = offsets, groups
        self._pair_keys: np.ndarray | None = None  # built by blocked_by, which only a plan with blocks calls

    @classmethod
    def of_negatives(cls, item_group: np.ndarray, n_langs: np.ndarray, langs: np.ndarray, n_languages: int,
                     passages: np.ndarray, negatives: tuple[np.ndarray, np.ndarray] | None) -> "PairBlocks":
        """The blocks of ``negatives`` (per pair, CSR offsets over the pairs and text ids
        like ``passages``): a negative equal to item B's passage, in any language, is
        relevant to B's query, and B's group is every item sharing a passage with B. Per
        pair, not per item: a pair trains with the negatives of the passage language it is
        given, so only those can meet another query of its batch (per item, an
        11-language item blocked every group any of its languages' negatives answer,
        which left a small pool unplannable)."""
        n = len(n_langs)
        offsets, groups = np.zeros(len(langs) + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
        if negatives is None or not len(negatives[1]) or not len(passages):
            return cls(item_group, n_langs, langs, n_languages, offsets, groups)
        neg_offsets, neg_ids = negatives
        item_of_pair = np.repeat(np.arange(n, dtype=np.int64), n_langs)
        pair_of_neg = np.repeat(np.arange(len(langs), dtype=np.int64), np.diff(neg_offsets))
        by_text = np.argsort(passages, kind="stable")
        texts = passages[by_text]
        at = np.minimum(np.searchsorted(texts, neg_ids), len(texts) - 1)
        hit = texts[at] == neg_ids
        pair, group = pair_of_neg[hit], item_group[item_of_pair[by_text[at[hit]]]]
        other = group != item_group[item_of_pair[pair]]  # its own group's text: nothing a batch can change
        key = np.unique(pair[other] * n + group[other])
        np.cumsum(np.bincount(key // n, minlength=len(langs)), out=offsets[1:])
        return cls(item_group, n_langs, langs, n_languages, offsets, key % n)

    def __len__(self) -> int:
        """How many (pair, blocked group) entries there are: 0 means nothing to mend."""
        return len(self.groups)

    def blocked_by(self, items: np.ndarray, langs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The answer groups that ``items`` block when they train with passages in
        ``langs`` (each item must have its language: the planner only asks for those), as
        (position in the input, group)."""
        if self._pair_keys is None:  # (item, language) of every pair, ascending as the pairs are
            self._pair_keys = np.repeat(np.arange(len(self.n_langs), dtype=np.int64), self.n_langs) * self.n_languages + self.langs
        keys = np.asarray(items) * self.n_languages + np.asarray(langs)
        pairs = np.searchsorted(self._pair_keys, keys)
        if len(pairs) and (pairs.max() >= len(self._pair_keys) or (self._pair_keys[pairs] != keys).any()):
            raise ValueError("blocked_by: an item asked for in a language it does not have")
        owner = np.repeat(np.arange(len(pairs)), self.offsets[pairs + 1] - self.offsets[pairs])
        return owner, self.groups[csr_positions(self.offsets, pairs)]

    def conflicts(self, items: np.ndarray, plang: np.ndarray) -> np.ndarray:
        """Per batch (rows of ``items``, passage languages ``plang``), the slots whose pair
        blocks the group of another item of the batch, or whose group another pair blocks;
        all batches at once."""
        n = len(self.n_langs)
        batch_of = np.repeat(np.arange(len(items), dtype=np.int64), items.shape[1])
        flat = items.ravel()
        owner, groups = self.blocked_by(flat, plang.ravel())
        present = batch_of * n + self.item_group[flat]  # (batch, group) of every slot
        blocked = batch_of[owner] * n + groups  # (batch, group) every slot blocks
        bad = np.zeros(len(flat), dtype=bool)
        bad[owner[np.isin(blocked, present)]] = True  # it blocks someone here
        bad[np.isin(present, blocked)] = True  # someone here blocks it
        return bad.reshape(items.shape)

    def separate(self, items: np.ndarray, qlang: np.ndarray, plang: np.ndarray, fits: SlotLanguages) -> None:
        """Swap items between batches until no batch holds a pair together with an item
        of a group it blocks. A moved item takes the languages ``fits`` gives it there, so
        batches keep their kind, language, size and source, and the epoch keeps its items.
        In place and a pure function of the plan (so rank-count invariant and resumable).
        Conflicts are rare in a large pool; each is mended by the first admissible swap,
        looked for in the following batches."""
        todo = np.flatnonzero(self.conflicts(items, plang).any(axis=1))
        for b in todo.tolist():
            while True:
                bad = np.flatnonzero(self.conflicts(items[b:b + 1], plang[b:b + 1])[0])
                if not len(bad):
                    break
                if not self._swap_out(b, int(bad[0]), items, qlang, plang, fits):
                    item = int(items[b, bad[0]])
                    raise InputError("train.hard_negatives", f"cannot plan a batch for item {item} without one of its hard "
                                     f"negatives being another pair's positive: its negatives answer too many of the "
                                     f"{len(items)} batches' items (check the negatives, or lower train.batch_size)")

    def _swap_out(self, b: int, j: int, items: np.ndarray, qlang: np.ndarray, plang: np.ndarray, fits: SlotLanguages) -> bool:
        """Swap slot ``j`` of batch ``b`` with the first slot of a later (then earlier)
        batch where both items fit and then sit without conflict; False if none."""
        group = self.item_group
        mine = int(items[b, j])
        keep = np.arange(items.shape[1]) != j
        g_rest_b = group[items[b, keep]]
        blocked_by_rest_b = self.blocked_by(items[b, keep], plang[b, keep])[1]
        n = len(items)
        for b2 in ((b + step) % n for step in range(1, n)):
            there = fits(mine, b2)
            if there is None:
                continue
            my_blocks = self.blocked_by(np.array([mine]), np.array([there[1]]))[1]
            cand = items[b2]
            owners, blocked_in_b2 = self.blocked_by(cand, plang[b2])
            # a candidate must fit batch b without ``mine``: its group not there, nor blocked there
            for j2 in np.flatnonzero(~np.isin(group[cand], g_rest_b) & ~np.isin(group[cand], blocked_by_rest_b)).tolist():
                here = fits(int(cand[j2]), b)
                if here is None or np.isin(self.blocked_by(cand[j2:j2 + 1], np.array([here[1]]))[1], g_rest_b).any():
                    continue
                rest_b2 = np.delete(cand, j2)
                if group[mine] in group[rest_b2] or np.isin(group[rest_b2], my_blocks).any() \
                        or group[mine] in blocked_in_b2[owners != j2]:
                    continue
                items[b, j], items[b2, j2] = cand[j2], mine
                (qlang[b, j], plang[b, j]), (qlang[b2, j2], plang[b2, j2]) = here, there
                return True
        return False
