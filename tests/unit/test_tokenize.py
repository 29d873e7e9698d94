"""Texts become padded token ids per batch: prefixes, truncation, masks, hard negatives."""

from __future__ import annotations

import pytest

from hbt.data.tokenize import PairTokenizer, TextSpec
from hbt.errors import InputError
from hbt.model import train_tokenizer

pytestmark = pytest.mark.xdist_group("tokenize")  # one worker: its module fixture is built once

TEXTS = ["alpha beta gamma delta", "beta", "gamma delta epsilon zeta eta theta", "iota kappa"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 10, 200, 64)


def test_prefixes_truncation_and_padding(tokenizer) -> None:
    spec = TextSpec(query_prefix="beta ", passage_prefix="", max_query_length=4, max_passage_length=16)
    batch = PairTokenizer(tokenizer, spec)(TEXTS[:2], TEXTS[2:])
    expected = tokenizer(["beta " + t for t in TEXTS[:2]], truncation=True, max_length=4)["input_ids"]
    q = batch["query"]
    assert q["input_ids"].shape[1] == max(map(len, expected)) <= 4
    for row, ids, mask in zip(expected, q["input_ids"].tolist(), q["attention_mask"].tolist()):
        assert ids[: len(row)] == row and set(ids[len(row):]) <= {tokenizer.pad_token_id}
        assert mask == [1] * len(row) + [0] * (len(ids) - len(row))
    assert "negatives" not in batch


def test_hard_negatives_cycle_when_a_pair_has_fewer(tokenizer) -> None:
    batch = PairTokenizer(tokenizer, TextSpec(), hard_negatives=2)(TEXTS[:2], TEXTS[2:], [[TEXTS[0]], [TEXTS[1], TEXTS[2]]])
    first = tokenizer([TEXTS[0]], truncation=True, max_length=64)["input_ids"][0]
    ids = batch["negatives"]["input_ids"]
    assert ids.shape[0] == 4  # pair 0 repeats its only negative
    assert ids[0, : len(first)].tolist() == first == ids[1, : len(first)].tolist()


def test_a_pair_without_negatives_is_an_error_naming_the_option(tokenizer) -> None:
    with pytest.raises(InputError, match="train.hard_negatives"):
        PairTokenizer(tokenizer, TextSpec(), hard_negatives=1)(TEXTS[:2], TEXTS[2:], [[TEXTS[0]], []])
