"""``hbt eval``: evaluate any encoder directory (trained by hbt or not) on 1 or N ranks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hbt import dist as hdist
from hbt.data import load_corpus, split_corpus
from hbt.data.tokenize import TextSpec
from hbt.model import BiEncoder, load_pretrained, resolve_model_name


@dataclass
class EvalArgs:
    model: str
    data: str
    settings: tuple[str, ...]
    out: Path
    holdout_titles: str | None = None
    seed: int = 0
    pooling: str | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_length: int | None = None
    k: int = 100
    batch_size: int = 128
    index: str = "flat"


def model_settings(model_dir: Path) -> dict:
    """Pooling, prefixes and lengths saved with a model: hbt's own ``hbt.json``, else a
    sentence-transformers directory's files, so a model is evaluated as it was trained."""
    hbt_file = model_dir / "hbt.json"
    if hbt_file.exists():
        return json.loads(hbt_file.read_text())
    found: dict = {}
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.exists():
        found["pooling"] = "cls" if json.loads(pooling.read_text()).get("pooling_mode_cls_token") else "mean"
    st = model_dir / "config_sentence_transformers.json"
    if st.exists():
        prompts = json.loads(st.read_text()).get("prompts", {})
        found["query_prefix"] = prompts.get("query", "")
        found["passage_prefix"] = prompts.get("passage", prompts.get("document", ""))
    bert = model_dir / "sentence_bert_config.json"
    if bert.exists():
        found["max_query_length"] = found["max_passage_length"] = json.loads(bert.read_text()).get("max_seq_length")
    return found


def text_spec(model: str, query_prefix: str | None = None, passage_prefix: str | None = None,
              max_length: int | None = None, pooling: str | None = None) -> tuple[TextSpec, str]:
    """How to encode with ``model``: what is given, else what was saved with the model
    (:func:`model_settings`), else no prefixes, 128 tokens and mean pooling."""
    model_dir = resolve_model_name(model)
    defaults = model_settings(Path(model_dir)) if Path(model_dir).is_dir() else {}
    pick = lambda given, key, fallback: given if given is not None else defaults.get(key) or fallback  # noqa: E731
    spec = TextSpec(pick(query_prefix, "query_prefix", ""), pick(passage_prefix, "passage_prefix", ""),
                    pick(max_length, "max_query_length", 128), pick(max_length, "max_passage_length", 128))
    return spec, pick(pooling, "pooling", "mean")


def load_encoder(model: str, pooling: str, env: hdist.DistEnv) -> tuple[BiEncoder, object]:
    """The bi-encoder and tokenizer of ``model``, on this rank's GPU when there is one."""
    import torch

    encoder, tokenizer = load_pretrained(resolve_model_name(model))
    bi = BiEncoder(encoder, pooling)
    if torch.cuda.is_available():
        bi = bi.to(f"cuda:{env.local_rank}")
    return bi, tokenizer


def run_eval(a: EvalArgs) -> tuple[dict, hdist.DistEnv]:
    """Evaluate on every rank of the job that started this process; rank 0 writes the
    outputs. Returns the results and the job's env (so the caller prints once)."""
    from hbt.eval.report import write_outputs
    from hbt.eval.run import evaluate

    corpus = load_corpus(a.data)
    if a.holdout_titles:
        _, corpus = split_corpus(corpus, a.holdout_titles, a.seed, key="--holdout-titles")
    spec, pooling = text_spec(a.model, a.query_prefix, a.passage_prefix, a.max_length, a.pooling)
    env = hdist.init()
    model, tokenizer = load_encoder(a.model, pooling, env)
    results = evaluate(model, tokenizer, corpus.retrieval, spec, env, a.settings, a.k, a.index, a.batch_size, env.is_main)
    if env.is_main:
        write_outputs(results, a.out, f"{Path(a.model).name} on {corpus.name}")
    return results, env
