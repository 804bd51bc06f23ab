"""Resumable state and the final adapter files of one model's run.

A step checkpoint is a directory ``step-NNNNNNNN`` holding the adapter (safetensors), the
optimizer and RNG states and ``state.json`` (written last: its presence marks the
checkpoint complete), written under a temporary name and renamed into place. ``final/``
keeps the trained adapter and its outcome so a retry after a failed upload rebuilds the
outputs without training again.

Adapter state dicts are always keyed as PEFT's ``get_peft_model_state_dict`` keys them on
the bare ``PeftModel``: wrappers (``torch.compile``'s ``_orig_mod.``, DDP's ``module.``)
are removed before saving and before loading, and every load checks that the keys match
the model exactly (a silent partial load once resumed a fresh LoRA with an old optimizer).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.data import PackedData
from oneseek_job.errors import InputError
from oneseek_job.lease import writer_id
from oneseek_job.logs import get_logger

__all__ = [
    "FINAL_DIR",
    "KEEP_CHECKPOINTS",
    "Resume",
    "adapter_state",
    "fingerprint",
    "load_adapter_state",
    "load_final",
    "load_latest",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unwrap",
    "write_outputs",
]

log = get_logger(__name__)

KEEP_CHECKPOINTS = 2
FINAL_DIR = "final"
_CKPT_PREFIX = "step-"
# Prefixes that wrappers put in front of the PeftModel's own keys.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Settings that change what training computes; the rest (log/checkpoint cadence, policy
# flags) may differ between an interrupted run and its resume. The micro-batch size only
# splits a step's blocks into forward passes (the step's gradient is the same sum), so a
# group resized onto GPUs of another memory may change it too.
_FINGERPRINT_EXCLUDE = {
    "log_every",
    "checkpoint_every",
    "allow_regression",
    "skip_bad_records",
    "micro_batch_size",
}


# --------------------------------------------------------------------------- adapter state


def unwrap(model: Any) -> Any:
    """The bare module under ``torch.compile`` and DDP wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif "_orig_mod" in getattr(model, "_modules", {}):  # torch.compile's OptimizedModule
            model = model._modules["_orig_mod"]
        else:
            return model


def _clean_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def adapter_state(model: Any) -> dict[str, Any]:
    """The adapter's tensors (CPU, contiguous), keyed as on the bare PeftModel."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unwrap(model))
    return {_clean_key(k): v.detach().cpu().contiguous() for k, v in state.items()}


def load_adapter_state(model: Any, state: dict[str, Any], *, source: str) -> None:
    """Load ``state`` into the model's adapter, or fail when any key does not match.

    Args:
        model: the PeftModel (wrappers are looked through).
        state: adapter tensors as :func:`adapter_state` returns them; keys with wrapper
            prefixes (checkpoints written by earlier versions) are accepted.
        source: where the state came from, for the error message.

    Raises:
        InputError: keys the model does not have, or adapter weights the state lacks.
    """
    from peft import set_peft_model_state_dict

    bare = unwrap(model)
    cleaned = {_clean_key(k): v for k, v in state.items()}
    result = set_peft_model_state_dict(bare, cleaned)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if unexpected or missing or not cleaned:
        shown = (unexpected or missing or ["(empty state)"])[:3]
        raise InputError(
            f"the adapter in {source} does not match the model ({len(unexpected)} unexpected, "
            f"{len(missing)} missing keys, e.g. {shown}); delete {source} so the model "
            "trains again"
        )


# --------------------------------------------------------------------------- identity, RNG


def fingerprint(
    model_path: Path, lora: LoraSettings, train: TrainSettings, data: PackedData
) -> str:
    """What a checkpoint must have been trained with to be resumed (settings, data, model).

    Not the number of processes: the data order, the blocks of each step and the step count
    do not depend on it (:mod:`oneseek_job.training.schedule`), so a group may resume with
    another size. The blocks per step are kept in the checkpoint's state instead, and the
    recipe refuses a group too large to split them.
    """
    digest = hashlib.sha256()
    settings = {
        "model": model_path.name,
        "lora": lora.model_dump(mode="json"),
        "train": {
            k: v for k, v in train.model_dump(mode="json").items() if k not in _FINGERPRINT_EXCLUDE
        },
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for tensor in (data.train.input_ids, data.train.targets, data.val.input_ids):
        digest.update(tensor.numpy().tobytes())
    config = model_path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (LoRA dropout: torch; CUDA when initialised)."""
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s snapshot."""
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- writing


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write a directory under a temporary name, then rename it into place.

    The temporary name is unique to this writer (host and a random part): a PID is 1 in
    every container, so two pods on one checkpoint volume would share a PID-named temp dir.
    """
    tmp = final.parent / f".tmp-{final.name}-{writer_id()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoints stay untouched
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _write_errors() -> tuple[type[BaseException], ...]:
    # torch.save reports a failed write (ENOSPC, EFBIG) as RuntimeError and safetensors as
    # SafetensorError (not an OSError); inside a checkpoint write both are I/O failures.
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def _write_error_text(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split())[:160] or type(error).__name__


