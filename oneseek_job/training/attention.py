"""Per-document attention over packed rows, without a dense ``(T, T)`` mask.

A micro-batch is one row of documents laid end to end (``data.make_batch``); position ids
restart at 0 where a document starts, and the host-built ``cu_seqlens``/``document_ids``
travel with the model's keyword arguments. Three kernels, one contract (transformers'
attention interface: ``(B, H, T, D)`` in, ``(B, T, H, D)`` out), all causal within a
document, all honouring a layer's ``sliding_window`` and Gemma-2's ``softcap``, none
repeating K/V for grouped-query attention:

- ``oneseek_documents`` (CPU): causal SDPA per document; the attention cost falls from
  ``T²`` to ``Σ len(doc)²``. Softcap or a window shorter than the document takes an exact
  explicit path (SDPA has no softcap).
- ``oneseek_flex`` (portable): ``flex_attention`` with a document BlockMask (window as a
  mask_mod, softcap as a score_mod); compiled on CUDA, eager (unfused) elsewhere. torch
  2.13 has no flex backward on CPU, so on CPU it serves evaluation and tests of values;
  its gradients are checked on CUDA (``-m gpu``).
- ``oneseek_varlen`` (CUDA): ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention
  varlen) over ``cu_seqlens``; Gemma-2's softcap is not in that kernel, so those layers
  go through flex.

The kernels are deliberately not registered as mask functions: transformers then builds
no attention mask at all for them, which is the other half of the saving.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

__all__ = [
    "DOC_SDPA",
    "FLEX",
    "VARLEN",
    "doc_sdpa_attention",
    "flex_document_attention",
    "reference_attention",
    "register_attention",
    "varlen_document_attention",
]

DOC_SDPA = "oneseek_documents"  # no "sdpa" in it: transformers would apply SDPA's model checks
FLEX = "oneseek_flex"
VARLEN = "oneseek_varlen"


def _segments(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per batch row, ``(start, end)`` of every run of consecutive positions (host)."""
    rows: list[list[tuple[int, int]]] = []
    for row in position_ids.tolist():
        bounds = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1] + [len(row)]
        rows.append(list(itertools.pairwise(bounds)))
    return rows


