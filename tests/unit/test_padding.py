"""Packing (hbt.padding): a packed encoder gives the padded encoder's hidden states,
embeddings and parameter gradients for every family it claims (BERT, RoBERTa, XLM-R),
with several attention groups of different widths; padded calls through a packed
encoder are untouched; families it cannot pack are refused; evaluation's encoder gives
the padded embeddings packed, packs where the padding pays (and on a GPU only through
varlen_attn), and mining's never packs. The loss-level equivalence
(plain, GradCache) is in tests/unit/test_loss.py, on two ranks in
tests/integration/test_loss_ranks.py, the whole engine in tests/integration/test_matrix.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel, XLMRobertaConfig,
                          XLMRobertaModel)

from hbt import padding
from hbt.model import BiEncoder
from tests.helpers import ME5_SMALL, need

FAMILIES = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel), "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel)}
PAD = 1
GROUP_TOKENS = 48  # small enough for several attention groups on these batches


def tiny(family: str, seed: int = 0) -> BiEncoder:
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD)
    torch.manual_seed(seed)
    return BiEncoder(model_cls(config, add_pooling_layer=False))


def batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    mask = (torch.arange(max(lengths))[None] < lengths_t[:, None]).long()
    ids = torch.randint(3, 120, mask.shape, generator=g) * mask + PAD * (1 - mask)
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model: BiEncoder, part: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Embeddings and the parameter gradients of a loss that weighs every embedding
    dimension differently (so a permuted or misplaced row shows)."""
    model.zero_grad(set_to_none=True)
    emb = model(**part)
    weights = torch.linspace(-1, 1, emb.numel()).view_as(emb)
    (emb * weights).sum().backward()
    return emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(padded: BiEncoder, packed: BiEncoder, part: dict) -> None:
    emb_a, grads_a = outputs(padded, part)
    emb_b, grads_b = outputs(packed, part)
    assert (emb_a - emb_b).abs().max() <= 1e-5
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    assert max((grads_a[k] - grads_b[k]).abs().max().item() for k in grads_a) <= 1e-5


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_encoder_gives_the_padded_embeddings_and_gradients(family: str, pooling: str, monkeypatch) -> None:
    monkeypatch.setattr(padding, "ATTENTION_GROUP_TOKENS", GROUP_TOKENS)
    part = batch([3, 17, 1, 9, 30, 30, 12, 5, 22, 2, 8, 16, 25])
    padded = tiny(family)
    padded.pooling = pooling
    packed = copy.deepcopy(padded)
    packed.pack()
    groups = padding.pack(part["input_ids"], part["attention_mask"], padding.position_offset(packed.encoder)).groups
    assert len({g.width for g in groups}) > 2  # several groups, each at its own width
    hidden_a = padded.encoder(**part).last_hidden_state * part["attention_mask"][..., None]
    hidden_b = padding.packed_hidden(packed.encoder, part["input_ids"], part["attention_mask"])
    assert (hidden_a - hidden_b).abs().max() <= 1e-5
    assert_same(padded, packed, part)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=24), group_tokens=st.integers(1, 200),
       family=st.sampled_from(sorted(FAMILIES)))
def test_packing_holds_for_any_lengths_and_group_budget(lengths: list[int], group_tokens: int, family: str) -> None:
    padded = tiny(family)
    packed = copy.deepcopy(padded)
    packed.pack()
    original = padding.ATTENTION_GROUP_TOKENS
    padding.ATTENTION_GROUP_TOKENS = group_tokens
    try:
        assert_same(padded, packed, batch(lengths))
    finally:
        padding.ATTENTION_GROUP_TOKENS = original


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None) -> torch.Tensor:
    """``varlen_attn``'s contract ([T, heads, dim] in and out, each text attending to its
    own span of ``cu_q``) in plain SDPA, text by text: the kernel itself runs only on CUDA
    (test_varlen_attention_on_cuda_gives_the_padded_embeddings), this checks hbt's side
    of the call (offsets, layout, shapes) on any machine."""
    outs = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        span = [t[a:b].transpose(0, 1) for t in (q, k, v)]  # [heads, length, dim]
        outs.append(F.scaled_dot_product_attention(*span, scale=scale).transpose(0, 1))
    assert max(b - a for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist())) == max_q == max_k
    return torch.cat(outs)


@pytest.mark.parametrize("family", FAMILIES)
def test_varlen_layout_gives_the_padded_embeddings_and_gradients(family: str, monkeypatch) -> None:
    monkeypatch.setattr(padding, "varlen_attn", reference_varlen)
    monkeypatch.setattr(padding, "one_call", lambda encoder, input_ids: "varlen")
    part = batch([3, 17, 1, 9, 30, 30, 12, 5, 22, 2, 8, 16, 25])
    padded = tiny(family)
    packed = copy.deepcopy(padded)
    packed.pack()
    layout = padding.pack(part["input_ids"], part["attention_mask"], padding.position_offset(packed.encoder), kernel="varlen")
    assert layout.groups == () and layout.offsets.tolist()[-1] == int(part["attention_mask"].sum())
    assert_same(padded, packed, part)


@pytest.mark.parametrize("family", FAMILIES)
def test_flex_attention_fallback_gives_the_padded_embeddings(family: str, monkeypatch) -> None:
    """Where torch lacks varlen_attn, a GPU attends over the packed row with
    flex_attention under a document mask; uncompiled (as here, on a CPU) it is the same
    function, so the mask, layout and shapes are checked on any machine. Its backward
    runs on CUDA only (test_flex_attention_on_cuda_gives_the_padded_embeddings_and_gradients)."""
    monkeypatch.setattr(padding, "one_call", lambda encoder, input_ids: "flex")
    part = batch([3, 17, 1, 9, 30, 30, 12, 5, 22, 2, 8, 16, 25])
    padded = tiny(family)
    packed = copy.deepcopy(padded)
    packed.pack()
    layout = padding.pack(part["input_ids"], part["attention_mask"], padding.position_offset(packed.encoder), kernel="flex")
    assert layout.groups == () and layout.block_mask is not None
    with torch.no_grad():
        assert (padded(**part) - packed(**part)).abs().max() <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available() or padding.flex_attention is None, reason="flex_attention's backward runs on CUDA only")
@pytest.mark.parametrize("family", FAMILIES)
def test_flex_attention_on_cuda_gives_the_padded_embeddings_and_gradients(family: str, monkeypatch) -> None:
    """On a GPU, compiled flex_attention (the fallback where varlen_attn is missing) in
    fp32 against the padded encoder: embeddings and every parameter gradient."""
    monkeypatch.setattr(padding, "varlen_attn", None)
    part = {k: v.cuda() for k, v in batch([3, 17, 1, 9, 30, 30, 12, 5, 22, 2, 8, 16, 25]).items()}
    padded = tiny(family).cuda()
    packed = copy.deepcopy(padded)
    packed.pack()
    assert padding.one_call(packed.encoder, part["input_ids"]) == "flex"
    emb_a, grads_a = outputs(padded, part)
    emb_b, grads_b = outputs(packed, part)
    assert (emb_a - emb_b).abs().max() <= 1e-4
    assert max(((grads_a[k] - grads_b[k]).abs().max() / grads_a[k].abs().max().clamp(min=1e-12)).item() for k in grads_a) <= 1e-3


def test_one_call_kernel_needs_cuda_and_no_attention_dropout(monkeypatch) -> None:
    """Neither kernel runs on a CPU or draws attention dropout; varlen needs half
    precision; flex_attention is the fallback only where varlen_attn is missing."""
    model = tiny("bert")
    ids = torch.ones(2, 3, dtype=torch.long)
    assert padding.one_call(model.encoder, ids) is None  # a CPU
    cuda_ids = type("CudaIds", (), {"is_cuda": True})()  # a stand-in with what one_call reads of the ids
    model.encoder.eval()
    assert padding.one_call(model.encoder, cuda_ids) == (None if padding.varlen_attn is not None else "flex")
    assert padding.one_call(model.encoder.to(torch.bfloat16), cuda_ids) == ("varlen" if padding.varlen_attn is not None else "flex")
    monkeypatch.setattr(padding, "varlen_attn", None)
    assert padding.one_call(model.encoder, cuda_ids) == "flex"
    model.encoder.train()
    model.encoder.config.attention_probs_dropout_prob = 0.1
    assert padding.one_call(model.encoder, cuda_ids) is None


@pytest.mark.skipif(not torch.cuda.is_available() or padding.varlen_attn is None, reason="varlen_attn runs on CUDA only")
@pytest.mark.parametrize("family", FAMILIES)
def test_varlen_attention_on_cuda_gives_the_padded_embeddings(family: str) -> None:
    """On a GPU: bf16 packed through FlashAttention's varlen kernel against the padded
    encoder in bf16 (1e-2 relative), and fp32 packed (attention groups: the kernel has no
    fp32) against padded fp32 (1e-5)."""
    part = {k: v.cuda() for k, v in batch([3, 17, 1, 9, 30, 30, 12, 5, 22, 2, 8, 16, 25]).items()}
    for dtype, tolerance in ((torch.bfloat16, 1e-2), (torch.float32, 1e-5)):
        padded = tiny(family).cuda().to(dtype)
        packed = copy.deepcopy(padded)
        packed.pack()
        assert padding.one_call(packed.encoder, part["input_ids"]) == ("varlen" if dtype == torch.bfloat16 else None)
        emb_a, grads_a = outputs(padded, part)
        emb_b, grads_b = outputs(packed, part)
        assert ((emb_a - emb_b).abs().max() / emb_a.abs().max()).item() <= tolerance, dtype
        for name in grads_a:
            assert ((grads_a[name] - grads_b[name]).abs().max() / grads_a[name].abs().max().clamp(min=1e-12)).item() <= tolerance, (dtype, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_keeps_to_one_padded_pass_on_cuda_until_measured() -> None:
    """On a GPU evaluation encodes padded, even a badly padded batch in half precision,
    until the device check has timed packed encoding there (hbt.padding.inference_packed)."""
    part = {k: v.cuda() for k, v in batch([3, 7, 2, 7]).items()}
    model = tiny("bert").cuda().eval()
    assert not padding.inference_packed(model.encoder, part)
    assert not padding.inference_packed(model.to(torch.bfloat16).encoder, part)


def test_padded_calls_through_a_packed_encoder_are_plain_sdpa() -> None:
    """A packed model's encoder stays an ordinary encoder for padded calls (user code
    holding it, the bench switching a model between remedies): SDPA with the padding
    mask, bit for bit."""
    padded = tiny("xlm-roberta")
    packed = copy.deepcopy(padded)
    packed.pack()
    packed.packed = False  # its encoder now sees padded batches
    part = batch([4, 11, 7])
    assert packed.encoder.config._attn_implementation == padding.PACKED_ATTENTION
    assert torch.equal(padded(**part), packed(**part))


def test_families_packing_cannot_serve_are_refused() -> None:
    decoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, is_decoder=True))
    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    for encoder in (decoder, distil):
        model = BiEncoder(encoder)
        assert not model.packable
        with pytest.raises(ValueError, match="packing does not support"):
            model.pack()
    assert all(tiny(family).packable for family in FAMILIES)
    with pytest.raises(ValueError, match="at least one token"):
        padding.pack(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]]), 0)


def test_packed_dropout_is_drawn_and_replays() -> None:
    """Dropout in a packed encoder (attention's inside packed_attention, the rest in the
    model's own layers) is applied in training, and the same RNG state gives the same
    embeddings: what GradCache's second, graph-building pass relies on."""
    part = batch([5, 19, 2, 11, 30])
    for hidden, attention in ((0.0, 0.5), (0.3, 0.0)):
        model = tiny("bert")
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = hidden
        for layer in model.encoder.encoder.layer:
            layer.attention.self.dropout.p = attention
        model.pack()
        model.eval()
        plain = model(**part)
        model.train()
        torch.manual_seed(7)
        first = model(**part)
        torch.manual_seed(7)
        again = model(**part)
        assert torch.equal(first, again)
        assert (first - plain).abs().max() > 1e-3


def test_a_real_encoder_packs_exactly() -> None:
    """multilingual-e5-small (BERT, 12 layers, real weights) on texts of different lengths."""
    from hbt.model import load_pretrained

    encoder, tokenizer = load_pretrained(str(need(ME5_SMALL)), dropout=0.0)
    texts = ["query: Wann wurde die Universität gegründet?", "passage: The university was founded in 1891 by Leland Stanford.",
             "query: ¿Quién ganó?", "passage: " + "Эта статья о длинном тексте, который занимает много токенов. " * 4]
    part = dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    part.pop("token_type_ids", None)
    padded = BiEncoder(encoder)
    packed = copy.deepcopy(padded)
    packed.pack()
    assert_same(padded, packed, part)


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def texts_of_many_lengths(n: int = 23) -> list[str]:
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 40, (n,), generator=g).tolist()
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=g).tolist()) for k in lengths]


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_evaluation_encodes_packed_as_padded_and_mining_padded(family: str, tmp_path, monkeypatch) -> None:
    """hbt.eval.encode.encode (``hbt eval``, evaluation during training) gives the padded
    embeddings packed and as hbt.padding.inference_packed chooses, in eval mode (dropout
    set here, not drawn), and leaves the model padded and training; hbt.mine.encode's
    encode_shard (``hbt mine``, one encode call per global batch) never packs, even where
    the decision would, and gives the padded embeddings exactly."""
    from hbt import model as model_module
    from hbt.dist import detect
    from hbt.eval import encode as eval_encode
    from hbt.mine.encode import encode_shard, global_batches
    from hbt.model import train_tokenizer

    monkeypatch.setattr(padding, "ATTENTION_GROUP_TOKENS", GROUP_TOKENS)
    texts = texts_of_many_lengths()
    tokenizer = train_tokenizer(texts, vocab_size=120, model_max_length=48)
    model = tiny(family)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    model.train()
    packed_calls = []
    real = model_module.packed_hidden
    monkeypatch.setattr(model_module, "packed_hidden", lambda *a: packed_calls.append(a) or real(*a))

    padded = eval_encode.encode(model, tokenizer, texts, 48, batch_size=5, packed=False)
    assert not packed_calls
    packed = eval_encode.encode(model, tokenizer, texts, 48, batch_size=5, packed=True)
    assert len(packed_calls) == 5 and not model.packed and model.training
    chosen = eval_encode.encode(model, tokenizer, texts, 48, batch_size=5)
    assert np.abs(packed - padded).max() <= 1e-6 and np.abs(chosen - padded).max() <= 1e-6

    packed_calls.clear()
    monkeypatch.setattr(eval_encode, "inference_packed", lambda encoder, batch: True)
    own, rows = encode_shard(model, tokenizer, texts, "", 48, 4, tmp_path / "mined.npy", detect({}), None)
    assert not packed_calls and np.array_equal(own, np.arange(len(texts)))
    for b in global_batches(texts, 4):
        assert np.array_equal(rows[b], eval_encode.encode(model, tokenizer, [texts[i] for i in b], 48, len(b), packed=False))
    assert np.abs(rows - padded).max() <= 1e-6


def test_evaluation_packs_on_a_cpu_where_padding_pays(monkeypatch) -> None:
    """The one decision for evaluation (hbt.padding.inference_packed): on a CPU, packed
    for every family packing serves where a padded pass would compute PACKING_PAYS tokens
    per real token or more, padded below that and for the families it cannot serve; off
    the CPU padded where attention cannot be one varlen call (a meta tensor here)."""
    monkeypatch.setattr(padding, "PACKING_PAYS", 1.25)
    much, little = batch([3, 7, 2, 7]), batch([6, 7, 7, 7])  # 28 slots for 19 and 27 tokens
    for family in FAMILIES:
        encoder = tiny(family).encoder
        assert padding.inference_packed(encoder, much) and not padding.inference_packed(encoder, little)
    decoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, is_decoder=True))
    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    assert not any(padding.inference_packed(encoder, much) for encoder in (decoder, distil))
    elsewhere = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in much.items()}
    assert not padding.inference_packed(tiny("bert").encoder, elsewhere)
