"""Document-aware attention for packed blocks on CPU: attend within each document only.

Packed training blocks hold several documents back to back, their ``position_ids``
restarting at 0 where a document starts. With plain SDPA, transformers turns that into a
dense block-diagonal mask over the whole block, so every token still pays for a
``seq_len``-wide attention row. This kernel cuts the block at the position restarts and
runs causal SDPA per document, which is what a varlen kernel does on GPU: the attention
cost falls from ``seq_len²`` to ``Σ len(doc)²`` per block. On CPU the segment boundaries
cost nothing to read; on CUDA they would be a host sync per layer, so CUDA keeps ``sdpa``.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["PACKED_ATTENTION", "register_packed_attention"]

PACKED_ATTENTION = "oneseek_packed_sdpa"


def _segments(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per batch row, ``(start, end)`` of every run of consecutive positions."""
    rows: list[list[tuple[int, int]]] = []
    for row in position_ids.tolist():
        bounds = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1] + [len(row)]
        rows.append(list(itertools.pairwise(bounds)))
    return rows


def packed_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention interface: (B, H, T, D) in, (B, T, H, D) out.

    Args:
        module: the attention module (for ``num_key_value_groups``).
        query, key, value: projected states; key/value may have fewer (GQA) heads.
        attention_mask: ignored; documents come from ``position_ids`` (no padding in blocks
            except at the end of the last one, whose targets are ignored).
        dropout: attention dropout probability (training only).
        scaling: softmax scale; None means 1/sqrt(head_dim).
        kwargs: must carry ``position_ids`` of shape (B, T).
    """
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    position_ids = kwargs.get("position_ids")
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    drop = dropout if module.training else 0.0
    if position_ids is None or key.shape[2] != query.shape[2]:
        # Generation with a cache, or no packing information: ordinary causal attention.
        out = sdpa(query, key, value, dropout_p=drop, is_causal=query.shape[2] > 1, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    rows = []
    for b, segments in enumerate(_segments(position_ids.expand(query.shape[0], -1))):
        parts = [
            sdpa(
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, start:end],
                value[b : b + 1, :, start:end],
                dropout_p=drop,
                is_causal=True,
                scale=scaling,
            )
            for start, end in segments
        ]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    """Register the kernel with transformers (idempotent) and return its name.

    It is deliberately not registered as a mask function: transformers then builds no
    attention mask at all for it, which is the other half of the saving.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    return PACKED_ATTENTION
