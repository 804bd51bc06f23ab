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

__all__ = ["batch_loss", "evaluate"]


def batch_loss(model: Any, batch: Batch, autocast: Callable[[], Any]) -> Any:
    """Summed next-token cross-entropy over the batch's targets (a device scalar, no sync).

    Args:
        model: the (possibly wrapped) causal LM.
        batch: a micro-batch already on the model's device.
        autocast: context factory (bf16 autocast on CUDA, a no-op on CPU).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    with autocast():
        logits = model(**batch.model_inputs(), logits_to_keep=batch.keep).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), batch.targets, reduction="sum"
    ).to(torch.float32)


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
