"""One model's LoRA run as a recipe: validate → setup → train → save → cleanup.

In the shape of torchtune's single-device LoRA recipe: ``__init__`` validates what is
cheap to check, :meth:`LoraRecipe.setup` builds everything in a numbered order,
:meth:`LoraRecipe.train` is a nanoGPT-shaped loop (set LR → stop/checkpoint → micro-steps
→ clip → step → log), :meth:`LoraRecipe.save` writes the adapter files, and
:meth:`LoraRecipe.cleanup` runs in ``finally``. It runs unchanged on CPU (tests, demo) and
CUDA (bf16 autocast, fused AdamW, varlen attention, optional gradient checkpointing).

Signals are not the recipe's business: the CLI installs a SIGTERM handler at process start
(:mod:`oneseek_job.signals`) and the recipe polls the :class:`StopFlag` it is given;
a stop saves a checkpoint and raises :class:`Preempted` (exit 75, a retry resumes).
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import oneseek_job.training.checkpoint as ckpt
from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.data import PackedData, Record, make_batch, prepare_data
from oneseek_job.errors import InputError, Preempted
from oneseek_job.logs import get_logger
from oneseek_job.signals import STOP, StopFlag
from oneseek_job.training.adapters import finish_adapter_dir
from oneseek_job.training.attention import DOC_SDPA, FLEX, VARLEN, register_attention
from oneseek_job.training.distributed import Dist, barrier, init_distributed, stop_requested
from oneseek_job.training.loss import batch_loss, chunk_rows, evaluate
from oneseek_job.training.memory import estimate_memory, preflight_disk, preflight_memory
from oneseek_job.training.schedule import BlockOrder, Plan, make_plan, requested_step_blocks
from oneseek_job.training.targets import target_modules

__all__ = ["LoraRecipe", "TrainJob", "TrainOutcome", "load_tokenizer", "run_recipe"]

log = get_logger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainJob:
    """What to train and where to put it (the recipe's whole input).

    Attributes:
        key: the model's normalized key (labels logs and the outcome).
        model_path: local base model directory (config.json, safetensors, tokenizer).
        records: validated dataset records.
        lora: LoRA hyper-parameters.
        train: optimisation settings.
        adapter_dir: where the PEFT adapter + tokenizer files are written.
        weights_path: where the adapter-only ``.pth`` state dict is written.
        checkpoint_dir: this model's resumable state (one directory per model).
        base_model_id: the stable id written as the adapter's ``base_model_name_or_path``
            (None: the config's hub-style ``_name_or_path``, else the directory name).
        on_progress: called on rank 0 with every progress event (see :class:`_Reporter`).
        device: ``cpu``/``cuda``/``cuda:N``; default CUDA when available.
        allow_pickle: load pickle-only (``.bin``) base weights (``--allow-pickle``).
        attention: kernel override (``oneseek_documents``, ``oneseek_flex``,
            ``oneseek_varlen``, or a transformers name such as ``sdpa``).
        stop: polled every step; set by the CLI's SIGTERM handler.
    """

    key: str
    model_path: Path
    records: list[Record]
    lora: LoraSettings
    train: TrainSettings
    adapter_dir: Path
    weights_path: Path
    checkpoint_dir: Path
    base_model_id: str | None = None
    on_progress: ProgressCallback | None = None
    device: str | None = None
    allow_pickle: bool = False
    attention: str | None = None
    stop: StopFlag = field(default=STOP)


@dataclass(frozen=True)
class TrainOutcome:
    """What one model's run produced; the job turns it into the done marker."""

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


class _Reporter:
    """Progress events: a JSON log line (the CLI renders them) and the caller's callback.

    Event keys: ``phase`` (``train``/``done``), ``step``, ``total_steps``, ``epoch``,
    ``total_epochs``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_second``,
    ``eta_seconds``, ``base_val_loss``, ``val_loss`` (at the end), ``gpu_memory_gb`` (CUDA).
    """

    def __init__(self, key: str, main: bool, callback: ProgressCallback | None) -> None:
        self._key, self._main, self._callback = key, main, callback

    def report(self, event: dict[str, Any]) -> None:
        if not self._main:
            return
        log.info("training", tag="training", model=self._key, **event)
        if self._callback is not None:
            self._callback(dict(event))


class LoraRecipe:
    """Train, evaluate and save one LoRA adapter, resuming from its checkpoint directory."""

    def __init__(self, job: TrainJob) -> None:
        """Validate what needs no weights: fail before anything heavy is loaded.

        Raises:
            InputError: no config.json, or checkpoint cadence that can never fire.
        """
        if not (job.model_path / "config.json").is_file():
            raise InputError(f"base model {job.model_path} has no config.json")
        self.job = job
        self.started = time.monotonic()
        self.finished: dict[str, Any] | None = None
        self._reporter = _Reporter(job.key, main=True, callback=job.on_progress)
        self._model: Any = None
        self._optimizer: Any = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build the run, in this order (each step may fail before the next costs time)."""
        import torch

        job, train = self.job, self.job.train
        # 0) a SIGTERM that arrived before this model started: stop now, nothing to save
        if job.stop.is_set:
            raise Preempted(
                f"SIGTERM before training {job.key} started; re-run with the same RUN_ID"
            )
        # 1) device and process group (under torchrun every rank takes its slice)
        want_cuda = (job.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith(
            "cuda"
        )
        self.ctx: Dist = init_distributed(want_cuda)
        device = job.device
        if device is None or (want_cuda and self.ctx.world > 1):
            device = f"cuda:{self.ctx.local_rank}" if want_cuda else "cpu"
        self.device = torch.device(device)
        self._reporter = _Reporter(job.key, self.ctx.main, job.on_progress)
        # 2) config and LoRA targets (per-architecture table)
        self.config = _load_config(job.model_path)
        self.targets = target_modules(str(self.config.model_type), job.lora)
        # 3) tokenizer and data: tokenized once, packed into blocks
        self.tokenizer = load_tokenizer(job.model_path)
        self.data: PackedData = prepare_data(
            job.records,
            self.tokenizer,
            seq_len=train.seq_len,
            val_fraction=train.val_fraction,
            seed=train.seed,
            loss_on=train.loss_on,
        )
        # 4) plan, identity, memory: still no weights loaded
        self.plan: Plan = make_plan(len(self.data.train), train.seq_len, self.ctx.world, train)
        self.fingerprint = ckpt.fingerprint(job.model_path, job.lora, train, self.data)
        # A checkpoint fixes the blocks per step; a group too large for them is refused here,
        # before the weights load.
        self.resume = ckpt.load_latest(job.checkpoint_dir, self.fingerprint)
        if self.resume is not None:
            self.plan = self._resumed_plan(self.resume)
        cuda = self.device.type == "cuda"
        self.memory = estimate_memory(
            job.model_path,
            self.config,
            job.lora,
            train,
            self.targets,
            dtype_bytes=2 if cuda else 4,
            loss_chunk_tokens=chunk_rows(int(self.config.vocab_size)),
        )
        preflight_memory(self.memory, self.device)
        # 5) model: base weights, then LoRA (seeded so every rank starts identical)
        torch.manual_seed(train.seed)
        random.seed(train.seed)
        attention = job.attention or (VARLEN if cuda else DOC_SDPA)
        self.peft = _build_peft_model(job, self.config, self.targets, self.device, attention)
        self.params = [p for p in self.peft.parameters() if p.requires_grad]
        preflight_disk(
            job.checkpoint_dir, sum(p.numel() for p in self.params), ckpt.KEEP_CHECKPOINTS
        )
        # 6) trained before (the upload or a later model failed)? then only rebuild outputs
        done = ckpt.load_final(job.checkpoint_dir, self.fingerprint)
        if done is not None:
            fields, adapter = done
            ckpt.load_adapter_state(
                self.peft, adapter, source=str(job.checkpoint_dir / ckpt.FINAL_DIR)
            )
            self.finished = fields
            return
        # 7) optimizer, then resume (the checkpoint wins) or measure the base model
        self._optimizer = torch.optim.AdamW(
            self.params,
            lr=train.learning_rate,
            betas=(0.9, 0.95),
            weight_decay=train.weight_decay,
            fused=cuda,
        )
        if self.resume is not None:
            ckpt.load_adapter_state(self.peft, self.resume.adapter, source=str(self.resume.path))
            self._optimizer.load_state_dict(self.resume.optimizer)
            self.base_val = float(self.resume.state["base_val_loss"])
            log.info(
                "resuming",
                tag="training",
                model=job.key,
                step=self.resume.step,
                world=self.ctx.world,
                checkpoint_world=self.resume.state.get("world"),
            )
        else:
            self._warn_raised_batch()
            with self.peft.disable_adapter():
                self.base_val = self._evaluate(self.peft, self.data.val)
            if self.ctx.main:
                log.info("base_validation", tag="training", model=job.key, val_loss=self.base_val)
        # 8) wrappers for speed and data parallel; self.peft stays the bare model
        model = torch.compile(self.peft) if train.compile else self.peft
        if self.ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.ctx.local_rank] if cuda else None
            model = DistributedDataParallel(model, device_ids=ids)
        self._model = model
        # 9) RNG last, after everything that draws random numbers while building
        if self.resume is not None:
            ckpt.set_rng_state(self.resume.rng)
        else:
            torch.manual_seed(train.seed + self.ctx.rank)

    def _resumed_plan(self, resume: ckpt.Resume) -> Plan:
        """The checkpoint's plan, spread over this group, which may have another size.

        The blocks per step are the checkpoint's (the interrupted group may have raised them
        to its own size), so the data order, the steps and the schedule continue unchanged.

        Raises:
            InputError: this group has more processes than a step has blocks.
        """
        job, train, world = self.job, self.job.train, self.ctx.world
        step_blocks = int(resume.state["step_blocks"])
        if step_blocks < world:
            raise InputError(
                f"checkpoint {resume.path} of {job.key} has {step_blocks} block(s) of "
                f"{train.seq_len} tokens per step, fewer than the {world} processes of this "
                "group (each needs at least one block): resume with at most "
                f"{step_blocks} process(es), or delete {job.checkpoint_dir} to train "
                f"{job.key} again"
            )
        return make_plan(len(self.data.train), train.seq_len, world, train, step_blocks)

    def _warn_raised_batch(self) -> None:
        requested = requested_step_blocks(self.job.train.seq_len, self.job.train)
        if self.ctx.main and self.plan.step_blocks > requested:
            log.warning(
                "batch_raised_to_world",
                tag="config",
                model=self.job.key,
                requested_blocks=requested,
                step_blocks=self.plan.step_blocks,
                hint=f"ONESEEK_BATCH_TOKENS gives {requested} blocks per step, fewer than "
                f"the {self.ctx.world} processes; each step reads one block per process",
            )

    def _autocast(self) -> Any:
        import torch

        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _evaluate(self, model: Any, blocks: Any) -> float:
        mbs = self.job.train.micro_batch_size
        return evaluate(model, blocks, self.ctx, self.device, self._autocast, mbs)

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        """The optimisation loop. Raises :class:`Preempted` after saving on a stop request."""
        import torch

        job, train, plan, ctx = self.job, self.job.train, self.plan, self.ctx
        model, optimizer, dev = self._model, self._optimizer, self.device
        order = BlockOrder(plan, train.seed)
        counts = (self.data.train.targets != -100).sum(dim=1)
        start = self.resume.step if self.resume is not None else 0
        tokens_per_step = plan.step_blocks * train.seq_len
        window_loss, window_tokens = torch.zeros((), device=dev), 0.0
        window_start, window_steps = time.monotonic(), 0
        self.loop_started, self.last_train_loss = time.monotonic(), float("nan")
        model.train()
        for step in range(start, plan.total_steps):
            lr = plan.lr(step, train)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = ckpt.rng_state()  # the state a resume from "step done" must start with
            stopping = stop_requested(job.stop.is_set, ctx)
            if stopping or (step > start and step % train.checkpoint_every == 0):
                self.save_checkpoint(step, rng, order)
            if stopping:
                log.warning("preemption_requested", tag="training", model=job.key, step=step)
                raise Preempted(
                    f"SIGTERM during {job.key} at step {step}/{plan.total_steps}; checkpoint "
                    f"saved in {job.checkpoint_dir}, re-run with the same RUN_ID to resume"
                )
            # Step tokens over all ranks: known from the block order, so no all-reduce.
            step_tokens = int(counts[order.step_indices(step)].sum())
            micros = order.rank_micro_batches(step, ctx.rank)
            for k, idx in enumerate(micros):
                # Ranks may run one micro-batch more or less than others; each reduces its
                # gradient once, with its last backward.
                sync = k == len(micros) - 1 or ctx.world == 1
                batch = make_batch(self.data.train, idx).to(dev)
                with contextlib.nullcontext() if sync else model.no_sync():
                    loss_sum = batch_loss(model, batch, self._autocast)
                    # DDP averages gradients over ranks; scale so the sum is the step mean.
                    (loss_sum * (plan.world / max(1, step_tokens))).backward()
                window_loss += loss_sum.detach()
                window_tokens += float(counts[idx].sum())
            grad_norm = None  # the norm before clipping, for telemetry (a tensor: no sync)
            if train.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window_steps += 1
            done = step + 1
            if done % train.log_every == 0 or done == plan.total_steps:
                self.last_train_loss = float(window_loss) / max(1.0, window_tokens)  # host sync
                elapsed = max(1e-9, time.monotonic() - window_start)
                event: dict[str, Any] = {
                    "phase": "train",
                    "step": done,
                    "total_steps": plan.total_steps,
                    "epoch": order.epoch_of(done * plan.step_blocks - 1) + 1,
                    "total_epochs": plan.epochs,
                    "loss": self.last_train_loss,
                    "lr": lr,
                    "tokens_per_second": window_steps * tokens_per_step / elapsed,
                    "eta_seconds": (plan.total_steps - done) * elapsed / window_steps,
                    "base_val_loss": self.base_val,
                }
                if grad_norm is not None:
                    event["grad_norm"] = float(grad_norm)  # this step's; read at log steps only
                if dev.type == "cuda":
                    event["gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
                self._reporter.report(event)
                window_loss.zero_()
                window_tokens, window_start, window_steps = 0.0, time.monotonic(), 0
        self.loop_seconds = time.monotonic() - self.loop_started

    def save_checkpoint(self, step: int, rng: Any, order: BlockOrder) -> None:
        """Rank 0 writes ``step-N``; every rank waits for it."""
        if self.ctx.main:
            position = step * self.plan.step_blocks
            ckpt.save_checkpoint(
                self.job.checkpoint_dir,
                step=step,
                position=position,
                epoch=order.epoch_of(position),
                model=self.peft,
                optimizer=self._optimizer,
                rng=rng,
                meta={
                    "fingerprint": self.fingerprint,
                    "base_val_loss": self.base_val,
                    "key": self.job.key,
                    "total_steps": self.plan.total_steps,
                    # What a resumed group needs: the step's blocks, split over any size.
                    "step_blocks": self.plan.step_blocks,
                    "world": self.ctx.world,
                    "settings": self.job.train.model_dump(mode="json"),
                },
            )
        barrier(self.ctx)

    # ------------------------------------------------------------------ save

    def save(self) -> TrainOutcome:
        """Evaluate the trained adapter, write the adapter files, return the outcome."""
        job, plan = self.job, self.plan
        if self.finished is not None:
            fields = self.finished
            log.info("training_already_done", tag="training", model=job.key, steps=fields["steps"])
        else:
            final_val = self._evaluate(self.peft, self.data.val)
            start = self.resume.step if self.resume is not None else 0
            tokens = (plan.total_steps - start) * plan.step_blocks
            fields = {
                "fingerprint": self.fingerprint,
                "base_val_loss": self.base_val,
                "final_val_loss": final_val,
                "final_train_loss": self.last_train_loss,
                "steps": plan.total_steps,
                "epochs": plan.epochs,
                "samples": self.data.num_train_records,
                "train_tokens": self.data.train_tokens,
                "duration_seconds": time.monotonic() - self.started,
                # Throughput of the optimisation loop alone (packed block tokens, <3% of
                # them padding); loading, evaluation and saving are in duration_seconds.
                "tokens_per_second": tokens * job.train.seq_len / max(self.loop_seconds, 1e-9),
                "resumed_from_step": start if self.resume is not None else None,
            }
            self._reporter.report(
                {
                    "phase": "done",
                    "step": plan.total_steps,
                    "total_steps": plan.total_steps,
                    "epoch": plan.epochs,
                    "total_epochs": plan.epochs,
                    "loss": self.last_train_loss,
                    "lr": 0.0,
                    "tokens_per_second": fields["tokens_per_second"],
                    "eta_seconds": 0.0,
                    "base_val_loss": self.base_val,
                    "val_loss": final_val,
                }
            )
        if self.ctx.main:
            base_id = job.base_model_id
            ckpt.write_outputs(
                self.peft,
                self.tokenizer,
                adapter_dir=job.adapter_dir,
                weights_path=job.weights_path,
                checkpoint_dir=job.checkpoint_dir,
                outcome_fields=fields,
                finish_adapter=lambda d: finish_adapter_dir(d, job.model_path, base_id),
            )
        barrier(self.ctx)
        outcome = _outcome(job.key, fields, job.adapter_dir, job.weights_path)
        if self.ctx.main and self.finished is None:
            shown = {
                k: v
                for k, v in asdict(outcome).items()
                if k not in {"key", "adapter_dir", "weights_path"}
            }
            log.info("training_done", tag="training", model=job.key, **shown)
        return outcome

    # ------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Release the model and optimizer (the next model of the job needs the memory)."""
        import torch

        self._model = self._optimizer = None
        self.__dict__.pop("peft", None)
        self.__dict__.pop("params", None)
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def run_recipe(job: TrainJob) -> TrainOutcome:
    """validate → setup → train → save, with cleanup in ``finally``."""
    recipe = LoraRecipe(job)
    try:
        recipe.setup()
        if recipe.finished is None:
            recipe.train()
        return recipe.save()
    finally:
        recipe.cleanup()


# --------------------------------------------------------------------------- loading


def _load_config(model_path: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model_path, local_files_only=True, trust_remote_code=False
        )
    except Exception as error:  # transformers raises ValueError or its own validation errors
        detail = " ".join(str(error).split())[:200]
        raise InputError(
            f"{model_path / 'config.json'} is not a valid model config "
            f"({type(error).__name__}: {detail}); fix it or remove the model from BASE_MODELS"
        ) from None


def load_tokenizer(model_path: Path) -> Any:
    """The model directory's tokenizer (local files only, no remote code).

    Raises:
        InputError: no loadable tokenizer there.
    """
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


def _build_peft_model(
    job: TrainJob, config: Any, targets: list[str], device: Any, attention: str
) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # Pod logs are JSON lines: no tqdm bars, no library deprecation chatter.
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    if attention in (DOC_SDPA, FLEX, VARLEN):
        register_attention(attention)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            job.model_path,
            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
            attn_implementation=attention,
            use_safetensors=not job.allow_pickle,
            trust_remote_code=False,
            local_files_only=True,
        )
    except (OSError, ValueError) as error:
        raise InputError(
            f"cannot load base model {job.model_path}: {str(error).splitlines()[0][:200]} "
            "(weights must be *.safetensors; pickled .bin checkpoints are refused)"
        ) from error
    model = model.to(device)
    model.config.use_cache = False
    if job.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=job.lora.r,
        lora_alpha=job.lora.alpha,
        lora_dropout=job.lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as error:
        raise InputError(
            f"LoRA target modules {targets} do not match {config.model_type} layers; "
            f"fix ONESEEK_LORA_TARGET_MODULES ({str(error)[:120]})"
        ) from error


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
