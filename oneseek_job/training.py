"""One model's LoRA run: load, evaluate the base, train, checkpoint, resume, evaluate, save.

The loop is nanoGPT-shaped (set LR → check preemption/checkpoint → micro-steps → clip →
step → log) and runs unchanged on CPU (tests, demo) and CUDA (production: bf16 autocast,
fused AdamW, optional non-reentrant gradient checkpointing).

Determinism: the micro-batch at global index ``m`` is a pure function of ``(seed, m)``
(per-epoch seeded permutation of the packed blocks), and the learning rate a pure function
of the step, so a checkpoint only needs the step, adapter, optimizer and RNG states to
continue exactly where it stopped.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised
from the ``env://`` variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...; read by
torch.distributed, not by this module's settings), NCCL on CUDA and gloo on CPU. Every
rank sees the same block order and takes its own slice of each micro-batch; only rank 0
writes checkpoints and artifacts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneseek_job.attention import register_packed_attention
from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.data import IGNORE_INDEX, Blocks, PackedData, Record, prepare_data
from oneseek_job.errors import InputError, Preempted
from oneseek_job.lease import writer_id
from oneseek_job.logs import get_logger

if TYPE_CHECKING:
    import torch

__all__ = [
    "TARGET_MODULES",
    "PreemptionFlag",
    "TrainOutcome",
    "install_preemption_handler",
    "is_main_process",
    "lr_at",
    "train_model",
]

log = get_logger(__name__)

# LoRA targets per ``config.model_type``: attention q/k/v/o plus the MLP projections, under
# each architecture's module names. Override with ONESEEK_LORA_TARGET_MODULES.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_MODULES: dict[str, list[str]] = {
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "cohere",
            "stablelm",
            "smollm3",
            "helium",
        )
    },
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}

_KEEP_CHECKPOINTS = 2
_CKPT_PREFIX = "step-"
_FINAL_DIR = "final"
# Settings that change what training computes; the rest (log/checkpoint cadence, policy
# flags) may differ between an interrupted run and its resume.
_FINGERPRINT_EXCLUDE = {"log_every", "checkpoint_every", "allow_regression", "skip_bad_records"}


# --------------------------------------------------------------------------- preemption


class PreemptionFlag:
    """Set by SIGTERM (Kubernetes' preemption/eviction signal); polled by the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Request a checkpoint-and-stop at the next micro-step."""
        self._event.set()

    def clear(self) -> None:
        """Forget an earlier request (tests, or a caller that handled it)."""
        self._event.clear()

    @property
    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


_FLAG = PreemptionFlag()
_HANDLER_INSTALLED = False


def install_preemption_handler() -> PreemptionFlag:
    """Make SIGTERM set the process-wide preemption flag (idempotent) and return the flag.

    Only the main thread can install signal handlers; elsewhere the flag is returned
    without a handler (it can still be set by hand).
    """
    global _HANDLER_INSTALLED
    if not _HANDLER_INSTALLED and threading.current_thread() is threading.main_thread():

        def _on_sigterm(signum: int, _frame: Any) -> None:
            # Only set the flag: the handler runs between bytecodes of the main thread, which
            # may be inside a log write holding structlog's (non-reentrant) stream lock, so
            # logging here deadlocked the process. The loop logs when it sees the flag.
            _FLAG.set()

        signal.signal(signal.SIGTERM, _on_sigterm)
        _HANDLER_INSTALLED = True
    return _FLAG


# --------------------------------------------------------------------------- schedule


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


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(want_cuda: bool) -> _Dist:
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    # torchrun's contract: these variables describe the process group (env:// init).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(0, 1, 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if want_cuda else "gloo", init_method="env://")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def is_main_process() -> bool:
    """True on rank 0 of a torchrun group, and in a plain single process."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return bool(dist.get_rank() == 0)
    return int(os.environ.get("RANK", "0")) == 0


def _barrier(ctx: _Dist) -> None:
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class TrainOutcome:
    """What one model's run produced; ``job.py`` turns it into the done marker."""

    key: str
    base_val_loss: float
    final_val_loss: float
    final_train_loss: float
    improved: bool
    steps: int
    epochs: int
    samples: int
    train_tokens: int
    duration_seconds: float
    tokens_per_second: float
    adapter_dir: Path
    weights_path: Path
    resumed_from_step: int | None


@dataclass(frozen=True)
class _Plan:
    """How packed blocks map onto micro-batches and steps (pure arithmetic, no state)."""

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
        natural = max(1, math.ceil(self.total_steps * self.accum / self.micro_per_epoch))
        return min(natural, self.epoch_limit) if self.epoch_limit else natural


def _plan(n_blocks: int, seq_len: int, world: int, train: TrainSettings) -> _Plan:
    per_micro = train.micro_batch_size * world
    accum = max(1, train.batch_tokens // (seq_len * per_micro))
    micro_per_epoch = max(1, math.ceil(n_blocks / per_micro))
    total = train.max_steps or max(1, math.ceil(train.epochs * micro_per_epoch / accum))
    return _Plan(
        n_blocks=n_blocks,
        micro_batch=train.micro_batch_size,
        world=world,
        accum=accum,
        micro_per_epoch=micro_per_epoch,
        total_steps=total,
        warmup_steps=round(total * train.warmup_ratio),
        epoch_limit=None if train.max_steps else train.epochs,
    )


class _BlockOrder:
    """Global block indices of micro-batch ``m``: a seeded permutation per epoch.

    Every rank computes the same permutation and takes its own slice, so no sampler state
    needs saving; a short last micro-batch of an epoch wraps around to the epoch's start
    (as DistributedSampler pads) so all ranks always run the same number of micro-steps.
    """

    def __init__(self, plan: _Plan, seed: int, epoch_limit: int | None) -> None:
        self._plan = plan
        self._seed = seed
        # With a step count derived from epochs, the rounded-up last step re-reads the
        # start of the last epoch instead of opening one more.
        self._epoch_limit = epoch_limit
        self._cache: dict[int, list[int]] = {}

    def epoch_of(self, micro: int) -> int:
        epoch = micro // self._plan.micro_per_epoch
        return min(epoch, self._epoch_limit - 1) if self._epoch_limit else epoch

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self._plan.n_blocks, generator=generator).tolist()}
        return self._cache[epoch]

    def global_indices(self, micro: int) -> list[int]:
        plan = self._plan
        perm = self._perm(self.epoch_of(micro))
        within = micro - self.epoch_of(micro) * plan.micro_per_epoch
        width = plan.micro_batch * plan.world
        return [perm[(within * width + k) % plan.n_blocks] for k in range(width)]

    def rank_indices(self, micro: int, rank: int) -> list[int]:
        width = self._plan.micro_batch
        return self.global_indices(micro)[rank * width : (rank + 1) * width]


