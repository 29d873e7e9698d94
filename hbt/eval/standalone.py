"""``hbt eval``: evaluate any encoder directory (trained by hbt or not) on 1 or N ranks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hbt import dist as hdist
from hbt.config import Debias, DebiasMeans
from hbt.data import split_corpus
from hbt.data.split import parse_holdout
from hbt.data.tokenize import TextSpec
from hbt.errors import InputError, at_least
from hbt.model import BiEncoder, check_encoder, load_pretrained, resolve_model_name


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
    cache_dir: str = ".cache/hbt"  # where shards are converted (data.cache_dir)
    debias: Debias = "none"  # eval.debias (hbt.eval.debias)
    debias_means: DebiasMeans = "train"  # eval.debias_means: train needs debias_data or holdout_titles
    debias_data: str | None = None  # the training data of the means (default: --data outside --holdout-titles)
    debias_sample: int = 512  # eval.debias_sample

    def validate(self) -> None:
        """What used to fail only after every text was encoded (``--k 0``, ``--batch-size
        0``, ``--out`` naming a file) or with a traceback (an unreadable ``@file``),
        refused before anything is read."""
        at_least(1, {"--k": self.k, "--batch-size": self.batch_size, "--debias-sample": self.debias_sample})
        check_output_dir(self.out)
        if self.holdout_titles:
            parse_holdout(self.holdout_titles, key="--holdout-titles")
        if self.debias_data and (self.debias, self.debias_means) != ("center", "train"):
            raise InputError("--debias-data", "takes the means of training data: only with --debias center --debias-means train")
        if (self.debias, self.debias_means) == ("center", "train") and not (self.debias_data or self.holdout_titles):
            raise InputError("--debias-means", "train takes the means of training data: name it with --debias-data, or "
                                               "hold out the evaluated titles of --data (--holdout-titles, the rest is the "
                                               "training data); or --debias-means pool (transductive)")


def check_output_dir(out: Path) -> None:
    """``--out`` of ``hbt eval`` and ``hbt mine`` is a directory they create or write into."""
    if out.exists() and not out.is_dir():
        raise InputError("--out", f"{out} is a file; name a directory for the outputs")


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


def model_text_spec(model: str, query_prefix: str | None = None, passage_prefix: str | None = None,
                    max_length: int | None = None, pooling: str | None = None) -> tuple[TextSpec, str]:
    """How to encode with ``model``: what is given, else what was saved with the model
    (:func:`model_settings`), else no prefixes, 128 tokens and mean pooling. The token
    limit is checked against the model's positions here (its config is read, no weights)."""
    if max_length is not None:
        at_least(1, {"--max-length": max_length})
    model_dir = resolve_model_name(model, "--model")
    defaults = model_settings(Path(model_dir)) if Path(model_dir).is_dir() else {}
    pick = lambda given, key, fallback: given if given is not None else defaults.get(key) or fallback  # noqa: E731
    spec = TextSpec(pick(query_prefix, "query_prefix", ""), pick(passage_prefix, "passage_prefix", ""),
                    pick(max_length, "max_query_length", 128), pick(max_length, "max_passage_length", 128))
    check_encoder(model, {"--max-length": max(spec.max_query_length, spec.max_passage_length)}, "--model")
    return spec, pick(pooling, "pooling", "mean")


def load_encoder(model: str, pooling: str, env: hdist.DistEnv) -> tuple[BiEncoder, object]:
    """The bi-encoder and tokenizer of ``model``, on this rank's GPU when there is one."""
    import torch

    encoder, tokenizer = load_pretrained(model, key="--model")
    bi = BiEncoder(encoder, pooling)
    if torch.cuda.is_available():
        bi = bi.to(f"cuda:{env.local_rank}")
    return bi, tokenizer


def run_eval(a: EvalArgs) -> tuple[dict, hdist.DistEnv]:
    """Evaluate on every rank of the job that started this process; rank 0 writes the
    outputs. Returns the results and the job's env (so the caller prints once). The
    arguments and the model's config are checked first, then the data is read."""
    from hbt.data.table import any_corpus
    from hbt.eval.debias import centering_for, corpus_texts
    from hbt.eval.report import write_outputs
    from hbt.eval.run import evaluate

    a.validate()
    spec, pooling = model_text_spec(a.model, a.query_prefix, a.passage_prefix, a.max_length, a.pooling)
    env = hdist.init()
    corpus = any_corpus(a.data, a.cache_dir, env.is_main, hdist.barrier)
    training = None  # the corpus whose pairs the training means are taken over
    if a.holdout_titles:
        training, corpus = split_corpus(corpus, a.holdout_titles, a.seed, key="--holdout-titles")
    if a.debias_data:
        training = any_corpus(a.debias_data, a.cache_dir, env.is_main, hdist.barrier)
    sample = (lambda: corpus_texts(training, a.debias_sample)) if training is not None else None
    centering = centering_for(a.debias, a.debias_means, corpus.retrieval, sample, a.debias_sample, "--debias-means")
    model, tokenizer = load_encoder(a.model, pooling, env)
    results = evaluate(model, tokenizer, corpus.retrieval, spec, env, a.settings, a.k, a.index, a.batch_size, env.is_main,
                       centering=centering)
    if env.is_main:
        write_outputs(results, a.out, f"{Path(a.model).name} on {corpus.name}")
    return results, env
