"""Pure arithmetic of a run: the learning rate per step and which blocks each micro-step reads.

Determinism: the micro-batch at global index ``m`` is a pure function of ``(seed, m)``
(a per-epoch seeded permutation of the packed blocks) and the learning rate a pure
function of the step, so a checkpoint only needs the step, adapter, optimizer and RNG
states to continue exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oneseek_job.config import TrainSettings

__all__ = ["BlockOrder", "Plan", "lr_at", "make_plan"]


def lr_at(
    step: int, *, total_steps: int, warmup_steps: int, base_lr: float, schedule: str
) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then decay to 0.

    Args:
        step: the optimizer step about to run.
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warmup from ``base_lr / (warmup_steps + 1)``.
        base_lr: peak learning rate.
        schedule: ``cosine``, ``linear`` or ``constant`` after warmup.
    """
    # 1) linear warmup
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return base_lr
    # 2) decay over the remaining steps, reaching 0 after the last one
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}")


@dataclass(frozen=True)
class Plan:
    """How packed blocks map onto micro-batches and steps."""

    n_blocks: int
    micro_batch: int
    world: int
    accum: int
    micro_per_epoch: int
    total_steps: int
    warmup_steps: int
    epoch_limit: int | None  # the requested epochs when they, not max_steps, set the length

    @property
    def epochs(self) -> int:
        """Epochs the run touches (at least one)."""
        natural = max(1, math.ceil(self.total_steps * self.accum / self.micro_per_epoch))
        return min(natural, self.epoch_limit) if self.epoch_limit else natural

    def lr(self, step: int, train: TrainSettings) -> float:
        """The learning rate of ``step`` under ``train``'s schedule."""
        return lr_at(
            step,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            base_lr=train.learning_rate,
            schedule=train.lr_schedule,
        )


def make_plan(n_blocks: int, seq_len: int, world: int, train: TrainSettings) -> Plan:
    """Accumulation, steps and warmup for ``n_blocks`` packed blocks over ``world`` ranks."""
    per_micro = train.micro_batch_size * world
    accum = max(1, train.batch_tokens // (seq_len * per_micro))
    micro_per_epoch = max(1, math.ceil(n_blocks / per_micro))
    total = train.max_steps or max(1, math.ceil(train.epochs * micro_per_epoch / accum))
    return Plan(
        n_blocks=n_blocks,
        micro_batch=train.micro_batch_size,
        world=world,
        accum=accum,
        micro_per_epoch=micro_per_epoch,
        total_steps=total,
        warmup_steps=round(total * train.warmup_ratio),
        epoch_limit=None if train.max_steps else train.epochs,
    )


class BlockOrder:
    """Global block indices of micro-batch ``m``: a seeded permutation per epoch.

    Every rank computes the same permutation and takes its own slice, so no sampler state
    needs saving; a short last micro-batch of an epoch wraps around to the epoch's start
    (as DistributedSampler pads) so all ranks always run the same number of micro-steps.
    """

    def __init__(self, plan: Plan, seed: int) -> None:
        self._plan = plan
        self._seed = seed
        self._cache: dict[int, list[int]] = {}

    def epoch_of(self, micro: int) -> int:
        """0-based epoch of micro-step ``micro``."""
        epoch = micro // self._plan.micro_per_epoch
        # With a step count derived from epochs, the rounded-up last step re-reads the
        # start of the last epoch instead of opening one more.
        limit = self._plan.epoch_limit
        return min(epoch, limit - 1) if limit else epoch

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self._plan.n_blocks, generator=generator).tolist()}
        return self._cache[epoch]

    def global_indices(self, micro: int) -> list[int]:
        """Blocks of micro-step ``micro`` over all ranks."""
        plan = self._plan
        perm = self._perm(self.epoch_of(micro))
        within = micro - self.epoch_of(micro) * plan.micro_per_epoch
        width = plan.micro_batch * plan.world
        return [perm[(within * width + k) % plan.n_blocks] for k in range(width)]

    def rank_indices(self, micro: int, rank: int) -> list[int]:
        """Blocks of micro-step ``micro`` for ``rank``."""
        width = self._plan.micro_batch
        return self.global_indices(micro)[rank * width : (rank + 1) * width]
