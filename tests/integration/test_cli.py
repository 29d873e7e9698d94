"""The command line lists its subcommands, every subcommand has --help, and the ``hbt
data`` commands print and write what the data layer and the sampler give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import index_of_corpus, run_hbt

SUBCOMMANDS = [["data"], ["data", "stats"], ["data", "sample"], ["data", "plan"], ["config"], ["train"], ["eval"], ["mine"], ["report"], ["sweep"]]


def test_top_level_help_lists_subcommands() -> None:
    out = run_hbt("--help")
    assert out.returncode == 0
    for name in ("data", "config", "train", "eval", "report", "sweep"):
        assert name in out.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c))
def test_every_subcommand_has_help(command: list[str]) -> None:
    out = run_hbt(*command, "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: hbt " + " ".join(command))


def test_data_sample_prints_the_mix() -> None:
    out = run_hbt("data", "sample", "synthetic:items=400,languages=3", "--batch-size", "16", "--alpha", "0.25")
    assert out.returncode == 0, out.stderr
    assert "epoch 0: 25 contrastive batches of 16, 6 mono (0.24), 19 cross" in out.stdout


def test_data_stats_cli_prints_xquad_table(xquad_r: Path) -> None:
    out = run_hbt("data", "stats", str(xquad_r))
    assert out.returncode == 0, out.stderr
    assert "| th | 1,190 | 1,190 | 852 |" in out.stdout
    assert "| de | 1,190 | 1,190 | 1,276 |" in out.stdout
    assert "| all | 1,190 | 13,090 | 13,014 |" in out.stdout


def lareqa_with_shared_answers(root: Path, paragraphs: int = 16) -> Path:
    """en/de/fr files: in every paragraph two questions share one answer sentence (in every
    language, as in XQuAD-R) and a third has its own."""
    for lang in ("en", "de", "fr"):
        paras = []
        for p in range(paragraphs):
            sentences = [f"{lang} paragraph {p} sentence {s}." for s in range(3)]
            starts = [sum(len(x) + 1 for x in sentences[:s]) for s in range(3)]
            qas = [(f"p{p}a", 0), (f"p{p}b", 0), (f"p{p}c", 2)]
            paras.append({"context": " ".join(sentences), "sentences": sentences,
                          "sentence_breaks": [[a, a + len(s)] for a, s in zip(starts, sentences)],
                          "qas": [{"id": qid, "question": f"{lang} question {qid}?", "answers": [{"text": "x", "answer_start": starts[s]}]}
                                  for qid, s in qas]})
        (root / f"{lang}.json").write_text(json.dumps({"data": [{"title": "T", "paragraphs": paras}]}))
    return root


@pytest.mark.parametrize("alpha", ["0", "0.5", "1"])
def test_data_plan_writes_every_batch_with_item_ids(tmp_path: Path, alpha: str) -> None:
    from hbt.data import load_corpus
    from hbt.sampling import HybridBatchSampler, SamplerConfig

    data = lareqa_with_shared_answers(tmp_path)
    out = tmp_path / "plan.jsonl"
    result = run_hbt("data", "plan", str(data), "--batch-size", "8", "--alpha", alpha, "--seed", "3", "--epochs", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    corpus = load_corpus(str(data))
    sampler = HybridBatchSampler(index_of_corpus(corpus), SamplerConfig(batch_size=8, alpha=float(alpha), seed=3))
    expected = [{"epoch": e, "index": i, "kind": b.kind, "pairs": [[corpus.items[n].id, q, p] for n, q, p in b.pairs]}
                for e in range(2) for i, b in enumerate(sampler.plan(e))]
    assert lines == expected and len(lines) == 2 * (48 // 8)  # every batch, with the question ids
    for batch in lines:
        answers = [qid[:-1] for qid, _, _ in batch["pairs"] if qid[-1] in "ab"]
        assert len(answers) == len(set(answers))  # p7a and p7b share an answer: never in one batch
        if batch["kind"] == "mono":
            assert len({lang for pair in batch["pairs"] for lang in pair[1:]}) == 1
        else:
            assert all(q != p for _, q, p in batch["pairs"])
    assert f"wrote {len(lines)} batches (2 epochs)" in result.stdout


def test_data_plan_refuses_an_impossible_batch(tmp_path: Path) -> None:
    out = tmp_path / "plan.jsonl"
    result = run_hbt("data", "plan", "synthetic:items=40,languages=2", "--batch-size", "64", "--out", str(out))
    assert result.returncode == 2 and "train.batch_size" in result.stderr and not out.exists()
