"""Proof that a refactor changed no behaviour (issue 20, "One concept, one place").

``record`` runs, as a user would (``python -m hbt ...`` and ``torchrun`` in fresh
processes), every command whose output the refactor must leave byte-identical, and
writes what they produce under ``OUT_DIR/files``:

* ``plans/``: ``hbt data plan`` dumps (3 epochs) of XQuAD-R (batch 24) and of a synthetic
  corpus with hard negatives (batch 48), at alpha 0, 0.5 and 1; and what each rank reads
  of every batch at world sizes 1 and 3, from the sampler ``hbt train`` builds
  (``training_data`` + ``sampler_for``, ``configs/tiny.yaml`` on that data, its
  ``data.holdout_titles: 0.2`` included; ``train.hard_negatives=3`` for the synthetic
  corpus: the sampler's blocking of hard negatives, which changes its plans). The synthetic corpus has no negatives of its own, so they are mined with
  the model trained below;
* ``mine/``: ``hbt mine`` (default settings) on XQuAD-R (en, de) and on that synthetic
  corpus: ``train.jsonl`` as written, ``mine.json``;
* ``eval/``: ``hbt eval`` of the trained tiny model on all of XQuAD-R: ``metrics.json``
  and ``multi.run`` (the multilingual top-100 lists);
* ``train-1rank/``, ``train-2ranks/``: ``configs/tiny.yaml`` (as shipped, run and cache
  directories aside) on 1 rank and on 2 (torchrun, OMP_NUM_THREADS=1): every step's loss
  and learning rate (exact ``repr`` and ``float.hex``), batch type and mix, ``eval.jsonl``,
  and the ``metrics.json`` of each evaluation (after every epoch, as shipped).

Only wall-clock and path-dependent fields are left out (see ``WALL_CLOCK``, ``PATHS``);
everything else is compared byte for byte, losses to the last bit (on the same machine).
``compare BASE_DIR NEW_DIR`` prints one line per file and exits 1 if any file differs or
is missing on one side.

The code under test is whatever ``import hbt`` finds, so the same script records both
sides (``record`` prints which tree it tested and writes it to ``OUT_DIR/source.json``)::

    # the code before the refactor (a git worktree of that commit), then after it
    flock /tmp/hbt-heavy.lock env PYTHONPATH=/tmp/hbt-baseline python bench/same_behaviour.py record /tmp/proof/base
    flock /tmp/hbt-heavy.lock python bench/same_behaviour.py record /tmp/proof/new
    python bench/same_behaviour.py compare /tmp/proof/base /tmp/proof/new

``record`` needs ``../shared`` (XQuAD-R) beside the repository and takes about 2.5 minutes
on 2 CPU cores. ``rank-plans`` is ``record``'s own step (the per-rank dumps, in a fresh
process like every other step), not a command to run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

SHARED = Path(__file__).resolve().parents[2] / "shared"
XQUAD_R = SHARED / "data" / "xquad-r"
SYNTHETIC = "synthetic:items=4000,languages=4,seed=0"  # the corpus configs/tiny.yaml trains on
ALPHAS = ("0.0", "0.5", "1.0")
EPOCHS = 3
HARD_NEGATIVES = 3
RANKS = 3  # the multi-rank view of the plans; the batch sizes below divide by it
XQUAD_BATCH, SYNTHETIC_BATCH = 24, 48
# Wall-clock fields: they differ run to run whatever the code does. metrics.json and
# mine.json keep their timings under "timings"; a metrics.jsonl line has the step's
# throughput (samples_per_s) and the share of it spent waiting for data (data_wait).
WALL_CLOCK = ("timings", "samples_per_s", "data_wait")
# Path-dependent fields: mine.json names the model and data as given on the command line,
# and those lie inside OUT_DIR, which differs between the two recordings.
PATHS = ("model", "data")

# Not inherited from the caller's shell: the thread count changes the order of float sums,
# hence the losses' last bits (measured on 2 cores, tiny.yaml: step 2's loss is
# 0x1.e917800000000p+1 with OMP_NUM_THREADS=1, 0x1.e9177c0000000p+1 with hbt's 2 threads).
# Every step runs with hbt's own choice (cores / local ranks), torchrun with OMP_NUM_THREADS=1.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

Step = Callable[[Path, Path, Path], None]  # (tree under test, files to compare, scratch)


# -- running the code under test ---------------------------------------------------------


def run(args: Sequence[str | Path], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    """Run one command in a fresh process (PYTHONPATH and the rest of the environment
    inherited, bar ``THREAD_VARIABLES``; ``env`` added); its output goes to ``log``, whose
    tail is shown if it fails."""
    inherited = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run([str(a) for a in args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              env={**inherited, **(env or {})}).returncode
    if code:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        sys.exit("\n".join([f"failed (exit {code}): {' '.join(map(str, args))}", *tail, f"full log: {log}"]))


def hbt(*args: str | Path) -> list[str | Path]:
    return [sys.executable, "-m", "hbt", *args]


def torchrun(ranks: int, *args: str | Path) -> list[str | Path]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m", "hbt", *args]


def hbt_tree() -> Path:
    """The source tree ``import hbt`` resolves to in a fresh process, as every step will."""
    out = subprocess.run([sys.executable, "-c", "import hbt; print(hbt.__file__)"], capture_output=True, text=True,
                         check=True, cwd="/")
    return Path(out.stdout.strip()).resolve().parents[1]


# -- what is recorded ----------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def without(obj: dict, keys: Sequence[str]) -> dict:
    return {k: v for k, v in obj.items() if k not in keys}


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


def record_metrics(out_dir: Path, dest: Path) -> None:
    """An evaluation's ``metrics.json`` without its timings."""
    write_json(dest / "metrics.json", without(json.loads((out_dir / "metrics.json").read_text()), WALL_CLOCK))


