"""The exported model's card: ``README.md`` in the model directory, as the Hugging Face
hub and sentence-transformers users expect of a saved model (a YAML metadata header,
then what it was trained on, how, and how it scored, with the cross-lingual heatmap).

It is written from the run's own records (the resolved config, the training data's
sources and languages, the last evaluation's ``summary.md`` and heatmap), so publishing
a model never means retyping its numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from hbt.config import Config
from hbt.data.sources import Source
from hbt.data.table import is_table_source, source_root

STRATEGY = {1.0: "mono-only (X-X-mono: every batch monolingual)", 0.0: "cross-only (X-Y: every batch cross-lingual)"}


def _base_model(name: str) -> str | None:
    """A hub id for the metadata header; None for the tiny preset or a local directory."""
    if name == "tiny" or Path(name).exists() or name.startswith(("package:", "/", ".")):
        return None
    return name


def _data_line(src: Source) -> str:
    """A source as the card names it: its ``name:``, else its directory (a glob of shards
    or a mined ``train.jsonl`` is named by the folder that holds it), with its weight."""
    path = src.path
    kind = "shards" if is_table_source(path) else "synthetic corpus" if path.startswith("synthetic") else "corpus"
    if src.name:
        name = src.name
    elif path.startswith(("synthetic", "hf:")):
        name = path
    else:
        where = source_root(path)
        name = where.parent.name if where.suffix in (".jsonl", ".json", ".parquet") and where.parent.name else where.name
    return f"`{name}` ({kind}){f' x {src.weight:g}' if src.weight < 1 else ''}"


def _evaluated_on(cfg: Config) -> str:
    e = cfg.eval
    if not e.data:
        return "the held-out titles of the training data (none of their items was trained on)"
    if e.holdout_titles is None:
        return f"`{e.data}`"
    return f"`{e.data}`, only its held-out titles (`{e.holdout_titles}`, seed {cfg.data.holdout_seed}; none was trained on)"


def _centering(cfg: Config) -> list[str]:
    """The sentence saying what the summary's centered row is (``eval.debias: center``)."""
    e = cfg.eval
    if e.debias != "center":
        return []
    whose = (f"taken over at most {e.debias_sample} training pairs per language (what a deployment has)"
             if e.debias_means == "train" else
             "taken over the evaluated pool itself (transductive: it looks at the test set, which a deployment cannot)")
    return ["", "The *centered* row scores the same model's embeddings after removing each language's mean query and "
                f"mean passage embedding, {whose}, and normalising them again: the \"demean\" baseline against language "
                "bias, with nothing retrained (`eval.debias: center`)."]


def write_card(out: Path, cfg: Config, languages: list[str], steps: int, evaluation: Path | None) -> Path:
    """``out/README.md``; ``evaluation`` is the directory of the run's last evaluation."""
    t, m = cfg.train, cfg.model
    header = {"language": languages, "library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
              "tags": ["sentence-transformers", "feature-extraction", "dense-retrieval", "multilingual", "hbt",
                       "hybrid-batch-training"]}
    base = _base_model(m.name)
    if base:
        header = {"base_model": base, **header}
    strategy = STRATEGY.get(t.alpha, f"hybrid (alpha {t.alpha:g}: that share of batches monolingual, the rest cross-lingual)")
    sources = cfg.data.source_list()
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {Path(cfg.run.dir).name}", "",
             (f"A multilingual dense retriever fine-tuned from `{m.name}` with hbt "
              "(hybrid batch training, Elmahdy et al., 2024, arXiv:2408.10536): a bi-encoder trained with a "
              "contrastive loss whose batches are monolingual or cross-lingual." if steps else
              f"`{m.name}` as hbt exports it untrained (0 optimizer steps): the zero-shot baseline of a sweep, "
              "evaluated as its fine-tuned runs are. The training settings below are the sweep's, not applied."), "",
             "## Training", "",
             "| | |", "|---|---|",
             f"| data | {', '.join(_data_line(src) for src in sources)} |",
             f"| languages | {', '.join(languages)} |",
             f"| strategy | {strategy} |",
             f"| steps | {steps} optimizer steps of {t.grad_accum} contrastive batch{'es' if t.grad_accum > 1 else ''} "
             f"of {t.batch_size} pairs (all ranks together) |",
             f"| loss | InfoNCE, temperature {t.temperature:g}{', symmetric' if t.symmetric else ''}, in-batch negatives from every rank"
             f"{f', {t.hard_negatives} hard negatives per pair' if t.hard_negatives else ''} |",
             f"| optimiser | AdamW, lr {t.lr:g}, warm-up {t.warmup_ratio:g} then linear decay, weight decay {t.weight_decay:g} |",
             f"| text | pooling {m.pooling}, queries <= {m.max_query_length} and passages <= {m.max_passage_length} tokens, "
             f"prefixes {m.query_prefix!r} / {m.passage_prefix!r} (the `query` and `passage` prompts) |",
             f"| seed | {cfg.run.seed} |", ""]
    if evaluation is not None and (evaluation / "summary.md").exists():
        summary = (evaluation / "summary.md").read_text(encoding="utf-8").splitlines()[1:]  # its own title dropped
        lines += ["## Evaluation", "", f"On {_evaluated_on(cfg)}; mAP, docs/metrics.md of hbt defines every column.",
                  *_centering(cfg), *summary]
        if (evaluation / "cross_heatmap.png").exists():
            shutil.copy(evaluation / "cross_heatmap.png", out / "cross_heatmap.png")
            lines += ["", "![mAP per query language x candidate language](cross_heatmap.png)", ""]
    lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              f'model = SentenceTransformer("{Path(cfg.run.dir).name}")',
              'queries = model.encode(["..."], prompt_name="query")',
              'passages = model.encode(["..."], prompt_name="passage")',
              "scores = queries @ passages.T  # cosine: the embeddings are normalised", "```", ""]
    card = out / "README.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card
