"""``hbt mine``: hard negatives for every (item, language) pair of a corpus, on 1 to N ranks.

Each pair's query (language L) is searched against L's candidate pool
(``corpus.retrieval.candidates[L]``); its negatives are drawn from a window of that
ranking (``--range a-b``: skip the top ``a``, which are often unlabelled positives, keep
ranks ``a+1 .. b``), never a passage the evaluation counts as relevant to the query nor
one whose text is the positive's, optionally never one scoring above ``r`` times the
positive (positive-aware filtering). docs/mining.md has the rules and the output format.

The modules, in the order a job runs them: :mod:`~hbt.mine.choose` (the settings and
the choice from a ranking), :mod:`~hbt.mine.layout` (the queries, their pools and what
each may never get), :mod:`~hbt.mine.encode` (the embeddings, sharded over ranks),
:mod:`~hbt.mine.search` (the rankings, merged over ranks, and the choice per block of
queries), :mod:`~hbt.mine.output` (rank 0's files) and :mod:`~hbt.mine.job` (the job).
The docstrings of ``encode`` and ``search`` say why the output does not depend on the
number of ranks.
"""

from hbt.mine.choose import MineSettings, parse_range
from hbt.mine.job import MineArgs, run_mine
from hbt.mine.layout import MineLayout
from hbt.mine.search import Search, mine_embeddings

__all__ = ["MineArgs", "MineLayout", "MineSettings", "Search", "mine_embeddings", "parse_range", "run_mine"]