def reference_attention(
    query: Any,
    key: Any,
    value: Any,
    *,
    scale: float | None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    dropout: float = 0.0,
) -> Any:
    """Causal attention of one document, computed explicitly: ``(B, Hq, T, D)`` out.

    Grouped-query heads are handled by viewing the queries as ``(B, Hkv, G, T, D)``, so
    K/V are broadcast, not copied. Used where SDPA cannot express the layer (softcap, a
    window shorter than the document).
    """
    import torch

    b, hq, t, d = query.shape
    hkv = key.shape[1]
    q = query.reshape(b, hkv, hq // hkv, t, d)
    scores = torch.matmul(q, key.unsqueeze(2).transpose(-1, -2)) * (scale or d**-0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    i = torch.arange(t, device=query.device).unsqueeze(1)
    j = torch.arange(t, device=query.device).unsqueeze(0)
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (i - j < sliding_window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if dropout > 0:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    return torch.matmul(probs, value.unsqueeze(2)).reshape(b, hq, t, d)


def _one_document(
    q: Any, k: Any, v: Any, drop: float, scale: float | None, window: int | None, cap: Any
) -> Any:
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    if cap is None and (window is None or q.shape[2] <= window):
        gqa = k.shape[1] != q.shape[1]
        return sdpa(q, k, v, dropout_p=drop, is_causal=True, scale=scale, enable_gqa=gqa)
    return reference_attention(
        q, k, v, scale=scale, sliding_window=window, softcap=cap, dropout=drop
    )


def doc_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """CPU kernel: causal attention per document (documents from ``position_ids``).

    Args:
        module: the attention module (``training`` decides attention dropout).
        query, key, value: projected states; key/value may have fewer (GQA) heads.
        attention_mask: ignored; documents come from ``position_ids`` (rows hold no
            padding except at the end of the last block, whose targets are ignored).
        dropout: attention dropout probability (training only).
        scaling: softmax scale; None means 1/sqrt(head_dim).
        sliding_window: the layer's window (tokens a query sees, itself included).
        softcap: Gemma-2's attention logit soft-capping.
        kwargs: ``position_ids`` of shape (B, T).
    """
    import torch

    position_ids = kwargs.get("position_ids")
    drop = dropout if module.training else 0.0
    if position_ids is None or key.shape[2] != query.shape[2]:
        # Generation with a cache, or no packing information: one causal sequence per row.
        out = _one_document(query, key, value, drop, scaling, sliding_window, softcap)
        return out.transpose(1, 2).contiguous(), None
    # split(), not slicing: the backward of a split is one concatenation of the pieces'
    # gradients, while every slice's backward writes into its own zero-filled copy of the
    # whole tensor (that was a fifth of the CPU step time).
    rows = []
    segments_of = _segments(position_ids.expand(query.shape[0], -1))
    per_row = zip(query.split(1), key.split(1), value.split(1), segments_of, strict=True)
    for q_row, k_row, v_row, segments in per_row:
        lengths = [end - start for start, end in segments]
        parts = [
            _one_document(q, k, v, drop, scaling, sliding_window, softcap)
            for q, k, v in zip(
                q_row.split(lengths, dim=2),
                k_row.split(lengths, dim=2),
                v_row.split(lengths, dim=2),
                strict=True,
            )
        ]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


# --------------------------------------------------------------------------- flex

_BLOCK_MASKS: dict[tuple[int, int, int | None], Any] = {}


def _document_block_mask(document_ids: Any, window: int | None) -> Any:
    """The BlockMask of one micro-batch, built once and shared by all its layers."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (document_ids.data_ptr(), int(document_ids.shape[-1]), window)
    if key not in _BLOCK_MASKS:
        docs = document_ids[0]

        def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
            same = (docs[q] == docs[kv]) & (kv <= q)
            return same & (q - kv < window) if window is not None else same

        length = int(docs.shape[0])
        _BLOCK_MASKS.clear()  # one micro-batch at a time: the previous ones are done
        _BLOCK_MASKS[key] = create_block_mask(
            mask_mod, None, None, length, length, device=str(docs.device)
        )
    return _BLOCK_MASKS[key]


@functools.cache
def _flex(device_type: str) -> Callable[..., Any]:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    kernel: Callable[..., Any] = flex_attention
    if device_type == "cuda":  # fused Triton kernel; elsewhere eager (unfused but exact)
        kernel = torch.compile(flex_attention, dynamic=False)
    return kernel


def flex_document_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Portable kernel: flex_attention under a document BlockMask (``document_ids``)."""
    document_ids = kwargs.get("document_ids")
    if document_ids is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return doc_sdpa_attention(
            module, query, key, value, attention_mask, dropout, scaling, sliding_window,
            softcap, **kwargs,
        )  # fmt: skip
    if dropout > 0 and module.training:
        raise ValueError("flex attention has no attention dropout; use oneseek_documents")
    score_mod = None
    if softcap is not None:
        cap = float(softcap)

        def score_mod(score: Any, b: Any, h: Any, q: Any, kv: Any) -> Any:
            import torch

            return torch.tanh(score / cap) * cap

    out = _flex(query.device.type)(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=_document_block_mask(document_ids, sliding_window),
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


# --------------------------------------------------------------------------- varlen (CUDA)


def varlen_document_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """CUDA kernel: FlashAttention varlen over the host-built ``cu_seq_lens_q``."""
    from torch.nn.attention.varlen import varlen_attn

    cu = kwargs.get("cu_seq_lens_q")
    drop = dropout if module.training else 0.0
    on_cuda = query.device.type == "cuda"
    if cu is None or softcap is not None or drop > 0 or query.shape[0] != 1 or not on_cuda:
        return flex_document_attention(
            module, query, key, value, attention_mask, dropout, scaling, sliding_window,
            softcap, **kwargs,
        )  # fmt: skip
    _, hq, t, d = query.shape
    hkv = key.shape[1]
    max_len = int(kwargs["max_length_q"])
    # transformers' window counts the query itself; flash's left extent does not.
    window = (sliding_window - 1 if sliding_window is not None else -1, 0)
    out = varlen_attn(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu,
        cu,
        max_len,
        max_len,
        scale=scaling,
        window_size=window,
        enable_gqa=hkv != hq,
    )
    return out.reshape(1, t, hq, d), None


_KERNELS: dict[str, Callable[..., Any]] = {
    DOC_SDPA: doc_sdpa_attention,
    FLEX: flex_document_attention,
    VARLEN: varlen_document_attention,
}


def register_attention(name: str) -> str:
    """Register kernel ``name`` with transformers (idempotent) and return the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, _KERNELS[name])
    return name
