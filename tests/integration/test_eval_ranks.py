"""Distributed evaluation: 2 and 3 gloo processes, each encoding and searching its shard,
give exactly the one-process results (tests/unit/test_eval.py checks those against
ir-measures and a brute-force ranking)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import eval_world

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("eval_ranks")]  # one worker: its module fixture (single_eval) is built once


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_single_process_results(world: int, single_eval: dict) -> None:
    got = eval_world(world)
    ref = single_eval["result"]
    for setting in ("mono", "cross", "multi"):
        assert got["result"][setting] == ref[setting]  # exact: ranks are integers, metrics their functions
    assert got["result"]["bias"] == ref["bias"]
    for x in ref["topk"]["lists"]:
        assert (got["result"]["topk"]["lists"][x][1] == ref["topk"]["lists"][x][1]).all()
    assert (got["topk"][1] == single_eval["topk"][1]).all()
    assert np.abs(got["topk"][0] - single_eval["topk"][0]).max() < 1e-5
