"""Pure arithmetic of a run: the learning rate per step and which blocks each step reads.

Determinism: the packed blocks form one stream (a seeded permutation per epoch), optimizer
step ``s`` reads the ``step_blocks`` blocks at stream positions ``s * step_blocks`` onwards,
and the learning rate is a pure function of the step. None of it depends on the number of
processes: each rank takes its contiguous slice of the step's blocks, in micro-batches of
at most ``micro_batch`` blocks, and the loss is normalised by the step's tokens over all
ranks, so the summed gradient is the same for any world size (up to float summation order).
A checkpoint therefore needs only the step, adapter, optimizer and RNG states, and a group
that restarts with another number of processes continues the same run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oneseek_job.config import TrainSettings

__all__ = ["BlockOrder", "Plan", "lr_at", "make_plan", "requested_step_blocks"]


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
    """How packed blocks map onto optimizer steps, and onto this group's ranks."""

    n_blocks: int
    step_blocks: int  # blocks per optimizer step, over all ranks
    micro_batch: int
    world: int
    total_steps: int
    warmup_steps: int
    epoch_limit: int | None  # the requested epochs when they, not max_steps, set the length

    @property
    def epochs(self) -> int:
        """Epochs the run touches (at least one)."""
        natural = max(1, math.ceil(self.total_steps * self.step_blocks / self.n_blocks))
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


def requested_step_blocks(seq_len: int, train: TrainSettings) -> int:
    """Blocks per optimizer step the settings ask for (``batch_tokens / seq_len``, at least 1)."""
    return max(1, train.batch_tokens // seq_len)


def make_plan(
    n_blocks: int, seq_len: int, world: int, train: TrainSettings, step_blocks: int | None = None
) -> Plan:
    """Steps and warmup for ``n_blocks`` packed blocks, spread over ``world`` ranks.

    Args:
        n_blocks: packed training blocks.
        seq_len: tokens per block.
        world: processes in the group.
        train: the settings (batch tokens, micro-batch, epochs or max steps, warmup).
        step_blocks: blocks per step, when a checkpoint fixed them; default from the
            settings, raised to ``world`` so that every rank has at least one block.
    """
    if step_blocks is None:
        step_blocks = max(requested_step_blocks(seq_len, train), world)
    total = train.max_steps or max(1, math.ceil(train.epochs * n_blocks / step_blocks))
    return Plan(
        n_blocks=n_blocks,
        step_blocks=step_blocks,
        micro_batch=train.micro_batch_size,
        world=world,
        total_steps=total,
        warmup_steps=round(total * train.warmup_ratio),
        epoch_limit=None if train.max_steps else train.epochs,
    )


class BlockOrder:
    """Global block indices of each step: a stream of seeded per-epoch permutations.

    Every rank computes the same stream and takes its own slice, so no sampler state needs
    saving; a step may cross from one epoch into the next, and with a step count derived
    from epochs the rounded-up last step re-reads the start of the last epoch.
    """

    def __init__(self, plan: Plan, seed: int) -> None:
        self._plan = plan
        self._seed = seed
        self._cache: dict[int, list[int]] = {}

    def epoch_of(self, position: int) -> int:
        """0-based epoch of the block at stream ``position``."""
        epoch = position // self._plan.n_blocks
        limit = self._plan.epoch_limit
        return min(epoch, limit - 1) if limit else epoch

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            # A step spans at most two epochs: keep the one before.
            self._cache = {k: v for k, v in self._cache.items() if k == epoch - 1}
            self._cache[epoch] = torch.randperm(self._plan.n_blocks, generator=generator).tolist()
        return self._cache[epoch]

    def step_indices(self, step: int) -> list[int]:
        """Blocks of optimizer step ``step`` over all ranks, in stream order."""
        plan = self._plan
        first = step * plan.step_blocks
        positions = range(first, first + plan.step_blocks)
        return [self._perm(self.epoch_of(p))[p % plan.n_blocks] for p in positions]

    def rank_micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """``rank``'s micro-batches of step ``step``: its contiguous slice of the step's
        blocks (sizes differ by at most one between ranks), ``micro_batch`` at a time."""
        plan = self._plan
        blocks = self.step_indices(step)
        mine = blocks[
            rank * plan.step_blocks // plan.world : (rank + 1) * plan.step_blocks // plan.world
        ]
        return [mine[i : i + plan.micro_batch] for i in range(0, len(mine), plan.micro_batch)]
