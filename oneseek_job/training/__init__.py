"""The LoRA training engine: one recipe (:mod:`.recipe`) and the small modules it uses.

``train_model`` is the stable entry point the job calls; it builds a :class:`TrainJob`
and runs :class:`LoraRecipe` (validate → setup → train → save → cleanup).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.data import Record
from oneseek_job.signals import STOP, StopFlag
from oneseek_job.training.distributed import is_main_process
from oneseek_job.training.recipe import (
    LoraRecipe,
    TrainJob,
    TrainOutcome,
    load_tokenizer,
    run_recipe,
)
from oneseek_job.training.schedule import lr_at
from oneseek_job.training.targets import TARGET_MODULES

__all__ = [
    "TARGET_MODULES",
    "LoraRecipe",
    "TrainJob",
    "TrainOutcome",
    "is_main_process",
    "load_tokenizer",
    "lr_at",
    "train_model",
]


def train_model(
    *,
    key: str,
    model_path: Path,
    records: list[Record],
    lora: LoraSettings,
    train: TrainSettings,
    adapter_dir: Path,
    weights_path: Path,
    checkpoint_dir: Path,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    device: str | None = None,
    allow_pickle: bool = False,
    base_model_id: str | None = None,
    attention: str | None = None,
    stop: StopFlag = STOP,
) -> TrainOutcome:
    """Train, evaluate and save one LoRA adapter, resuming from ``checkpoint_dir``.

    The arguments are :class:`TrainJob`'s fields.

    Raises:
        InputError: unusable model, tokenizer, dataset, architecture, disk or GPU memory,
            or an adapter vLLM would not load.
        Preempted: ``stop`` was set (SIGTERM); a checkpoint was saved first.
    """
    return run_recipe(
        TrainJob(
            key=key,
            model_path=model_path,
            records=records,
            lora=lora,
            train=train,
            adapter_dir=adapter_dir,
            weights_path=weights_path,
            checkpoint_dir=checkpoint_dir,
            base_model_id=base_model_id,
            on_progress=on_progress,
            device=device,
            allow_pickle=allow_pickle,
            attention=attention,
            stop=stop,
        )
    )
