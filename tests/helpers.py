"""What the tests share, in one place: the paths and commands (``hbt``, torchrun) they run
as users do, the checks of a run's output and of a one-line error, the fault injection
the launcher tests share, builders of the data structures hbt's data layer builds from
files (made here from plain Python values), and the small models and batches that the
in-process tests and their multi-rank counterparts (tests/integration/) compare on.

``../shared`` (data and models that cannot be fetched) sits beside the repository on
developer machines and in CI; a user's fresh clone may not have it, so tests that need
it skip with a reason instead of failing (:func:`need`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import XLMRobertaConfig, XLMRobertaModel

from hbt import padding
from hbt.data import load_corpus
from hbt.data.corpus import Corpus, RetrievalSet
from hbt.data.tokenize import TextSpec
from hbt.dist import detect
from hbt.eval.encode import shard_bounds
from hbt.eval.run import evaluate
from hbt.eval.search import distributed_topk
from hbt.loss import ContrastiveLoss, grad_cache_step
from hbt.model import BiEncoder, build_tiny
from hbt.padding import encode_chunked
from hbt.sampling import LanguageIndex

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
XQUAD_R = SHARED / "data" / "xquad-r"
ME5_SMALL = SHARED / "models" / "me5-small-xquad"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared beside the repository)")
    return path


def need_cluster(available: bool, missing: str, start: str) -> None:
    """Skip a test of a cluster tool that is not here (``missing`` says what, ``start``
    how to bring it up), except under CI's HBT_REQUIRE_CLUSTER=1, where .ci/run has
    started it and its absence is a failure, not a skip."""
    if available:
        return
    if os.environ.get("HBT_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"HBT_REQUIRE_CLUSTER=1 but {missing}: {start}")
    pytest.skip(f"{missing} ({start})")


def slurm_here() -> bool:
    """A Slurm to submit to: sbatch on PATH and a slurm.conf."""
    return shutil.which("sbatch") is not None and bool(os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").exists())


SLURM_MISSING = ("no Slurm here", "start one with slurm/local/up.sh and export SLURM_CONF")


# --- commands, as users run them -------------------------------------------------------

def hbt_command(*args: str) -> list[str]:
    """The ``hbt`` command line through this interpreter (the one the tests run in)."""
    return [sys.executable, "-m", "hbt", *args]


def run_hbt(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the ``hbt`` command line as a user would, in a fresh interpreter."""
    return subprocess.run(hbt_command(*args), capture_output=True, text=True, cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone`` of ``hbt`` on ``nproc`` local ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "hbt", *args]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``hbt`` under torchrun, each rank on one thread (the ranks share the test's cores)."""
    return subprocess.run(torchrun_command(nproc, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def ok(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stderr[-3000:]


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``predicate`` while ``proc`` runs; fail with its stderr if it ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- training runs of the tiny preset ---------------------------------------------------

SMALL = ["data.train=synthetic:items=600,languages=3,seed=1", "train.batch_size=16", "train.epochs=1",
         "train.checkpoint_every=1000", "model.tiny.vocab_size=2000"]


def overrides(tmp: Path, name: str, *extra: str) -> list[str]:
    """``hbt train`` arguments of a small tiny-preset run in ``tmp / name`` (its data cache shared in ``tmp``)."""
    return ["--config", "configs/tiny.yaml", f"run.dir={tmp / name}", f"data.cache_dir={tmp / 'cache'}", *SMALL, *extra]


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss from ``metrics.jsonl``, where every step is logged once, also after resumes."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["step"] not in out, f"step {record['step']} logged twice"
        out[record["step"]] = record["loss"]
    return out


def steps_per_epoch(args: list[str]) -> int:
    """Optimizer steps of one epoch of the run ``args`` (``--config FILE`` then overrides) asks for."""
    from hbt.config import load_config
    from hbt.train import sampler_for, training_data

    cfg = load_config(args[1], args[2:])
    return len(sampler_for(cfg, training_data(cfg)))


# --- bad input ---------------------------------------------------------------------------

def status_line(line: str) -> bool:
    """A status line that may precede an error: datasets' progress bars, the one-off index
    report, and tqdm's bars (training's, an evaluation's) for an error that comes mid-run."""
    return "examples/s]" in line or line.startswith("indexed ") or "%|" in line


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, and one line on stderr (after status lines) holding every needle."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = [line for line in out.stderr.strip().splitlines() if line.strip() and not status_line(line)]  # tqdm's \r: blank lines
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- a rank lost mid-training (torchrun, mpirun, Slurm) ---------------------------------

ENDS_WITHIN_S = 60
LOST = "hbt: error: rank 0 of 2: lost rank 1 ("


def rank_pid(run_dir: Path, rank: int, variables: tuple[str, ...]) -> int | None:
    """The pid of the ``hbt train`` process of ``run_dir`` whose launcher variable says
    ``rank``: the rank itself, not its DataLoader workers (forked, same command line and
    environment, so told apart by their parent being such a process too)."""
    found: dict[int, int] = {}  # pid -> parent pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"train" in cmdline and f"run.dir={run_dir}".encode() in cmdline and b"-m" in cmdline:
            if any(f"{v}={rank}".encode() in environ for v in variables) and cmdline[0].endswith(b"python"):
                found[int(entry.name)] = parent
    ranks = [pid for pid, parent in found.items() if parent not in found]
    return ranks[0] if len(ranks) == 1 else None


def kill_rank_1_mid_training(run_dir: Path, variables: tuple[str, ...], alive: Callable[[], bool], timeout: float = 300) -> float:
    """Wait for step 5, SIGKILL rank 1; return the monotonic time of the kill."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert alive() and time.monotonic() < deadline, "training did not reach step 5"
        time.sleep(0.1)
    pid = rank_pid(run_dir, 1, variables)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


# --- data --------------------------------------------------------------------------------

def lareqa_doc(paragraphs: list[dict], title: str = "T") -> dict:
    """A LAReQA/XQuAD-R language file of one article."""
    return {"data": [{"title": title, "paragraphs": paragraphs}]}


def paragraph(sentences: list[str], qas: list[tuple[str, str, int]]) -> dict:
    """A LAReQA paragraph with its sentence breaks; ``qas`` are (id, question, answer start)."""
    breaks, pos = [], 0
    for s in sentences:
        breaks.append([pos, pos + len(s)])
        pos += len(s) + 1
    return {"context": " ".join(sentences), "sentences": sentences, "sentence_breaks": breaks,
            "qas": [{"id": i, "question": q, "answers": [{"text": "x", "answer_start": a}]} for i, q, a in qas]}


def rows_of(corpus_spec: str = "synthetic:items=300,languages=3,coverage=0.7,seed=4") -> list[dict]:
    """A corpus as the rows of a training table, one per item and language."""
    corpus = load_corpus(corpus_spec)
    return [{"id": item.id, "lang": lang, "query": p.query, "positive": p.passage, "title": item.title}
            for item in corpus.items for lang, p in sorted(item.pairs.items())]


def write_parquet(rows: list[dict], folder: Path, shards: int = 3, rename: dict[str, str] | None = None) -> Path:
    """``rows`` as Parquet shards in ``folder``, columns renamed by ``rename``."""
    folder.mkdir(parents=True, exist_ok=True)
    rename = rename or {}
    for n, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        chunk = [{rename.get(k, k): v for k, v in rows[i].items()} for i in part]
        pq.write_table(pa.Table.from_pylist(chunk), folder / f"part-{n:05d}.parquet")
    return folder


def index_of_lists(languages: Sequence[str], item_langs: Sequence[Sequence[int]], passage_ids: Sequence[dict[int, int]],
                   negative_ids: Sequence[dict[int, Sequence[int]]] | None = None) -> LanguageIndex:
    """The sampler's index of items given as lists: per item its language codes (any
    order), a ``{language code: passage id}`` dict and, optionally, a ``{language code:
    [negative passage ids]}`` dict. Each item's pairs are sorted by language, as the
    training data's are."""
    sorted_langs = [sorted(langs) for langs in item_langs]
    offsets = np.concatenate([[0], np.cumsum([len(langs) for langs in sorted_langs])]).astype(np.int64)
    langs = np.array([lang for ls in sorted_langs for lang in ls], dtype=np.int64)
    passages = np.array([ids[lang] for ls, ids in zip(sorted_langs, passage_ids) for lang in ls], dtype=np.int64)
    negatives = None
    if negative_ids is not None:
        lists = [list(negs.get(lang, ())) for ls, negs in zip(sorted_langs, negative_ids) for lang in ls]
        neg_offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        negatives = (neg_offsets, np.array([n for x in lists for n in x], dtype=np.int64))
    return LanguageIndex.from_arrays(list(languages), offsets, langs, passages, negatives=negatives)


def index_of_corpus(corpus: Corpus, hard_negatives: int = 0) -> LanguageIndex:
    """The sampler's index of a parsed corpus (texts numbered in order of appearance), with
    the first ``hard_negatives`` negatives of each pair, as training would see them."""
    code = {lang: i for i, lang in enumerate(corpus.languages)}
    text_ids: dict[str, int] = {}
    offsets, langs, passages, neg_offsets, negatives = [0], [], [], [0], []
    for item in corpus.items:
        for lang in sorted(item.pairs, key=code.__getitem__):
            langs.append(code[lang])
            passages.append(text_ids.setdefault(item.pairs[lang].passage, len(text_ids)))
            negatives += [text_ids.setdefault(n, len(text_ids)) for n in item.pairs[lang].negatives[:hard_negatives]]
            neg_offsets.append(len(negatives))
        offsets.append(len(langs))
    return LanguageIndex.from_arrays(corpus.languages, np.array(offsets, dtype=np.int64), np.array(langs, dtype=np.int64),
                                     np.array(passages, dtype=np.int64),
                                     negatives=(np.array(neg_offsets, dtype=np.int64), np.array(negatives, dtype=np.int64))
                                     if hard_negatives else None)


# --- the contrastive loss: one process with the whole batch, or a rank with its slice ----

LOSS_BATCH, LOSS_NEGATIVES = 12, 6  # divisible by 1, 2 and 3 ranks
LOSS_CHUNK_TOKENS = 40  # on fake_batch's lengths (4-16): chunks of 2 to 10 texts, each its own width
LOSS_CASES = [dict(symmetric=False, negatives=False), dict(symmetric=True, negatives=True)]


def tiny_model() -> BiEncoder:
    """A 2-layer XLM-R bi-encoder, the same weights in every process (no dropout)."""
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BiEncoder(XLMRobertaModel(config, add_pooling_layer=False), "mean")


def fake_batch() -> dict:
    """A seeded contrastive batch of token ids of lengths 4-16: queries, passages, hard negatives."""
    g = torch.Generator().manual_seed(1)

    def texts(n: int) -> dict:
        ids = torch.randint(5, 300, (n, 16), generator=g)
        mask = (torch.arange(16) < torch.randint(4, 17, (n, 1), generator=g)).long()
        return {"input_ids": ids, "attention_mask": mask}

    return {"query": texts(LOSS_BATCH), "passage": texts(LOSS_BATCH), "negatives": texts(LOSS_NEGATIVES)}


def shard(batch: dict, rank: int, world: int) -> dict:
    """Rank ``rank``'s slice of every part of ``batch``, as the sampler hands it out."""
    return {name: {k: v.chunk(world)[rank] for k, v in part.items()} for name, part in batch.items()}


def loss_and_grads(rank: int, world: int, symmetric: bool, negatives: bool, grad_cache: int | None,
                   chunk_tokens: int | str | None = None) -> tuple[float, dict]:
    """This rank's view: local loss and gradients averaged over ranks (what DDP/ZeRO do).
    ``chunk_tokens=None`` is the reference: each side in one padded pass, no sorting;
    ``"packed"`` packs each side (attention in groups of LOSS_CHUNK_TOKENS, so several)."""
    model = tiny_model()
    packed = chunk_tokens == "packed"
    if packed:
        model.pack()
        chunk_tokens = None  # a packed side is one pass, as in the engine
    batch = shard(fake_batch(), rank, world)
    if not negatives:
        batch.pop("negatives")
    loss_fn = ContrastiveLoss(temperature=0.05, symmetric=symmetric, rank=rank, world_size=world)
    encode = lambda part: model(**part)  # noqa: E731
    with mock.patch.object(padding, "ATTENTION_GROUP_TOKENS", LOSS_CHUNK_TOKENS) if packed else nullcontext():
        if grad_cache:
            loss = grad_cache_step(encode, lambda surrogate, last: surrogate.backward(), loss_fn, batch, grad_cache, chunk_tokens)
        else:
            sides = {name: encode_chunked(encode, part, chunk_tokens) for name, part in batch.items()}
            loss = loss_fn(sides["query"], sides["passage"], sides.get("negatives"))
            loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:
        dist.all_reduce(loss)
        loss /= world
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
    return loss.item(), grads


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --- evaluation: a tiny untrained encoder, evaluated by 1 to 3 ranks --------------------

EVAL_SPEC = TextSpec(max_query_length=16, max_passage_length=32)
EVAL_CORPUS = "synthetic:items=120,languages=3,coverage=0.7,seed=5"


def eval_model_and_tokenizer() -> tuple[BiEncoder, object, RetrievalSet]:
    """The seeded tiny encoder, its tokenizer, and EVAL_CORPUS' retrieval view."""
    corpus = load_corpus(EVAL_CORPUS)
    texts = [t for i in corpus.items for p in i.pairs.values() for t in (p.query, p.passage)]
    encoder, tokenizer = build_tiny(texts, 3000, 32, 2, 4, 64, 34, seed=0)
    return BiEncoder(encoder).eval(), tokenizer, corpus.retrieval


def eval_rank(rank: int, world: int, init: str, out: str) -> None:
    """One rank: the full evaluation and a sharded top-k of fixed random vectors; rank 0 saves both to ``out``."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    env = detect({"RANK": str(rank), "WORLD_SIZE": str(world)})
    model, tokenizer, rs = eval_model_and_tokenizer()
    result = evaluate(model, tokenizer, rs, EVAL_SPEC, env, k=10, progress=False)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1001, 16)).astype(np.float32)
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    a, b = shard_bounds(len(vectors), rank, world)
    topk = distributed_topk(queries, vectors[a:b], np.arange(a, b), 25, env)
    if rank == 0:
        torch.save({"result": result, "topk": topk}, out)
    if world > 1:
        dist.destroy_process_group()


def on_world(rank_fn: Callable[[int, int, str, str], None], world: int) -> dict:
    """What ``rank_fn(rank, world, init, out)`` saved to ``out`` on rank 0, run on ``world``
    gloo processes (1: in this process, with no process group)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        if world == 1:
            rank_fn(0, 1, "", out)
        else:
            mp.spawn(rank_fn, args=(world, f"file://{tmp}/rendezvous", out), nprocs=world, join=True)
        return torch.load(out, weights_only=False)


def eval_world(world: int) -> dict:
    """:func:`eval_rank`'s results on ``world`` gloo processes (1: in this process)."""
    return on_world(eval_rank, world)


DEBIAS_TRAINING = "synthetic:items=90,languages=3,coverage=0.8,seed=6"  # EVAL_CORPUS' languages, other items


def debias_rank(rank: int, world: int, init: str, out: str) -> None:
    """One rank of centred evaluation: the per-language means of this rank's shard of
    fixed random vectors (languages unevenly spread, so a shard may lack one) as every
    rank computes them, and the evaluation of :func:`eval_rank` centred by the pool's
    means and by a training sample's; rank 0 saves every rank's means and its results."""
    from hbt.dist import gather_objects
    from hbt.eval.debias import Centering, corpus_texts, language_means

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    env = detect({"RANK": str(rank), "WORLD_SIZE": str(world)})
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((301, 8)).astype(np.float32)
    lang = np.sort(rng.choice(4, len(vectors), p=[0.6, 0.3, 0.08, 0.02]))
    a, b = shard_bounds(len(vectors), rank, world)
    means = gather_objects(language_means(vectors[a:b], lang[a:b], 4, env), env)
    model, tokenizer, rs = eval_model_and_tokenizer()
    results = {name: evaluate(model, tokenizer, rs, EVAL_SPEC, env, k=10, progress=False, centering=centering)
               for name, centering in (("pool", Centering()),
                                       ("train", Centering(corpus_texts(load_corpus(DEBIAS_TRAINING), 40), 40)))}
    if rank == 0:
        torch.save({"means": means, "vectors": vectors, "lang": lang, **results}, out)
    if world > 1:
        dist.destroy_process_group()


def debias_world(world: int) -> dict:
    """:func:`debias_rank`'s results on ``world`` gloo processes (1: in this process)."""
    return on_world(debias_rank, world)


# -- the run directory's lock ----------------------------------------------------------

HOLD_LOCK = """
import sys, time
from hbt.runlock import RunLock
lock = RunLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(float(sys.argv[2]))
"""


def hold(run_dir: Path, seconds: float) -> subprocess.Popen:
    """A process that takes the lock and keeps it ``seconds``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc
