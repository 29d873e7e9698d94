"""Not computing padding: length-sorted chunks for any encoder, packing for BERT-family ones.

One padded pass computes every text of a side at the length of its longest: on XQuAD-R
at contrastive batch 32 (e5 tokenizer, 32/64 pieces) that is 36 % more token work than
the texts have (docs/BENCHMARKS.md §1). Two remedies, both invisible to the loss (same
embeddings, same order, same gradients up to float rounding):

- **Chunks** (:func:`length_chunks`, :func:`encode_chunked`): the rows sorted by length
  and encoded in passes of a token budget, each cut to its own longest row. Works for
  every encoder; what is left is the padding inside each chunk, and smaller passes.
- **Packing** (:func:`pack`, :func:`packed_attention`): the texts of a side laid end to
  end in one row with their own position ids, so every embedding, linear layer, layer
  norm and dropout sees only real tokens; only attention, a few percent of the work at
  these lengths, is computed per text, in length-sorted groups padded to their own
  longest. Needs an encoder whose positions are plain absolute ones and whose attention
  goes through transformers' attention interface (:func:`position_offset` says which).
  On a GPU, where FlashAttention's variable-length kernel can run (half precision, no
  attention dropout: :func:`one_call`), attention too is one call over the whole
  row, each text attending to itself by its offsets (:func:`varlen_side`), with no
  groups and no padding at all. Where the cluster's torch lacks that kernel,
  ``flex_attention`` with a document mask (:func:`flex_side`) is the one call instead:
  compiled by torch into a kernel that skips the blocks where no text meets another.

Evaluation packs only the batches whose padding outweighs what packing costs
(:func:`inference_packed`); its batches are sorted by length, so few do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:  # torch >= 2.10 (CUDA only: on a CPU it raises NotImplementedError)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None
try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:
    BlockMask = create_block_mask = flex_attention = None

OneCall = Literal["varlen", "flex"]  # the kernels that attend over a whole packed row in one call

Batch = dict[str, torch.Tensor]


def length_chunks(attention_mask: torch.Tensor, max_tokens: int | None, max_texts: int | None = None) -> list[torch.Tensor]:
    """The rows of a padded batch, grouped into the encoder passes that waste least padding.

    With a token budget the rows are sorted longest first (stable) and cut greedily: a
    chunk starts at the longest row left and takes as many rows as fit in ``max_tokens``
    padded tokens at that length (at least one, at most ``max_texts``). A budget, not a
    chunk count, so that a pass has the same size whatever the contrastive batch: big
    enough to keep the hardware busy, small enough that similar lengths share it.
    Without a budget the rows stay in order, ``max_texts`` at a time (GradCache's chunks
    when packed or padded; the whole batch when that is None too)."""
    n = attention_mask.shape[0]
    if max_tokens is None:
        size = max_texts or n
        return [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    chunks, start = [], 0
    while start < n:
        size = max(1, max_tokens // max(1, sorted_lengths[start]))
        size = min(size, max_texts) if max_texts else size
        chunks.append(order[start:start + size])
        start += size
    return chunks


def take(batch: Batch, rows: torch.Tensor) -> Batch:
    """``rows`` of a right-padded batch, cut to the longest of them: the padding the other
    rows needed is not computed."""
    width = max(1, int(batch["attention_mask"][rows].sum(1).max()))
    return {k: v[rows, :width] for k, v in batch.items()}


def in_batch_order(pieces: list[torch.Tensor], chunks: list[torch.Tensor]) -> torch.Tensor:
    """The chunks' embeddings put back in the batch's row order (an index, so gradients
    flow back to each chunk), which is what makes chunking invisible to the loss."""
    out = torch.cat(pieces)
    return out[torch.argsort(torch.cat(chunks)).to(out.device)]


def encode_chunked(encode: Callable[[Batch], torch.Tensor], batch: Batch, max_tokens: int | None) -> torch.Tensor:
    """``encode(batch)`` done in length-sorted chunks of at most ``max_tokens`` padded
    tokens (see :func:`length_chunks`); the same embeddings, in the same order.
    Without a budget, one pass over the batch as it is (a collated batch is already cut
    to its longest text), with no sorting or re-ordering to dispatch."""
    if max_tokens is None:
        return encode(batch)
    chunks = length_chunks(batch["attention_mask"], max_tokens)
    return in_batch_order([encode(take(batch, rows)) for rows in chunks], chunks)


# -- packing ------------------------------------------------------------------------------
PACKED_ATTENTION = "hbt_packed"  # the attention implementation a packed encoder is switched to
# Attention runs in length-sorted groups of at most this many padded tokens. One group for
# the whole side computes (and drops out) every text's attention at the longest length.
# Measured once, by hand (not a bench/ script), on 2 CPU cores: one layer's attention
# forward + backward for 32 texts of 30-64 tokens, 12 heads x 32, dropout 0.1, took 43 ms
# in groups of 1,024 tokens, 49 ms in groups of 512 and 57 ms as one group.
ATTENTION_GROUP_TOKENS = 1024


# Evaluation encodes a batch packed when its padded pass would compute at least this many
# tokens per real one (docs/BENCHMARKS.md §4, e5-small on 2 CPU cores: below it the gathers
# and attention groups cost more than the padding they save).
PACKING_PAYS = 1.25


# Families whose position ids count from pad_token_id + 1 (fairseq's convention), not 0
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert")


def first_position(config: PretrainedConfig) -> int:
    """The position id of a text's first token in an encoder of ``config``: RoBERTa-family
    encoders count from ``pad_token_id + 1`` (what they compute from the ids of an unpacked
    batch), so that many rows of the position table never hold a text's token; others from 0."""
    return config.pad_token_id + 1 if config.model_type in OFFSET_POSITIONS else 0


def position_offset(encoder: PreTrainedModel) -> int | None:
    """The position id of a text's first token in ``encoder``, or None where packing is not
    supported: BERT, RoBERTa and XLM-R (:func:`first_position`) pack. Decoders (causal
    attention) and other families (rotary positions, their own attention code) keep to chunks."""
    config = encoder.config
    if getattr(config, "is_decoder", False):
        return None
    if config.model_type in ("bert", "roberta", "xlm-roberta"):
        return first_position(config)
    return None


def packable(encoder: PreTrainedModel) -> bool:
    """Whether packing supports ``encoder`` (see :func:`position_offset`)."""
    return position_offset(encoder) is not None


@dataclass(frozen=True)
class Group:
    """Texts whose attention is computed together, padded to the longest of them."""
    tokens: torch.Tensor  # [rows * width]: the packed token at each padded slot (clamped past a text's end)
    key_mask: torch.Tensor  # [rows, 1, 1, width]: True where the slot is a real token
    rows: int
    width: int


@dataclass(frozen=True)
class Packed:
    """One side of a batch, packed: what the encoder's forward and its attention need."""
    input_ids: torch.Tensor  # [1, T], the texts end to end
    position_ids: torch.Tensor  # [1, T], each text's own positions
    slots: torch.Tensor  # [T]: each packed token's place in the padded batch, flattened
    groups: tuple[Group, ...]  # empty where attention is one varlen call
    back: torch.Tensor | None  # [T]: each packed token's row in the groups' padded outputs, concatenated
    offsets: torch.Tensor | None = None  # [rows + 1] int32: where each text starts in the row, for varlen_attn
    longest: int = 0  # the longest text, for varlen_attn
    block_mask: "BlockMask | None" = None  # each token attends to its own text's, for flex_attention


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, offset: int, kernel: OneCall | None = None) -> Packed:
    """A padded batch packed into one row, with the attention groups of its texts
    (:func:`length_chunks` of :data:`ATTENTION_GROUP_TOKENS`), or, for a ``kernel`` that
    attends over the whole row in one call, the texts' offsets in the row (and, for
    flex_attention, their document mask, built once for every layer). Every text needs
    a token: an empty one would attend to nothing (NaN)."""
    device = input_ids.device
    real = attention_mask.bool()
    lengths = real.sum(1)
    if not bool(lengths.all()):
        raise ValueError("packing needs at least one token in every text")
    slots = real.flatten().nonzero().squeeze(1)
    starts = lengths.cumsum(0) - lengths
    positions = (real.cumsum(1) - 1)[real] + offset  # each text's own positions, whichever side is padded
    if kernel is not None:
        offsets = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        mask = document_mask(lengths) if kernel == "flex" else None
        return Packed(input_ids.flatten()[slots][None], positions[None], slots, (), None, offsets, int(lengths.max()), mask)
    total = slots.numel()
    groups, back, base = [], torch.empty_like(slots), 0
    for members in length_chunks(attention_mask, ATTENTION_GROUP_TOKENS):
        members = members.to(device)
        n, w = members.numel(), int(lengths[members].max())
        span = torch.arange(w, device=device)
        keys = span < lengths[members, None]
        tokens = (starts[members, None] + span).clamp(max=total - 1)
        back[tokens[keys]] = base + torch.arange(n * w, device=device).view(n, w)[keys]
        groups.append(Group(tokens.flatten(), keys[:, None, None, :], n, w))
        base += n * w
    return Packed(input_ids.flatten()[slots][None], positions[None], slots, tuple(groups), back)


