"""A randomly initialised encoder of multilingual-e5-small's size, for benchmarks and the
device check where the real weights cannot travel or do not exist.

The architecture is e5-small's (BERT, 12 layers, hidden 384, 12 heads, FFN 1536, 512
positions) and so is the parameter count: the embedding matrix has e5-small's 250,037
rows, so the optimizer updates as many weights as it would for the real model. The
tokenizer is hbt's own, drawn from the built-in synthetic corpus; its ids use only the
first rows of that matrix, which costs a forward nothing. Seeded: the same directory on
every machine.

    python bench/e5_sized.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import benchlib  # noqa: F401  (this checkout's hbt on the path)

E5_SMALL = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 1536,
            "max_position_embeddings": 512, "vocab_size": 250037, "type_vocab_size": 2}


def write_e5_sized(out: Path, seed: int = 0) -> Path:
    """Write the model and its tokenizer to ``out`` (a Hugging Face directory) and return it."""
    import torch
    from transformers import BertConfig, BertModel

    from hbt.data import load_corpus
    from hbt.model import train_tokenizer

    corpus = load_corpus("synthetic:items=2000,languages=4,seed=0")
    tokenizer = train_tokenizer((t for item in corpus.items for p in item.pairs.values() for t in (p.query, p.passage)),
                                8000, E5_SMALL["max_position_embeddings"])
    config = BertConfig(**E5_SMALL, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(write_e5_sized(Path(sys.argv[1])))
