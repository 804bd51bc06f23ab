"""The training loss of a micro-batch and the validation loss of a block set.

Only positions with a target (answer tokens by default) go through the LM head: the
host-built flat indices are passed as ``logits_to_keep``, a gather on the device, so the
step never waits on the device (a boolean mask there is a host sync per micro-step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oneseek_job.data import Batch, Blocks, make_batch
from oneseek_job.training.distributed import Dist, all_reduce_sum

__all__ = ["LOSS_CHUNK_BYTES", "batch_loss", "chunk_rows", "chunked_cross_entropy", "evaluate"]

# fp32 working set of one loss chunk (upcast logits, log-softmax, gradient): with a 128k
# vocabulary the whole micro-batch at once would hold gigabytes.
LOSS_CHUNK_BYTES = 256 * 2**20


def chunk_rows(vocab_size: int) -> int:
    """Target tokens per loss chunk for ``vocab_size`` (at least one)."""
    return max(1, LOSS_CHUNK_BYTES // (vocab_size * 4))


def _ce_sum(logits: Any, targets: Any) -> Any:
    import torch.nn.functional as F  # noqa: N812

    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_cross_entropy(logits: Any, targets: Any, rows: int) -> Any:
    """Summed cross-entropy of ``(K, V)`` logits, ``rows`` at a time, exactly.

    Each chunk's fp32 upcast and log-softmax are recomputed in backward instead of being
    kept (non-reentrant activation checkpointing), so only the logits in the model's dtype
    and their gradient are whole-batch sized. Every row's loss is the same computation as
    unchunked; only the summation order of the chunks differs.
    """
    from torch.utils.checkpoint import checkpoint

    n = int(logits.shape[0])  # shape metadata: no device sync
    if n <= rows:
        return _ce_sum(logits, targets)
    parts = [
        checkpoint(_ce_sum, logits[start : start + rows], targets[start : start + rows],
                   use_reentrant=False)
        for start in range(0, n, rows)
    ]  # fmt: skip
    return sum(parts[1:], parts[0])


def batch_loss(model: Any, batch: Batch, autocast: Callable[[], Any]) -> Any:
    """Summed next-token cross-entropy over the batch's targets (a device scalar, no sync).

    Args:
        model: the (possibly wrapped) causal LM.
        batch: a micro-batch already on the model's device.
        autocast: context factory (bf16 autocast on CUDA, a no-op on CPU).
    """
    import torch

    with autocast():
        logits = model(**batch.model_inputs(), logits_to_keep=batch.keep).logits
    flat = logits.reshape(-1, logits.shape[-1])
    return chunked_cross_entropy(flat, batch.targets, chunk_rows(flat.shape[-1])).to(torch.float32)


def evaluate(
    model: Any,
    blocks: Blocks,
    ctx: Dist,
    device: Any,
    autocast: Callable[[], Any],
    micro_batch: int,
) -> float:
    """Mean token loss over ``blocks`` (sharded across ranks, then summed)."""
    import torch

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        mine = list(range(ctx.rank, len(blocks), ctx.world))
        for start in range(0, len(mine), micro_batch):
            batch = make_batch(blocks, mine[start : start + micro_batch])
            if batch.keep.numel() == 0:
                continue
            total[0] += batch_loss(model, batch.to(device), autocast).double()
            total[1] += float(batch.keep.numel())
    all_reduce_sum(total, ctx)
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))