def _checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Step checkpoints, newest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob(f"{_CKPT_PREFIX}*") if p.is_dir()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def save_checkpoint(
    checkpoint_dir: Path,
    *,
    step: int,
    position: int,
    epoch: int,
    model: Any,
    optimizer: Any,
    rng: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write ``step-NNNNNNNN`` atomically and keep the newest :data:`KEEP_CHECKPOINTS`.

    Raises:
        InputError: the volume is full or read-only (a retry would fail the same way).
    """
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(adapter_state(model), str(tmp / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        # state.json is written last: its presence marks the checkpoint complete.
        state = {"step": step, "position": position, "epoch": epoch, **meta}
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))

    target = checkpoint_dir / f"{_CKPT_PREFIX}{step:08d}"
    try:
        _atomic_dir(target, write)
    except _write_errors() as error:
        # ENOSPC / EFBIG / EROFS: a retry on the same volume fails the same way, so exit 2.
        # The previous checkpoints are untouched (the new one was still under a temp name,
        # which _atomic_dir removed).
        raise InputError(
            f"cannot write checkpoint {target}: {_write_error_text(error)}; free space or "
            "point CHECKPOINT_DIR at a larger, writable volume"
        ) from None
    for old in _checkpoints(checkpoint_dir)[KEEP_CHECKPOINTS:]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint_saved", tag="training", step=step, path=str(target))
    return target


def _sort_target_modules(config_path: Path) -> None:
    # peft keeps target_modules as a set and writes it in hash order, so two identical runs
    # would publish different adapter_config.json bytes; sorted, the artifact is reproducible.
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def write_outputs(
    model: Any,
    tokenizer: Any,
    *,
    adapter_dir: Path,
    weights_path: Path,
    checkpoint_dir: Path,
    outcome_fields: dict[str, Any],
    finish_adapter: Callable[[Path], None] | None = None,
) -> None:
    """The PEFT adapter directory, the adapter-only ``.pth`` and ``final/``.

    Args:
        model: the trained PeftModel (wrappers are looked through).
        tokenizer: saved beside the adapter.
        adapter_dir: PEFT ``save_pretrained`` target.
        weights_path: the adapter-only state dict (``torch.load(weights_only=True)``).
        checkpoint_dir: this model's checkpoint directory (``final/`` goes there).
        outcome_fields: the run's outcome, kept in ``final/outcome.json``.
        finish_adapter: last edits of the adapter directory (config, README) before
            ``final/`` marks the run done.

    Raises:
        InputError: the volume is full or read-only.
    """
    import torch
    from safetensors.torch import save_file

    bare = unwrap(model)
    state = adapter_state(bare)

    def write(final: Path) -> None:
        save_file(state, str(final / "adapter.safetensors"))
        (final / "outcome.json").write_text(json.dumps(outcome_fields, indent=2, sort_keys=True))

    try:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        bare.save_pretrained(adapter_dir, safe_serialization=True)
        _sort_target_modules(adapter_dir / "adapter_config.json")
        tokenizer.save_pretrained(adapter_dir)
        if finish_adapter is not None:
            finish_adapter(adapter_dir)
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights_path.with_name(weights_path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(weights_path)
        # The final adapter stays in CHECKPOINT_DIR so a retry after a failed upload does
        # not train again; step checkpoints are no longer needed.
        _atomic_dir(checkpoint_dir / FINAL_DIR, write)
    except _write_errors() as error:
        raise InputError(
            f"cannot write the trained adapter under {adapter_dir.parent.parent} or "
            f"{checkpoint_dir}: {_write_error_text(error)}; free space or point "
            "ONESEEK_WORK_DIR / CHECKPOINT_DIR at a larger, writable volume"
        ) from None
    for old in _checkpoints(checkpoint_dir):
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading


@dataclass
class Resume:
    """A checkpoint to continue from."""

    path: Path
    step: int
    position: int  # the stream position of the step's first block
    state: dict[str, Any]
    adapter: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def load_latest(checkpoint_dir: Path, fingerprint: str) -> Resume | None:
    """The newest readable checkpoint of this fingerprint; None to start from scratch."""
    import torch
    from safetensors.torch import load_file

    for path in _checkpoints(checkpoint_dir):
        try:
            state = json.loads((path / "state.json").read_text())
            if state.get("fingerprint") != fingerprint:
                log.warning(
                    "checkpoint_settings_changed",
                    tag="training",
                    path=str(path),
                    hint="settings, data or model differ from the interrupted run; "
                    "starting this model from scratch",
                )
                return None
            return Resume(
                path=path,
                step=int(state["step"]),
                position=int(state["position"]),
                state=state,
                adapter=load_file(str(path / "adapter.safetensors")),
                optimizer=torch.load(path / "optimizer.pt", weights_only=True),
                rng=torch.load(path / "rng.pt", weights_only=True),
            )
        except Exception as error:
            log.warning(
                "checkpoint_unreadable",
                tag="training",
                path=str(path),
                error=f"{type(error).__name__}: {error}"[:300],
            )
    return None


def load_final(checkpoint_dir: Path, fingerprint: str) -> tuple[dict[str, Any], Any] | None:
    """``(outcome fields, adapter tensors)`` of a finished run of this fingerprint, or None."""
    from safetensors.torch import load_file

    final = checkpoint_dir / FINAL_DIR
    try:
        fields = json.loads((final / "outcome.json").read_text())
        if fields.get("fingerprint") != fingerprint:
            return None
        return fields, load_file(str(final / "adapter.safetensors"))
    except (OSError, ValueError, KeyError):
        return None