def record_steps(run_dir: Path, dest: Path) -> None:
    """Every step of ``metrics.jsonl`` without its wall-clock fields, loss and lr also as
    ``float.hex`` (JSON's repr already round-trips a double; the hex says so visibly)."""
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        step = without(json.loads(line), WALL_CLOCK)
        lines.append(json.dumps({**step, "loss_hex": float(step["loss"]).hex(), "lr_hex": float(step["lr"]).hex()}))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "steps.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def record_training(run_dir: Path, dest: Path) -> None:
    record_steps(run_dir, dest)
    copy(run_dir / "eval.jsonl", dest / "eval.jsonl")
    for metrics in sorted((run_dir / "eval").glob("*/metrics.json")):
        record_metrics(metrics.parent, dest / "eval" / metrics.parent.name)


def record_mine(out_dir: Path, dest: Path) -> None:
    copy(out_dir / "train.jsonl", dest / "train.jsonl")
    write_json(dest / "mine.json", without(json.loads((out_dir / "mine.json").read_text()), WALL_CLOCK + PATHS))


# -- the steps, in order (later ones use the model and the mined corpus of earlier ones) ------


def train_overrides(work: Path, name: str) -> list[str]:
    return [f"run.dir={work / name}", f"data.cache_dir={work / name}-cache"]


def train_1rank(tree: Path, files: Path, work: Path) -> None:
    run(hbt("train", "--config", tree / "configs/tiny.yaml", *train_overrides(work, "train-1rank")), work,
        work / "train-1rank.log")
    record_training(work / "train-1rank", files / "train-1rank")


def train_2ranks(tree: Path, files: Path, work: Path) -> None:
    run(torchrun(2, "train", "--config", tree / "configs/tiny.yaml", *train_overrides(work, "train-2ranks")), work,
        work / "train-2ranks.log", env={"OMP_NUM_THREADS": "1"})
    record_training(work / "train-2ranks", files / "train-2ranks")


def mine(name: str, data: str | Path, *options: str) -> Step:
    def step(tree: Path, files: Path, work: Path) -> None:
        out = work / f"mine-{name}"
        run(hbt("mine", "--model", work / "train-1rank/model", "--data", data, "--out", out,
                "--cache-dir", f"{out}-cache", *options), work, work / f"mine-{name}.log")
        record_mine(out, files / "mine" / name)
    return step


def evaluate(tree: Path, files: Path, work: Path) -> None:
    out = work / "eval-xquad-r"
    run(hbt("eval", "--model", work / "train-1rank/model", "--data", XQUAD_R, "--out", out), work, work / "eval-xquad-r.log")
    record_metrics(out, files / "eval" / "xquad-r")
    copy(out / "multi.run", files / "eval" / "xquad-r" / "multi.run")  # the ranking itself, ties included