# --------------------------------------------------------------------------- model loading


def _target_modules(model_type: str, lora: LoraSettings) -> list[str]:
    if lora.target_modules:
        return list(lora.target_modules)
    if model_type not in TARGET_MODULES:
        raise InputError(
            f"no default LoRA target modules for architecture {model_type!r}; set "
            "ONESEEK_LORA_TARGET_MODULES (e.g. q_proj,k_proj,v_proj,o_proj)"
        )
    return list(TARGET_MODULES[model_type])


def _safetensors_numel(model_path: Path) -> int:
    """Parameter count from the safetensors headers (no tensor is read)."""
    total = 0
    for file in model_path.glob("*.safetensors"):
        with file.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta.get("shape", []))
    return total


def _load_tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_path, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, TypeError) as error:
        raise InputError(
            f"no usable tokenizer in {model_path} ({type(error).__name__}); the model "
            "directory needs tokenizer.json or tokenizer.model with tokenizer_config.json"
        ) from error
    if tokenizer.eos_token_id is None:
        log.warning("tokenizer_without_eos", tag="config", model_path=str(model_path))
    return tokenizer


def _load_model(model_path: Path, device: torch.device, *, allow_pickle: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # Pod logs are JSON lines: no tqdm bars, no library deprecation chatter.
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # CPU: per-document attention over packed blocks (see attention.py); CUDA: SDPA with the
    # block-diagonal mask transformers derives from the restarting position_ids.
    attention = register_packed_attention() if device.type == "cpu" else "sdpa"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=dtype,
            attn_implementation=attention,
            use_safetensors=not allow_pickle,
            trust_remote_code=False,
            local_files_only=True,
        )
    except (OSError, ValueError) as error:
        raise InputError(
            f"cannot load base model {model_path}: {str(error).splitlines()[0][:200]} "
            "(weights must be *.safetensors; pickled .bin checkpoints are refused)"
        ) from error
    return model.to(device)