def packed_hidden(encoder: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``encoder(input_ids, attention_mask).last_hidden_state`` computed packed: the same
    [rows, width, hidden] tensor (zeros at padding), without computing the padding."""
    packed = pack(input_ids, attention_mask, position_offset(encoder), kernel=one_call(encoder, input_ids))
    hidden = encoder(input_ids=packed.input_ids, position_ids=packed.position_ids, hbt_packed=packed).last_hidden_state[0]
    rows, width = attention_mask.shape
    out = hidden.new_zeros(rows * width, hidden.shape[-1]).index_copy(0, packed.slots, hidden)
    return out.view(rows, width, -1)


def one_call(encoder: PreTrainedModel, input_ids: torch.Tensor) -> OneCall | None:
    """The kernel that attends over a packed row in one call here, or None for the
    attention groups. On CUDA only, and only where no attention dropout is drawn (neither
    kernel draws it, so a training forward of an encoder with attention dropout keeps to
    the groups, which drop out as the padded encoder does). FlashAttention's varlen
    kernel (:func:`varlen_side`) runs in half precision only (bf16 weights, or a forward
    under autocast); where this torch lacks it, flex_attention (:func:`flex_side`), in
    any precision. On a CPU neither is used: varlen_attn raises there, and uncompiled
    flex_attention materialises the whole row's scores."""
    dropout = encoder.training and getattr(encoder.config, "attention_probs_dropout_prob", 0.0) > 0
    if not input_ids.is_cuda or dropout:
        return None
    if varlen_attn is not None:
        half = encoder.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cuda")
        return "varlen" if half else None
    return "flex" if flex_attention is not None else None


def document_mask(lengths: torch.Tensor) -> "BlockMask":
    """flex_attention's block mask of a packed row of texts of ``lengths``: a token
    attends to the tokens of its own text only."""
    text = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    total = int(text.numel())

    def same_text(batch: torch.Tensor, head: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return text[q] == text[k]

    return create_block_mask(same_text, None, None, total, total, device=lengths.device)


def inference_packed(encoder: PreTrainedModel, batch: Batch) -> bool:
    """Whether evaluation encodes ``batch`` (right-padded, in eval mode) packed: the one
    decision for ``hbt eval`` and the evaluations during training (``hbt mine`` could take
    it too, but stays padded: see hbt.mine.encode). Nothing is drawn in eval mode, so
    either way gives the same embeddings up to float rounding; packing saves the padding
    but pays for gathering each layer's attention inputs into groups and back, so it is
    chosen only where the padding is worth more (:data:`PACKING_PAYS`), which
    evaluation's length-sorted batches rarely are. On a CPU for every encoder packing
    supports; on a GPU one padded pass, until the device check has timed packed encoding
    (one varlen call per layer, :func:`one_call`) against it there: a GPU runs a
    padded layer as one kernel, and a guess either way would be a guess."""
    mask = batch["attention_mask"]
    if not packable(encoder) or mask.device.type != "cpu":
        return False
    return mask.numel() >= PACKING_PAYS * int(mask.sum())


def varlen_side(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packed: Packed,
                scaling: float | None) -> torch.Tensor:
    """Attention over a packed row ([1, heads, T, dim] each) in one variable-length call:
    every text attends to its own tokens only; returns [1, T, heads, dim]."""
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, dim]
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else q.dtype
    q, k, v = (x.to(dtype) for x in (q, k, v))
    return varlen_attn(q, k, v, packed.offsets, packed.offsets, packed.longest, packed.longest, scale=scaling)[None]


@functools.cache
def compiled_flex() -> Callable:
    """flex_attention compiled once per process (dynamic shapes: every packed row has its
    own length); uncompiled it computes the full [T, T] scores."""
    return torch.compile(flex_attention, dynamic=True)


def flex_side(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packed: Packed,
              scaling: float | None) -> torch.Tensor:
    """Attention over a packed row ([1, heads, T, dim] each) in one flex_attention call
    under the row's document mask; returns [1, T, heads, dim] as :func:`varlen_side` does."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    q, k, v = (x.to(dtype) for x in (query, key, value))
    attend = compiled_flex() if q.is_cuda else flex_attention
    return attend(q, k, v, block_mask=packed.block_mask, scale=scaling).transpose(1, 2)


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     hbt_packed: Packed | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention over a packed row ([1, heads, T, dim] each), text by text: each group of
    texts is gathered into a padded [rows, heads, width, dim] batch, attended with SDPA
    under its key mask, and scattered back. Without ``hbt_packed`` (a padded call to a
    packed model's encoder) it is transformers' SDPA attention."""
    if hbt_packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if hbt_packed.block_mask is not None:
        return flex_side(query, key, value, hbt_packed, scaling), None
    if hbt_packed.offsets is not None:
        return varlen_side(query, key, value, hbt_packed, scaling), None
    heads, dim = query.shape[1], query.shape[3]
    outs = []
    for g in hbt_packed.groups:
        q, k, v = (x[0].index_select(1, g.tokens).view(heads, g.rows, g.width, dim).transpose(0, 1) for x in (query, key, value))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.key_mask, dropout_p=dropout, scale=scaling)
        outs.append(o.transpose(1, 2).flatten(0, 1))
    return torch.cat(outs).index_select(0, hbt_packed.back)[None], None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # padded calls get SDPA's mask