def global_plans(name: str, data: Callable[[Path], Path], batch: int) -> Step:
    """``hbt data plan`` at every alpha; ``data(work)`` is the corpus."""
    def step(tree: Path, files: Path, work: Path) -> None:
        (files / "plans").mkdir(exist_ok=True)
        for alpha in ALPHAS:
            tag = f"{name}-alpha{alpha}-global"
            run(hbt("data", "plan", data(work), "--alpha", alpha, "--batch-size", str(batch), "--epochs", str(EPOCHS),
                    "--out", files / "plans" / f"{tag}.jsonl", "--cache-dir", work / f"plan-{tag}-cache"), work,
                work / f"plan-{tag}.log")
    return step


def rank_plans(name: str, data: Callable[[Path], Path], batch: int, hard_negatives: int) -> Step:
    """The per-rank views (world sizes 1 and RANKS) at every alpha, in one fresh process."""
    def step(tree: Path, files: Path, work: Path) -> None:
        overrides = [f"data.train={data(work)}", f"data.cache_dir={work / f'ranks-{name}-cache'}",
                     f"train.batch_size={batch}", f"train.hard_negatives={hard_negatives}"]
        run([sys.executable, Path(__file__).resolve(), "rank-plans", tree / "configs/tiny.yaml", files / "plans", name,
             *overrides], work, work / f"ranks-{name}.log")
    return step


def mined_synthetic(work: Path) -> Path:
    return work / "mine-synthetic/train.jsonl"


STEPS: list[tuple[str, Step]] = [
    ("train configs/tiny.yaml, 1 rank", train_1rank),
    ("train configs/tiny.yaml, 2 ranks (torchrun)", train_2ranks),
    ("eval the trained model on XQuAD-R", evaluate),
    ("mine XQuAD-R (en, de)", mine("xquad-r-en-de", XQUAD_R, "--languages", "en,de")),
    ("mine the synthetic corpus (hard negatives for the plans)", mine("synthetic", SYNTHETIC)),
    ("plan XQuAD-R", global_plans("xquad-r", lambda work: XQUAD_R, XQUAD_BATCH)),
    ("plan the mined synthetic corpus", global_plans("synthetic-mined", mined_synthetic, SYNTHETIC_BATCH)),
    (f"per-rank plans of XQuAD-R (world sizes 1, {RANKS})", rank_plans("xquad-r", lambda work: XQUAD_R, XQUAD_BATCH, 0)),
    (f"per-rank plans of the mined synthetic corpus, {HARD_NEGATIVES} hard negatives (world sizes 1, {RANKS})",
     rank_plans("synthetic-mined", mined_synthetic, SYNTHETIC_BATCH, HARD_NEGATIVES)),
]