def _preflight_memory(model_path: Path, config: Any, train: TrainSettings, device: Any) -> None:
    """On CUDA, refuse before loading when the model clearly cannot fit in free memory."""
    import torch

    if device.type != "cuda":
        return
    free, _total = torch.cuda.mem_get_info(device)
    weights = _safetensors_numel(model_path) * 2  # bf16
    hidden = int(getattr(config, "hidden_size", 4096))
    layers = int(getattr(config, "num_hidden_layers", 32))
    vocab = int(getattr(config, "vocab_size", 32000))
    tokens = train.micro_batch_size * train.seq_len
    # Rough activation bytes per token: a few hidden-size tensors per layer kept for
    # backward (many more without checkpointing) plus fp32 logits and their gradient.
    per_layer = 4 if train.gradient_checkpointing else 34
    activations = tokens * (hidden * layers * per_layer + vocab * 12)
    need = int((weights + activations) * 1.15)
    if need > free:
        raise InputError(
            f"estimated GPU memory need {need / 1e9:.1f} GB exceeds free {free / 1e9:.1f} GB "
            "for this model; lower ONESEEK_SEQ_LEN / ONESEEK_MICRO_BATCH_SIZE or set "
            "ONESEEK_GRADIENT_CHECKPOINTING=true"
        )