def git_head(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def record(out: Path) -> int:
    if not XQUAD_R.is_dir():
        print(f"skipped: {XQUAD_R} is absent (this proof needs ../shared beside the repository)")
        return 0
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: record into a new directory (old caches would be reused)")
    tree = hbt_tree()
    files, work = out / "files", out / "work"
    files.mkdir(parents=True)
    work.mkdir()
    print(f"testing hbt at {tree} ({git_head(tree)}); outputs under {out}", flush=True)
    start = time.monotonic()
    for n, (label, step) in enumerate(STEPS, start=1):
        tick = time.monotonic()
        step(tree, files, work)
        print(f"[{time.monotonic() - start:5.0f} s] {n}/{len(STEPS)} {label}: {time.monotonic() - tick:.0f} s", flush=True)
    total = time.monotonic() - start
    write_json(out / "source.json", {"hbt": str(tree), "git": git_head(tree), "seconds": round(total)})
    print(f"recorded {sum(1 for p in files.rglob('*') if p.is_file())} files under {files} in {total:.0f} s")
    return 0


# -- the per-rank plans (record's step, in its own process) ------------------------------------


def train_api() -> tuple[Callable, Callable]:
    """``training_data(cfg)`` and ``sampler_for(cfg, data, world_size, rank)``, the two
    helpers through which ``hbt train`` builds its data and sampler. This is the one place
    that knows where they live, so that one script records the code before and after a
    refactor that moves them: the first module of the list that has both wins."""
    import importlib

    for module in ("hbt.train", "hbt.sampling"):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(found, "training_data") and hasattr(found, "sampler_for"):
            return found.training_data, found.sampler_for
    raise ImportError("neither hbt.train nor hbt.sampling has training_data and sampler_for")


def rank_view(data, sampler, epochs: int) -> list[str]:
    """This rank's part of every batch of ``epochs`` epochs, one JSON line per batch, cut
    as the engine cuts it (``plan.items[:, lo:hi]``, ``qlang``, ``plang``)."""
    lo, hi = sampler.rank_slice()
    lines = []
    for epoch in range(epochs):
        plan = sampler.plan(epoch)
        items, qlang, plang = plan.items[:, lo:hi], plan.qlang[:, lo:hi], plan.plang[:, lo:hi]
        ids = data.item_ids(items.ravel())
        width = hi - lo
        for b in range(len(items)):
            pairs = [[ids[b * width + n], plan.languages[q], plan.languages[p]]
                     for n, (q, p) in enumerate(zip(qlang[b].tolist(), plang[b].tolist()))]
            kind = "mono" if plan.mono[b] else "cross"
            lines.append(json.dumps({"epoch": epoch, "index": b, "kind": kind, "pairs": pairs}, ensure_ascii=False))
    return lines


def write_rank_plans(config: Path, out: Path, name: str, overrides: Sequence[str]) -> int:
    from hbt.config import load_config

    training_data, sampler_for = train_api()
    data = training_data(load_config(config, overrides))  # alpha does not enter the data
    out.mkdir(parents=True, exist_ok=True)
    for alpha in ALPHAS:
        cfg = load_config(config, [*overrides, f"train.alpha={alpha}"])
        for world_size in (1, RANKS):
            for rank in range(world_size):
                lines = rank_view(data, sampler_for(cfg, data, world_size, rank), EPOCHS)
                path = out / f"{name}-alpha{alpha}-ws{world_size}-rank{rank}.jsonl"
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


# -- comparing two recordings ----------------------------------------------------------------


def first_difference(a: bytes, b: bytes) -> str:
    """Where two files part: the first differing line of each (shortened)."""
    lines_a, lines_b = a.splitlines(), b.splitlines()
    for n in range(max(len(lines_a), len(lines_b))):
        x = lines_a[n] if n < len(lines_a) else b"<end of file>"
        y = lines_b[n] if n < len(lines_b) else b"<end of file>"
        if x != y:
            return f"line {n + 1}: {x[:160].decode(errors='replace')!r} vs {y[:160].decode(errors='replace')!r}"
    return "same lines, different line endings"


def compare(base: Path, new: Path) -> int:
    a, b = base / "files", new / "files"
    names = sorted({p.relative_to(root).as_posix() for root in (a, b) for p in root.rglob("*") if p.is_file()})
    if not names:
        sys.exit(f"nothing recorded under {a} or {b}")
    bad = 0
    for name in names:
        x, y = a / name, b / name
        if not x.is_file() or not y.is_file():
            status = f"missing in {base if not x.is_file() else new}"
        elif x.read_bytes() == y.read_bytes():
            status = "identical"
        else:
            status = "differs: " + first_difference(x.read_bytes(), y.read_bytes())
        bad += status != "identical"
        print(f"{name}: {status}")
    print(f"{len(names) - bad} of {len(names)} files identical" + (f", {bad} not" if bad else ""))
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="run every command on the hbt that 'import hbt' finds; keep the outputs")
    rec.add_argument("out", type=Path, help="a new (or empty) directory")
    cmp = commands.add_parser("compare", help="byte-compare two recordings; exit 1 if any file differs")
    cmp.add_argument("base", type=Path)
    cmp.add_argument("new", type=Path)
    ranks = commands.add_parser("rank-plans", help="record's step: every rank's part of the plans")
    ranks.add_argument("config", type=Path)
    ranks.add_argument("out", type=Path)
    ranks.add_argument("name")
    ranks.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "record":
        return record(args.out.resolve())
    if args.command == "compare":
        return compare(args.base, args.new)
    return write_rank_plans(args.config, args.out, args.name, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