def _preflight_disk(checkpoint_dir: Path, trainable: int) -> None:
    # Adapter (fp32) + AdamW moments, for the checkpoints kept plus the final copy.
    need = trainable * 4 * 3 * (_KEEP_CHECKPOINTS + 1) + 16 * 1024 * 1024
    probe = checkpoint_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise InputError(
            f"checkpoints need about {need / 1e6:.0f} MB but {probe} has {free / 1e6:.0f} MB "
            "free; point CHECKPOINT_DIR at a larger volume"
        )


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(
    model_path: Path, lora: LoraSettings, train: TrainSettings, data: PackedData, world: int
) -> str:
    digest = hashlib.sha256()
    settings = {
        "model": model_path.name,
        "lora": lora.model_dump(mode="json"),
        "train": {
            k: v for k, v in train.model_dump(mode="json").items() if k not in _FINGERPRINT_EXCLUDE
        },
        "world": world,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for tensor in (data.train.input_ids, data.train.targets, data.val.input_ids):
        digest.update(tensor.numpy().tobytes())
    config = model_path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _save_checkpoint(
    checkpoint_dir: Path,
    *,
    step: int,
    micro: int,
    epoch: int,
    model: Any,
    optimizer: Any,
    rng: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        adapter = {
            k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
        }
        save_file(adapter, str(tmp / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        # state.json is written last: its presence marks the checkpoint complete.
        state = {"step": step, "micro": micro, "epoch": epoch, **meta}
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
    for old in _checkpoints(checkpoint_dir)[_KEEP_CHECKPOINTS:]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint_saved", tag="training", step=step, path=str(target))
    return target


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


@dataclass
class _Resume:
    step: int
    micro: int
    state: dict[str, Any]
    adapter: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def _load_latest(checkpoint_dir: Path, fingerprint: str) -> _Resume | None:
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
            return _Resume(
                step=int(state["step"]),
                micro=int(state["micro"]),
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


# --------------------------------------------------------------------------- train/eval


def _micro_loss(model: Any, blocks: Blocks, idx: list[int], device: Any, autocast: Any) -> Any:
    """Summed next-token cross-entropy of the blocks ``idx`` (a device scalar, no sync)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    # The LM head and the fp32 logits only where there is a target (answer tokens by
    # default): prompt positions cost no vocab-wide matmul. The selection is made on the
    # host copy, so it costs no device sync.
    host_targets = blocks.targets[idx]
    keep = host_targets != IGNORE_INDEX  # (B, T) bool: transformers returns (kept, vocab)
    ids = blocks.input_ids[idx].to(device, non_blocking=True)
    pos = blocks.position_ids[idx].to(device, non_blocking=True)
    tgt = host_targets[keep].to(device, non_blocking=True)
    with autocast():
        # No attention_mask: documents are told apart by the position_ids restarting at 0
        # (attention.py on CPU; the block-diagonal mask transformers derives, on CUDA).
        logits = model(
            input_ids=ids,
            position_ids=pos,
            use_cache=False,
            logits_to_keep=keep.to(device, non_blocking=True),
        ).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        tgt.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    ).to(torch.float32)


def _evaluate(
    model: Any, blocks: Blocks, ctx: _Dist, device: Any, autocast: Any, mbs: int
) -> float:
    """Mean token loss over the validation blocks (sharded across ranks, then summed)."""
    import torch

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        mine = list(range(ctx.rank, len(blocks), ctx.world))
        for start in range(0, len(mine), mbs):
            idx = mine[start : start + mbs]
            total[0] += _micro_loss(model, blocks, idx, device, autocast).double()
            total[1] += float((blocks.targets[idx] != IGNORE_INDEX).sum())
    if ctx.world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


class _Reporter:
    """Progress: structlog events off a TTY, a rich bar on one, and the caller's callback."""

    def __init__(self, key: str, total: int, main: bool, callback: Any) -> None:
        self._callback = callback
        self._main = main
        self._key = key
        self._bar: Any = None
        self._task: Any = None
        if main and sys.stdout.isatty():
            from rich.progress import Progress

            self._bar = Progress(*Progress.get_default_columns(), "{task.fields[info]}")
            self._task = self._bar.add_task(f"train {key}", total=total, info="")
            self._bar.start()

    def report(self, event: dict[str, Any]) -> None:
        if not self._main:
            return
        if self._bar is not None:
            info = f"loss {event.get('loss', float('nan')):.4f} lr {event.get('lr', 0):.2e}"
            self._bar.update(self._task, completed=event["step"], info=info)
        else:
            log.info("training", tag="training", model=self._key, **event)
        if self._callback is not None:
            self._callback(dict(event))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------- final artifacts


def _sort_target_modules(config_path: Path) -> None:
    # peft keeps target_modules as a set and writes it in hash order, so two identical runs
    # would publish different adapter_config.json bytes; sorted, the artifact is reproducible.
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def _write_outputs(
    model: Any,
    tokenizer: Any,
    adapter_dir: Path,
    weights_path: Path,
    checkpoint_dir: Path,
    outcome_fields: dict[str, Any],
) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}

    def write(final: Path) -> None:
        save_file(state, str(final / "adapter.safetensors"))
        (final / "outcome.json").write_text(json.dumps(outcome_fields, indent=2, sort_keys=True))

    try:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(adapter_dir, safe_serialization=True)
        _sort_target_modules(adapter_dir / "adapter_config.json")
        tokenizer.save_pretrained(adapter_dir)
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights_path.with_name(weights_path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(weights_path)
        # The final adapter stays in CHECKPOINT_DIR so a retry after a failed upload does
        # not train again; step checkpoints are no longer needed.
        _atomic_dir(checkpoint_dir / _FINAL_DIR, write)
    except _write_errors() as error:
        raise InputError(
            f"cannot write the trained adapter under {adapter_dir.parent.parent} or "
            f"{checkpoint_dir}: {_write_error_text(error)}; free space or point "
            "ONESEEK_WORK_DIR / CHECKPOINT_DIR at a larger, writable volume"
        ) from None
    for old in _checkpoints(checkpoint_dir):
        shutil.rmtree(old, ignore_errors=True)


def _load_final(checkpoint_dir: Path, fingerprint: str) -> tuple[dict[str, Any], Any] | None:
    from safetensors.torch import load_file

    final = checkpoint_dir / _FINAL_DIR
    try:
        fields = json.loads((final / "outcome.json").read_text())
        if fields.get("fingerprint") != fingerprint:
            return None
        return fields, load_file(str(final / "adapter.safetensors"))
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- the run


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
) -> TrainOutcome:
    """Train, evaluate and save one LoRA adapter, resuming from ``checkpoint_dir``.

    Args:
        key: the model's normalized key (labels logs and the outcome).
        model_path: local base model directory (config.json, safetensors, tokenizer).
        records: validated dataset records.
        lora: LoRA hyper-parameters.
        train: optimisation settings.
        adapter_dir: where the PEFT adapter + tokenizer files are written.
        weights_path: where the adapter-only ``.pth`` state dict is written.
        checkpoint_dir: this model's resumable state (one directory per model).
        on_progress: called on rank 0 every ``train.log_every`` steps with a metrics dict.
        device: ``cpu``/``cuda``/``cuda:N``; default CUDA when available.
        allow_pickle: load pickle-only (``.bin``) base weights (``--allow-pickle``).

    Raises:
        InputError: unusable model, tokenizer, dataset, architecture, disk or GPU memory.
        Preempted: SIGTERM arrived; a checkpoint was saved first.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoConfig

    flag = install_preemption_handler()
    started = time.monotonic()
    want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    ctx = _init_distributed(want_cuda)
    if device is None or (want_cuda and ctx.world > 1):
        device = f"cuda:{ctx.local_rank}" if want_cuda else "cpu"
    dev = torch.device(device)

    # 1) pre-flight: everything that can fail cheaply fails before weights are loaded
    if not (model_path / "config.json").is_file():
        raise InputError(f"base model {model_path} has no config.json")
    try:
        config = AutoConfig.from_pretrained(
            model_path, local_files_only=True, trust_remote_code=False
        )
    except Exception as error:  # transformers raises ValueError or its own validation errors
        detail = " ".join(str(error).split())[:200]
        raise InputError(
            f"{model_path / 'config.json'} is not a valid model config "
            f"({type(error).__name__}: {detail}); fix it or remove the model from BASE_MODELS"
        ) from None
    targets = _target_modules(str(config.model_type), lora)
    tokenizer = _load_tokenizer(model_path)
    data = prepare_data(
        records,
        tokenizer,
        seq_len=train.seq_len,
        val_fraction=train.val_fraction,
        seed=train.seed,
        loss_on=train.loss_on,
    )
    plan = _plan(len(data.train), train.seq_len, ctx.world, train)
    fingerprint = _fingerprint(model_path, lora, train, data, ctx.world)
    _preflight_memory(model_path, config, train, dev)

    # 2) model: base weights, then LoRA (seeded so every rank starts identical)
    torch.manual_seed(train.seed)
    random.seed(train.seed)
    model = _load_model(model_path, dev, allow_pickle=allow_pickle)
    model.config.use_cache = False
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as error:
        raise InputError(
            f"LoRA target modules {targets} do not match {config.model_type} layers; "
            f"fix ONESEEK_LORA_TARGET_MODULES ({str(error)[:120]})"
        ) from error
    params = [p for p in model.parameters() if p.requires_grad]
    _preflight_disk(checkpoint_dir, sum(p.numel() for p in params))
    use_autocast = dev.type == "cuda"

    def autocast() -> Any:
        if use_autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    finished = _load_final(checkpoint_dir, fingerprint)
    if finished is not None:
        # Trained before (the upload or a later model failed): rebuild the outputs only.
        fields, adapter = finished
        set_peft_model_state_dict(model, adapter)
        if ctx.main:
            _write_outputs(model, tokenizer, adapter_dir, weights_path, checkpoint_dir, fields)
        _barrier(ctx)
        log.info("training_already_done", tag="training", model=key, steps=fields["steps"])
        return _outcome(key, fields, adapter_dir, weights_path)

    optimizer = torch.optim.AdamW(
        params,
        lr=train.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=train.weight_decay,
        fused=dev.type == "cuda",
    )
    resume = _load_latest(checkpoint_dir, fingerprint)
    if resume is not None:
        set_peft_model_state_dict(model, resume.adapter)
        optimizer.load_state_dict(resume.optimizer)
        base_val = float(resume.state["base_val_loss"])
        log.info(
            "resuming", tag="training", model=key, step=resume.step, epoch=resume.state["epoch"]
        )
    else:
        with model.disable_adapter():
            base_val = _evaluate(model, data.val, ctx, dev, autocast, train.micro_batch_size)
        if ctx.main:
            log.info("base_validation", tag="training", model=key, val_loss=base_val)
    if train.compile and dev.type == "cuda":
        model = torch.compile(model)
    raw_model = model
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if want_cuda else None)
    if resume is not None:
        # Last, after everything that consumes random numbers while building the model.
        _set_rng_state(resume.rng)
    else:
        torch.manual_seed(train.seed + ctx.rank)

    order = _BlockOrder(plan, train.seed, plan.epoch_limit)
    counts = (data.train.targets != IGNORE_INDEX).sum(dim=1)
    meta = {
        "fingerprint": fingerprint,
        "base_val_loss": base_val,
        "key": key,
        "total_steps": plan.total_steps,
        "settings": train.model_dump(mode="json"),
    }
    reporter = _Reporter(key, plan.total_steps, ctx.main, on_progress)
    start_step = resume.step if resume is not None else 0
    tokens_per_step = plan.accum * plan.micro_batch * plan.world * train.seq_len
    loop_started = time.monotonic()

    def checkpoint(step: int, first_micro: int, rng: dict[str, Any]) -> None:
        if ctx.main:
            _save_checkpoint(
                checkpoint_dir,
                step=step,
                micro=first_micro,
                epoch=order.epoch_of(first_micro),
                model=raw_model,
                optimizer=optimizer,
                rng=rng,
                meta=meta,
            )
        _barrier(ctx)

    window_loss = torch.zeros((), device=dev)
    window_tokens = 0.0
    last_train_loss = float("nan")
    window_start, window_steps = time.monotonic(), 0

    # 3) the loop
    model.train()
    step = start_step
    try:
        while step < plan.total_steps:
            lr = lr_at(
                step,
                total_steps=plan.total_steps,
                warmup_steps=plan.warmup_steps,
                base_lr=train.learning_rate,
                schedule=train.lr_schedule,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = _rng_state()  # the state a resume from "step done" must start with
            first_micro = step * plan.accum
            if step > start_step and step % train.checkpoint_every == 0:
                checkpoint(step, first_micro, rng)
            # Step tokens over all ranks: known from the block order, so no all-reduce.
            step_tokens = sum(
                int(counts[order.global_indices(m)].sum())
                for m in range(first_micro, first_micro + plan.accum)
            )
            stop = _stop_requested(flag, ctx)
            for micro in range(first_micro, first_micro + plan.accum):
                if stop or (ctx.world == 1 and flag.is_set):
                    stop = True
                    break
                sync = micro == first_micro + plan.accum - 1 or ctx.world == 1
                with contextlib.nullcontext() if sync else model.no_sync():
                    idx = order.rank_indices(micro, ctx.rank)
                    loss_sum = _micro_loss(model, data.train, idx, dev, autocast)
                    # DDP averages gradients over ranks; scale so the sum is the step mean.
                    (loss_sum * (plan.world / max(1, step_tokens))).backward()
                window_loss += loss_sum.detach()
                window_tokens += float(counts[idx].sum())
            if stop:
                log.warning("preemption_requested", tag="training", model=key, step=step)
                optimizer.zero_grad(set_to_none=True)
                checkpoint(step, first_micro, rng)
                raise Preempted(
                    f"SIGTERM during {key} at step {step}/{plan.total_steps}; checkpoint saved "
                    f"in {checkpoint_dir}, re-run with the same RUN_ID to resume"
                )
            grad_norm = None  # the norm before clipping, for telemetry (a tensor: no sync)
            if train.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            if step % train.log_every == 0 or step == plan.total_steps:
                last_train_loss = float(window_loss) / max(1.0, window_tokens)  # host sync
                elapsed = max(1e-9, time.monotonic() - window_start)
                tps = window_steps * tokens_per_step / elapsed
                event: dict[str, Any] = {
                    "step": step,
                    "total_steps": plan.total_steps,
                    "epoch": order.epoch_of(step * plan.accum - 1) + 1,
                    "total_epochs": plan.epochs,
                    "loss": last_train_loss,
                    "lr": lr,
                    "tokens_per_second": tps,
                    "eta_seconds": (plan.total_steps - step) * elapsed / window_steps,
                }
                if grad_norm is not None:
                    event["grad_norm"] = float(grad_norm)  # this step's; read at log steps only
                if dev.type == "cuda":
                    event["gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
                reporter.report(event)
                window_loss.zero_()
                window_tokens, window_start, window_steps = 0.0, time.monotonic(), 0
    finally:
        reporter.close()

    # 4) evaluate and save
    # Throughput of the optimisation loop alone (packed block tokens, <3% of them padding);
    # loading, evaluation and saving are in duration_seconds.
    loop_seconds = time.monotonic() - loop_started
    final_val = _evaluate(raw_model, data.val, ctx, dev, autocast, train.micro_batch_size)
    duration = time.monotonic() - started
    trained_steps = plan.total_steps - start_step
    fields = {
        "fingerprint": fingerprint,
        "base_val_loss": base_val,
        "final_val_loss": final_val,
        "final_train_loss": last_train_loss,
        "steps": plan.total_steps,
        "epochs": plan.epochs,
        "samples": data.num_train_records,
        "train_tokens": data.train_tokens,
        "duration_seconds": duration,
        "tokens_per_second": trained_steps * tokens_per_step / max(loop_seconds, 1e-9),
        "resumed_from_step": start_step if resume is not None else None,
    }
    reporter.report(
        {
            "step": plan.total_steps,
            "total_steps": plan.total_steps,
            "epoch": plan.epochs,
            "total_epochs": plan.epochs,
            "loss": last_train_loss,
            "lr": 0.0,
            "tokens_per_second": fields["tokens_per_second"],
            "eta_seconds": 0.0,
            "val_loss": final_val,
        }
    )
    if ctx.main:
        _write_outputs(raw_model, tokenizer, adapter_dir, weights_path, checkpoint_dir, fields)
    _barrier(ctx)
    outcome = _outcome(key, fields, adapter_dir, weights_path)
    if not ctx.main:
        return outcome
    log.info(
        "training_done",
        tag="training",
        model=key,
        **{
            k: v
            for k, v in asdict(outcome).items()
            if k not in {"key", "adapter_dir", "weights_path"}
        },
    )
    return outcome


def _stop_requested(flag: PreemptionFlag, ctx: _Dist) -> bool:
    """Whether to stop before this step; under DDP all ranks must agree (one all-reduce)."""
    if ctx.world == 1:
        return flag.is_set
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", ctx.local_rank) if dist.get_backend() == "nccl" else None
    wanted = torch.tensor([1.0 if flag.is_set else 0.0], device=device)
    dist.all_reduce(wanted, op=dist.ReduceOp.MAX)
    return bool(wanted.item() > 0)


def _outcome(
    key: str, fields: dict[str, Any], adapter_dir: Path, weights_path: Path
) -> TrainOutcome:
    resumed = fields.get("resumed_from_step")
    return TrainOutcome(
        key=key,
        base_val_loss=float(fields["base_val_loss"]),
        final_val_loss=float(fields["final_val_loss"]),
        final_train_loss=float(fields["final_train_loss"]),
        improved=float(fields["final_val_loss"]) < float(fields["base_val_loss"]),
        steps=int(fields["steps"]),
        epochs=int(fields["epochs"]),
        samples=int(fields["samples"]),
        train_tokens=int(fields["train_tokens"]),
        duration_seconds=float(fields["duration_seconds"]),
        tokens_per_second=float(fields["tokens_per_second"]),
        adapter_dir=adapter_dir,
        weights_path=weights_path,
        resumed_from_step=int(resumed) if resumed is not None else None,
    )
