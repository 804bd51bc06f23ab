"""Our LoRA training engine against HF ``Trainer`` + PEFT, side by side on one machine.

Three runs on the same base weights, the same records, the same LoRA config (r16, alpha
32, dropout 0.05, q/k/v/o + gate/up/down), the same number of optimizer steps, about the
same real tokens per step and the same learning-rate schedule (``training.lr_at``,
given to the Trainer as its scheduler; AdamW betas (0.9, 0.95), no weight decay, grad
clip 1.0 on both sides; no checkpoints on either side):

- ``ours``: ``oneseek_job.training.train_model`` (packed ``seq_len`` blocks, documents
  kept apart by position ids that restart at every document);
- ``hf_default``: ``Trainer`` with ``DataCollatorForSeq2Seq`` padding every batch to its
  longest record (what a practitioner gets by default);
- ``hf_grouped``: the same with ``train_sampling_strategy="group_by_length"``.

Each run is a fresh subprocess, back to back (peak RSS is then per run). Reported per
run: real (non-padding) tokens/s over the steady-state window (the first
``--skip-steps`` optimizer steps excluded, same for all), the full-loop rate, wall time
end to end, peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) and
the validation loss of the trained adapter on the same held-out records, computed by
one function for all three (every record on its own, loss on answer tokens).

Tokens are counted where they enter the model: the token-embedding forward in training
mode, non-padding ids only. So the count is exact for every method, and padding the
baseline computes on does not count as throughput.

CPU (default): a ~34M-parameter Llama (hidden 512, 10 layers, 8 heads, intermediate
1408) with random weights and the demo's Swedish BPE tokenizer, seq_len 512.

GPU (``--gpu``): a Llama-3.1-8B-shaped model (hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, vocab 128256) with random bf16 weights built on the device,
saved once so both sides load the same weights, seq_len 2048. MFU uses
``FLOPs/token = 4·N + 6·N_lora + 6·L·T·d`` (see :func:`flops_per_token`).

Run:
  python -m bench.train_throughput                 # CPU, ~5 min on 2 cores
  python -m bench.train_throughput --gpu           # one CUDA device
  python -m bench.train_throughput --quick         # seconds; what the smoke test runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import Goal, format_table, load_average, write_results

__all__ = [
    "METHODS",
    "MODEL_SHAPES",
    "MODE_DEFAULTS",
    "Spec",
    "build_spec",
    "flops_per_token",
    "main",
    "run",
    "run_method",
]

METHODS = ("ours", "hf_default", "hf_grouped", "hf_flatten")
BASELINES = ("hf_default", "hf_grouped", "hf_flatten")
LABELS = {
    "ours": "ours (packed, boundaries kept)",
    "hf_default": "HF Trainer + PEFT, padding collator",
    "hf_grouped": "HF Trainer + PEFT, group_by_length",
    "hf_flatten": "HF Trainer + PEFT, DataCollatorWithFlattening",
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE_INDEX = -100

MODEL_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    # ~34M parameters with the demo tokenizer's 1.5k vocabulary.
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 10,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    # ~88M parameters.
    "medium": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
    },
    # Llama-3.1-8B's shape.
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000,
    },
}

# Dense bf16 peak per GPU, by a substring of the device name (for MFU).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
GPU_GOAL_TOKENS_PER_SECOND = 12_500.0
GPU_GOAL_PEAK_GIB = 60.0
GPU_GOAL_RATIO = 1.3
CPU_GOAL_RATIO_DEFAULT = 2.0
CPU_GOAL_RATIO_GROUPED = 1.5
CPU_GOAL_RATIO_FLATTEN = 1.5
# "Equal or better" validation loss, allowing for run-to-run noise of a few steps.
VAL_LOSS_TOLERANCE = 0.01


@dataclass(frozen=True)
class Spec:
    """Everything both sides share; written to JSON for the worker processes.

    The defaults are the CPU benchmark's; :data:`MODE_DEFAULTS` holds the other modes'.
    """

    workdir: str
    mode: str = "cpu"  # "cpu" or "gpu"
    model_size: str = "small"
    seq_len: int = 512
    steps: int = 10
    batch_tokens: int = 2048  # ours: tokens per optimizer step (a multiple of seq_len)
    micro_batch: int = 1  # ours: blocks per micro-step (the engine's default)
    hf_batch: int = 8  # baseline: records per micro-batch
    hf_accum: int = 0  # baseline: micro-batches per step, set from the data to match ours
    # A random-init base moves slowly at 2e-4; 1e-3 makes the val loss tell runs apart.
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    seed: int = 42
    records: int = 0  # set from steps × tokens per step
    mean_tokens: float = 130.0  # record length (prompt + answer + EOS), lognormal
    sigma: float = 0.8
    val_records: int = 48
    eval_batch: int = 8
    skip_steps: int = 1  # left out of the steady-state window
    compile: bool = False
    peak_flops: float | None = None

    @property
    def model_dir(self) -> Path:
        """The shared base model (config, safetensors, tokenizer)."""
        return Path(self.workdir) / "model"

    @property
    def dataset(self) -> Path:
        """The shared JSONL dataset."""
        return Path(self.workdir) / "records.jsonl"

    @property
    def val_fraction(self) -> float:
        """The split fraction that yields ``val_records`` held-out records."""
        return min(0.45, max(0.01, self.val_records / self.records))


MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpu": {
        # hf_batch 4 (× ~32 accumulation): 16 padded records of up to 2048 tokens would
        # not fit the baseline's activations next to 16 GB of weights on an 80 GB card.
        "mode": "gpu", "model_size": "8b", "seq_len": 2048, "steps": 20,
        "batch_tokens": 16384, "hf_batch": 4, "learning_rate": 2e-4, "warmup_ratio": 0.03,
        "val_records": 128, "eval_batch": 2, "skip_steps": 3,
    },
    "quick": {
        "model_size": "tiny", "seq_len": 128, "steps": 2, "batch_tokens": 256, "hf_batch": 4,
        "warmup_ratio": 0.0, "mean_tokens": 40.0, "sigma": 0.6, "val_records": 8,
        "skip_steps": 0,
    },
}  # fmt: skip


def build_spec(args: argparse.Namespace, workdir: Path) -> Spec:
    """Defaults per mode, then the command line's overrides."""
    mode = "gpu" if args.gpu else "quick" if args.quick else None
    spec = Spec(workdir=str(workdir), **MODE_DEFAULTS.get(mode or "", {}))
    overrides: dict[str, Any] = {}
    for name in ("steps", "seq_len", "batch_tokens", "micro_batch", "hf_batch", "skip_steps"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.model_size is not None:
        overrides["model_size"] = args.model_size
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    if args.compile:
        overrides["compile"] = True
    if args.peak_tflops is not None:
        overrides["peak_flops"] = args.peak_tflops * 1e12
    spec = replace(spec, **overrides)
    if spec.batch_tokens % (spec.seq_len * spec.micro_batch):
        raise SystemExit(
            f"--batch-tokens {spec.batch_tokens} must be a multiple of seq_len × micro batch "
            f"({spec.seq_len * spec.micro_batch})"
        )
    if spec.skip_steps >= spec.steps:
        spec = replace(spec, skip_steps=0)
    # Enough records that no side needs a second epoch (and ~10% to spare), plus val.
    train_needed = math.ceil(spec.steps * spec.batch_tokens * 1.15 / spec.mean_tokens)
    return replace(spec, records=train_needed + spec.val_records)


# --------------------------------------------------------------------------- data


_WORD = re.compile(r"\S+")


def _tokenizer_and_stream() -> tuple[Any, list[str], list[int]]:
    """The demo's Swedish tokenizer and a word stream of its answers (sentence starts)."""
    from oneseek_job import demo

    with tempfile.TemporaryDirectory() as tmp:
        path = demo.build_tiny_model(
            Path(tmp) / "tok",
            architecture="llama",
            display_name="bench-tokenizer",
            hidden_size=16,
            num_layers=1,
        )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    answers: list[str] = []
    for record in demo.load_demo_records(seed=0):
        if record["output"] not in answers and not record["output"].startswith("- "):
            answers.append(record["output"])
    words: list[str] = []
    starts: list[int] = []
    for answer in answers:
        for sentence in re.split(r"(?<=[.!?])\s+", answer):
            starts.append(len(words))
            words.extend(_WORD.findall(sentence))
    return tokenizer, words, starts


def _write_records(spec: Spec, tokenizer: Any, words: list[str], starts: list[int]) -> None:
    """Seeded instruction records whose token lengths follow a lognormal distribution.

    Questions come from the demo dataset; each answer is a run of the demo answers'
    sentences, as long as the drawn length asks, so lengths vary like real instruction
    data (most short, a long tail up to the sequence length).
    """
    from oneseek_job import demo
    from oneseek_job.data import format_prompt

    rng = random.Random(spec.seed)
    questions = sorted({r["instruction"] for r in demo.load_demo_records(seed=0)})
    word_tokens = [len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words]
    prompt_mean = sum(len(tokenizer(format_prompt(q))["input_ids"]) for q in questions[:50]) / min(
        50, len(questions)
    )
    answer_mean = max(4.0, spec.mean_tokens - prompt_mean - 1)
    mu = math.log(answer_mean) - spec.sigma**2 / 2
    lines: list[str] = []
    for _ in range(spec.records):
        question = rng.choice(questions)
        prompt_len = len(tokenizer(format_prompt(question))["input_ids"])
        budget = spec.seq_len - prompt_len - 1  # the EOS closes every document
        target = min(budget, max(2, round(rng.lognormvariate(mu, spec.sigma))))
        position = rng.choice(starts)
        taken: list[str] = []
        count = 0
        while count < target:
            index = position % len(words)
            if count + word_tokens[index] > budget:
                break
            taken.append(words[index])
            count += word_tokens[index]
            position += 1
        answer = " ".join(taken)
        # Joined text can merge differently from the word estimate: trim to the budget.
        while (
            taken and len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) > budget
        ):
            taken.pop()
            answer = " ".join(taken)
        lines.append(
            json.dumps({"instruction": question, "input": "", "output": answer}, ensure_ascii=False)
        )
    spec.dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _model_config(spec: Spec, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    shape = dict(MODEL_SHAPES[spec.model_size])
    shape.setdefault("vocab_size", len(tokenizer))
    return LlamaConfig(
        **shape,
        max_position_embeddings=max(spec.seq_len, 2048),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def prepare(spec: Spec) -> dict[str, Any]:
    """Write the shared base model and dataset under ``spec.workdir``; describe them."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer, words, starts = _tokenizer_and_stream()
    _write_records(spec, tokenizer, words, starts)
    config = _model_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    if spec.mode == "gpu":
        # Random bf16 weights materialised directly on the device: no fp32 copy, no download.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    else:
        model = LlamaForCausalLM(config)
    spec.model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(spec.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(spec.model_dir)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if spec.mode == "gpu":
        torch.cuda.empty_cache()
    return {"parameters": parameters, "config": config.to_dict()}


def _encode(records: list[Any], tokenizer: Any, seq_len: int) -> list[dict[str, list[int]]]:
    """Prompt + answer + EOS per record, loss on the answer (what ``data.py`` trains on)."""
    prompts = tokenizer([r.prompt for r in records], add_special_tokens=True)["input_ids"]
    answers = tokenizer([r.answer for r in records], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    features = []
    for p_ids, a_ids in zip(prompts, answers, strict=True):
        tail = [*a_ids, eos]
        ids = [*p_ids, *tail][:seq_len]
        labels = ([IGNORE_INDEX] * len(p_ids) + tail)[:seq_len]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


def _length_stats(features: list[dict[str, list[int]]]) -> dict[str, float]:
    lengths = sorted(len(f["input_ids"]) for f in features)

    def pct(q: float) -> float:
        return float(lengths[min(len(lengths) - 1, int(q * len(lengths)))])

    return {
        "records": len(lengths),
        "mean": sum(lengths) / len(lengths),
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": float(lengths[-1]),
    }


# --------------------------------------------------------------------------- measurement


class TokenMeter:
    """Counts real tokens where they enter the model, and timestamps the window.

    Wraps ``torch.nn.Embedding.forward`` (class-wide, so models built later are covered):
    each call in training mode is one micro-batch; the non-padding ids are summed on the
    device (no host sync). At call number ``start_call`` the clock of the steady-state
    window starts (one device sync, once).
    """

    def __init__(self, pad_id: int, start_call: int, cuda: bool) -> None:
        self.pad_id = pad_id
        self.start_call = start_call
        self.cuda = cuda
        self.calls = 0
        self.first_time: float | None = None
        self.window_time: float | None = None
        self.padded_tokens = 0
        self._real: Any = 0
        self._real_before_window: Any = 0
        self._original: Any = None
        self.window_cpu: float | None = None
        self.steps: list[tuple[float, int]] = []  # (end time, real tokens so far) per step

    def __enter__(self) -> TokenMeter:
        import torch

        original = torch.nn.Embedding.forward
        meter = self

        def forward(module: Any, input: Any) -> Any:
            if module.training and input.dim() == 2:
                meter._see(input)
            return original(module, input)

        self._original = original
        torch.nn.Embedding.forward = forward  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.nn.Embedding.forward = self._original  # type: ignore[method-assign]

    def _see(self, ids: Any) -> None:
        now = time.perf_counter()
        if self.first_time is None:
            self.first_time = now
        if self.calls == self.start_call:
            if self.cuda:
                import torch

                torch.cuda.synchronize()
                now = time.perf_counter()
            self.window_time = now
            self.window_cpu = _cpu_seconds()
            self._real_before_window = self._real
        self.calls += 1
        self.padded_tokens += int(ids.numel())
        self._real = self._real + (ids != self.pad_id).sum()

    def mark_step(self, now: float) -> None:
        """Record the end of an optimizer step (reads the token count: a host sync)."""
        self.steps.append((now, int(self._real)))

    def median_step_rate(self, skip: int) -> float | None:
        """Median over the window's steps of real tokens/s per step: robust to load spikes."""
        if self.first_time is None or len(self.steps) <= skip:
            return None
        points = [(self.first_time, 0), *self.steps]
        rates = [
            (points[i][1] - points[i - 1][1]) / max(1e-9, points[i][0] - points[i - 1][0])
            for i in range(skip + 1, len(points))
        ]
        return statistics.median(rates) if rates else None

    @property
    def real_tokens(self) -> int:
        """Non-padding tokens seen in training mode (a host sync)."""
        return int(self._real)

    @property
    def window_tokens(self) -> int:
        """Non-padding tokens from the window's start on."""
        return int(self._real) - int(self._real_before_window)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    times = os.times()
    return times.user + times.system


def _now(cuda: bool) -> float:
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def evaluate(
    model: Any, features: list[dict[str, list[int]]], *, pad_id: int, batch: int, device: Any
) -> float:
    """Mean next-token loss over the answer tokens of every held-out record.

    Every record is its own sequence (right-padded, attention-masked), so the number does
    not depend on how a method packs or pads during training.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    cast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast(device_type="cpu", enabled=False)
    )
    with torch.no_grad(), cast:
        for start in range(0, len(order), batch):
            chunk = [features[i] for i in order[start : start + batch]]
            width = max(len(f["input_ids"]) for f in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            for row, f in enumerate(chunk):
                n = len(f["input_ids"])
                ids[row, :n] = torch.tensor(f["input_ids"])
                mask[row, :n] = 1
                labels[row, :n] = torch.tensor(f["labels"])
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            targets = labels[:, 1:]
            total += F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).double()
            count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return float(total) / max(1, count)


def _peak_memory(cuda: bool) -> tuple[int, str]:
    if cuda:
        import torch

        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    # ru_maxrss is KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak_rss"


def flops_per_token(config: dict[str, Any], *, seq_len: int, lora_r: int) -> dict[str, Any]:
    """Training FLOPs per token for LoRA on a frozen base (the issue's 4N + attention).

    ``4·N``: forward ``2·N`` plus backward through the activations ``2·N``; the frozen
    base weights get no weight gradient, so the usual third ``2·N`` is not spent.
    ``N`` counts every matmul weight (attention, MLP, LM head; not the embedding lookup).
    ``6·N_lora``: the adapters do get weight gradients. ``6·L·T·d``: causal attention over
    a full ``T``-token context (QKᵀ and AV, ``2·L·T·d`` forward, twice that backward),
    the same for every method whatever it packs or pads.
    """
    d = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    inter = int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    vocab = int(config["vocab_size"])
    kv_dim = d // heads * kv
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * inter
    matmul = layers * per_layer + d * vocab
    lora_shapes = [(d, d), (d, kv_dim), (d, kv_dim), (d, d), (d, inter), (d, inter), (inter, d)]
    lora = layers * sum(lora_r * (i + o) for i, o in lora_shapes)
    attention = 6 * layers * seq_len * d
    return {
        "matmul_params": matmul,
        "lora_params": lora,
        "attention_flops": attention,
        "flops_per_token": 4 * matmul + 6 * lora + attention,
        "formula": "4*N + 6*N_lora + 6*L*T*d",
    }


# --------------------------------------------------------------------------- the runs


def _lora_settings(spec: Spec) -> Any:
    from oneseek_job.config import LoraSettings

    return LoraSettings(
        r=spec.lora_r, alpha=spec.lora_alpha, dropout=spec.lora_dropout, target_modules=LORA_TARGETS
    )


def _run_ours(
    spec: Spec, device: Any, meter: TokenMeter, tokenizer: Any, val: list[dict[str, list[int]]]
) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from oneseek_job.config import TrainSettings
    from oneseek_job.data import load_records
    from oneseek_job.training import train_model

    cuda = device.type == "cuda"
    train = TrainSettings(
        learning_rate=spec.learning_rate,
        max_steps=spec.steps,
        seq_len=spec.seq_len,
        batch_tokens=spec.batch_tokens,
        micro_batch_size=spec.micro_batch,
        warmup_ratio=spec.warmup_ratio,
        lr_schedule=spec.schedule,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        # Every step on CPU (the loss read is free there); on CUDA only at the end, as a
        # per-step read would add a host sync the engine otherwise avoids.
        checkpoint_every=spec.steps + 1,
        log_every=spec.steps if cuda else 1,
        loss_on="answer",
        allow_regression=True,
        compile=spec.compile,
    )
    end: dict[str, float] = {}

    def on_progress(event: dict[str, Any]) -> None:
        if "val_loss" in event or "time" in end:
            return
        now = _now(cuda)
        meter.mark_step(now)
        if event.get("step") == spec.steps:
            end["time"] = now
            end["cpu"] = _cpu_seconds()
            end["peak"] = float(_peak_memory(cuda)[0])

    out = Path(spec.workdir) / "ours"
    shutil.rmtree(out, ignore_errors=True)
    records = load_records(spec.dataset)
    outcome = train_model(
        key="bench",
        model_path=spec.model_dir,
        records=records,
        lora=_lora_settings(spec),
        train=train,
        adapter_dir=out / "adapter",
        weights_path=out / "adapter.pth",
        checkpoint_dir=out / "checkpoints",
        on_progress=on_progress,
        device=str(device),
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    base = AutoModelForCausalLM.from_pretrained(
        spec.model_dir, dtype=dtype, attn_implementation="sdpa"
    ).to(device)
    model = PeftModel.from_pretrained(base, out / "adapter")
    val_loss = evaluate(
        model, val, pad_id=tokenizer.pad_token_id, batch=spec.eval_batch, device=device
    )
    return {
        "loop_end": end.get("time"),
        "loop_end_cpu": end.get("cpu"),
        "peak_at_loop_end": end.get("peak"),
        "val_loss": val_loss,
        "engine_val_loss": outcome.final_val_loss,
        "engine_base_val_loss": outcome.base_val_loss,
        "engine_tokens_per_second": outcome.tokens_per_second,
        "steps": outcome.steps,
        "micro_batches_per_step": spec.batch_tokens // (spec.seq_len * spec.micro_batch),
    }


def _run_hf(
    spec: Spec,
    device: Any,
    meter: TokenMeter,
    tokenizer: Any,
    method: str,
    train_features: list[dict[str, list[int]]],
    val: list[dict[str, list[int]]],
) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from oneseek_job.training import lr_at

    cuda = device.type == "cuda"
    torch.manual_seed(spec.seed)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        spec.model_dir, dtype=dtype, attn_implementation="sdpa"
    ).to(device)
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=LORA_TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=0.0, fused=cuda
    )
    warmup = round(spec.steps * spec.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_at(
            step, total_steps=spec.steps, warmup_steps=warmup, base_lr=1.0, schedule=spec.schedule
        ),
    )
    end: dict[str, float] = {}

    class LoopEnd(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            last = state.global_step == spec.steps
            if cuda and not last:
                return  # no per-step host sync on the GPU, as for ours
            now = _now(cuda)
            meter.mark_step(now)
            if last:
                end["time"] = now
                end["cpu"] = _cpu_seconds()
                end["peak"] = float(_peak_memory(cuda)[0])

    args = TrainingArguments(
        output_dir=str(Path(spec.workdir) / method),
        max_steps=spec.steps,
        per_device_train_batch_size=spec.hf_batch,
        gradient_accumulation_steps=spec.hf_accum,
        learning_rate=spec.learning_rate,
        max_grad_norm=1.0,
        logging_steps=spec.steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        train_sampling_strategy="group_by_length" if method == "hf_grouped" else "random",
        use_cpu=not cuda,
        bf16=cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        torch_compile=spec.compile,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_features,
        # Flattening: the micro-batch's records in one row, position ids restarting at each
        # record (transformers then keeps attention within records), no padding at all.
        data_collator=DataCollatorWithFlattening(return_position_ids=True)
        if method == "hf_flatten"
        else DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
        optimizers=(optimizer, scheduler),
        callbacks=[LoopEnd()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    val_loss = evaluate(
        model, val, pad_id=tokenizer.pad_token_id, batch=spec.eval_batch, device=device
    )
    return {
        "loop_end": end.get("time"),
        "loop_end_cpu": end.get("cpu"),
        "peak_at_loop_end": end.get("peak"),
        "val_loss": val_loss,
        "steps": int(trainer.state.global_step),
        "micro_batches_per_step": spec.hf_accum,
    }


def run_method(spec: Spec, method: str) -> dict[str, Any]:
    """Train with one method and measure it (runs inside a worker process).

    Raises:
        ValueError: unknown method.
    """
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from oneseek_job.data import load_records, split_records
    from oneseek_job.logs import configure_logging

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    configure_logging(json=True, level="WARNING", stream=sys.stderr)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cuda = spec.mode == "gpu"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    records = load_records(spec.dataset)
    train_records, val_records = split_records(
        records, val_fraction=spec.val_fraction, seed=spec.seed
    )
    val = _encode(val_records, tokenizer, spec.seq_len)
    train_features = _encode(train_records, tokenizer, spec.seq_len)
    per_step = (
        spec.batch_tokens // (spec.seq_len * spec.micro_batch)
        if method == "ours"
        else spec.hf_accum
    )
    load_before = load_average()
    started = time.perf_counter()
    with TokenMeter(int(tokenizer.pad_token_id), spec.skip_steps * per_step, cuda) as meter:
        if method == "ours":
            detail = _run_ours(spec, device, meter, tokenizer, val)
        else:
            detail = _run_hf(spec, device, meter, tokenizer, method, train_features, val)
    wall = time.perf_counter() - started
    loop_end = detail.pop("loop_end")
    if loop_end is None or meter.first_time is None:
        raise RuntimeError(f"{method}: the training loop did not report its last step")
    window_start = meter.window_time if meter.window_time is not None else meter.first_time
    window_tokens = meter.window_tokens if meter.window_time is not None else meter.real_tokens
    peak, peak_kind = _peak_memory(cuda)
    loop_peak = detail.pop("peak_at_loop_end")
    end_cpu = detail.pop("loop_end_cpu")
    cpu_window = (
        end_cpu - meter.window_cpu if end_cpu is not None and meter.window_cpu is not None else None
    )
    result = {
        "method": method,
        "label": LABELS[method],
        "real_tokens": meter.real_tokens,
        "fed_tokens": meter.padded_tokens,
        "padding_fraction": 1.0 - meter.real_tokens / max(1, meter.padded_tokens),
        "real_tokens_per_step": meter.real_tokens / max(1, spec.steps),
        "loop_seconds": loop_end - meter.first_time,
        "tokens_per_second_full_loop": meter.real_tokens / max(1e-9, loop_end - meter.first_time),
        "window_steps": spec.steps - spec.skip_steps,
        "window_seconds": loop_end - window_start,
        "tokens_per_second": window_tokens / max(1e-9, loop_end - window_start),
        "median_step_tokens_per_second": meter.median_step_rate(spec.skip_steps),
        "cpu_seconds_window": cpu_window,
        "real_tokens_per_cpu_second": window_tokens / cpu_window if cpu_window else None,
        "wall_seconds": wall,
        "peak_memory_bytes": int(loop_peak) if cuda and loop_peak else peak,
        "peak_memory_kind": peak_kind,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        **detail,
    }
    return result


def _worker_command(spec_path: Path, method: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.train_throughput",
        "--worker",
        method,
        "--spec",
        str(spec_path),
        "--out",
        str(out),
    ]


def _run_isolated(spec: Spec, method: str) -> dict[str, Any]:
    spec_path = Path(spec.workdir) / "spec.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    out = Path(spec.workdir) / f"result-{method}.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [repo, env.get("PYTHONPATH", "")] if p)
    done = subprocess.run(
        _worker_command(spec_path, method, out),
        env=env,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join(done.stdout.splitlines()[-25:])
        raise RuntimeError(f"{method} worker failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _set_hf_accum(spec: Spec) -> tuple[Spec, dict[str, Any]]:
    """Baseline accumulation: as many records per step as make ours' tokens per step."""
    from transformers import AutoTokenizer

    from oneseek_job.data import load_records, split_records

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    records = load_records(spec.dataset)
    train, val = split_records(records, val_fraction=spec.val_fraction, seed=spec.seed)
    features = _encode(train, tokenizer, spec.seq_len)
    stats = _length_stats(features)
    records_per_step = spec.batch_tokens / stats["mean"]
    accum = max(1, round(records_per_step / spec.hf_batch))
    return replace(spec, hf_accum=accum), {"train": stats, "val_records": len(val)}


def _gpu_peak(spec: Spec) -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name(0)
    if spec.peak_flops:
        return name, spec.peak_flops
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return name, value
    return name, None


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s, plus every run's rate and the spread."""
    rates = sorted(r["tokens_per_second"] for r in results)
    median = statistics.median(rates)
    chosen = min(results, key=lambda r: abs(r["tokens_per_second"] - median))
    return {
        **chosen,
        "tokens_per_second": median,
        "tokens_per_second_runs": [r["tokens_per_second"] for r in results],
        "tokens_per_second_min": rates[0],
        "tokens_per_second_max": rates[-1],
        "spread": (rates[-1] - rates[0]) / median if median else 0.0,
        "val_loss_runs": [r["val_loss"] for r in results],
    }


def run(
    spec: Spec,
    methods: tuple[str, ...] = METHODS,
    *,
    isolate: bool = True,
    echo: bool = True,
    repeats: int = 1,
) -> dict[str, Any]:
    """Prepare the shared model and data, run every method ``repeats`` times, compare.

    Args:
        spec: the shared settings (see :func:`build_spec`).
        methods: which runs, in order.
        isolate: one fresh subprocess per run (peak RSS per run); False runs in-process.
        echo: print progress lines to stderr.
        repeats: runs per method, interleaved; the median is reported with the spread.
    """

    def say(text: str) -> None:
        if echo:
            print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    say(f"train_throughput: preparing a {spec.model_size} Llama and {spec.records} records")
    model_info = prepare(spec)
    spec, data_info = _set_hf_accum(spec)
    say(
        f"train_throughput: {model_info['parameters'] / 1e6:.1f}M parameters; train records "
        f"mean {data_info['train']['mean']:.0f} tokens (p90 {data_info['train']['p90']:.0f}, "
        f"max {data_info['train']['max']:.0f}); baseline {spec.hf_batch}×{spec.hf_accum} "
        f"records/step, ours {spec.batch_tokens} tokens/step"
    )
    # Every method `repeats` times, interleaved (A B C D A B C D ...), so a burst of load on
    # a shared machine hits all methods alike; the median run of each method is reported.
    trials: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for repeat in range(repeats):
        for method in methods:
            say(f"train_throughput: running {method} ({spec.steps} steps, {repeat + 1}/{repeats})")
            r = _run_isolated(spec, method) if isolate else run_method(spec, method)
            trials[method].append(r)
            say(
                f"  {r['tokens_per_second']:.0f} real tokens/s, val loss {r['val_loss']:.4f}, "
                f"padding {100 * r['padding_fraction']:.0f}%"
            )
    runs = {method: _median_run(results) for method, results in trials.items()}
    flops = flops_per_token(model_info["config"], seq_len=spec.seq_len, lora_r=spec.lora_r)
    gpu_name, peak_flops = _gpu_peak(spec) if spec.mode == "gpu" else (None, None)
    for r in runs.values():
        r["mfu"] = (
            r["tokens_per_second"] * flops["flops_per_token"] / peak_flops if peak_flops else None
        )
    comparisons = _compare(runs)
    result: dict[str, Any] = {
        "mode": spec.mode,
        "spec": asdict(spec),
        "model": {
            "parameters": model_info["parameters"],
            "shape": MODEL_SHAPES[spec.model_size],
            "vocab_size": model_info["config"]["vocab_size"],
        },
        "data": data_info,
        "flops": flops,
        "gpu": gpu_name,
        "peak_flops": peak_flops,
        "runs": runs,
        "comparisons": comparisons,
        "isolated_processes": isolate,
        "repeats": repeats,
        "total_seconds": time.perf_counter() - started,
        "goals": _goals(spec, runs),
    }
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _compare(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours = runs.get("ours")
    out: dict[str, Any] = {}
    if ours is None:
        return out
    for name in BASELINES:
        base = runs.get(name)
        if base is None:
            continue
        out[f"ours_vs_{name}"] = {
            "tokens_per_second_ratio": ours["tokens_per_second"] / base["tokens_per_second"],
            # The ratio's range over the runs: slowest ours ÷ fastest baseline and back.
            "ratio_min": ours.get("tokens_per_second_min", ours["tokens_per_second"])
            / base.get("tokens_per_second_max", base["tokens_per_second"]),
            "ratio_max": ours.get("tokens_per_second_max", ours["tokens_per_second"])
            / base.get("tokens_per_second_min", base["tokens_per_second"]),
            "full_loop_ratio": ours["tokens_per_second_full_loop"]
            / base["tokens_per_second_full_loop"],
            "median_step_ratio": _ratio(
                ours.get("median_step_tokens_per_second"), base.get("median_step_tokens_per_second")
            ),
            "per_cpu_second_ratio": _ratio(
                ours.get("real_tokens_per_cpu_second"), base.get("real_tokens_per_cpu_second")
            ),
            "wall_ratio": base["wall_seconds"] / ours["wall_seconds"],
            "peak_memory_ratio": ours["peak_memory_bytes"] / base["peak_memory_bytes"],
            "val_loss_delta": ours["val_loss"] - base["val_loss"],
        }
    return out


def _goals(spec: Spec, runs: dict[str, dict[str, Any]]) -> list[Goal]:
    ours = runs.get("ours")
    if ours is None:
        return []
    goals: list[Goal] = []
    targets = (
        {"hf_flatten": GPU_GOAL_RATIO}
        if spec.mode == "gpu"
        else {
            "hf_default": CPU_GOAL_RATIO_DEFAULT,
            "hf_grouped": CPU_GOAL_RATIO_GROUPED,
            "hf_flatten": CPU_GOAL_RATIO_FLATTEN,
        }
    )
    for name, target in targets.items():
        base = runs.get(name)
        if base is None:
            continue
        goals.append(
            Goal(
                "train_throughput",
                f"real tokens/s ours÷{name} ({spec.mode})",
                ours["tokens_per_second"] / base["tokens_per_second"],
                target,
                higher_is_better=True,
                unit="x",
            )
        )
        goals.append(
            Goal(
                "train_throughput",
                f"val loss ours vs {name} (≤ +1%)",
                ours["val_loss"],
                base["val_loss"] * (1 + VAL_LOSS_TOLERANCE),
                higher_is_better=False,
            )
        )
    if spec.mode == "gpu":
        goals.append(
            Goal(
                "train_throughput",
                "ours real tokens/s per GPU",
                ours["tokens_per_second"],
                GPU_GOAL_TOKENS_PER_SECOND,
                higher_is_better=True,
                unit="tok/s",
            )
        )
        goals.append(
            Goal(
                "train_throughput",
                "ours peak GPU memory (GiB)",
                ours["peak_memory_bytes"] / 2**30,
                GPU_GOAL_PEAK_GIB,
                higher_is_better=False,
                unit="GiB",
            )
        )
    return goals


def print_result(result: dict[str, Any]) -> None:
    """The side-by-side table of :func:`run`'s result."""
    spec = result["spec"]
    runs = result["runs"]
    ours = runs.get("ours")
    gib = 2**30
    rows: list[list[object]] = []
    for r in runs.values():
        ratio = ours["tokens_per_second"] / r["tokens_per_second"] if ours else float("nan")
        cpu_ratio = (
            _ratio(ours.get("real_tokens_per_cpu_second"), r.get("real_tokens_per_cpu_second"))
            if ours
            else None
        )
        row: list[object] = [
            r["label"],
            r["tokens_per_second"],
            ratio,
            cpu_ratio if cpu_ratio is not None else float("nan"),
            r["loop_seconds"],
            r["wall_seconds"],
            r["peak_memory_bytes"] / gib,
            r["val_loss"],
            100 * r["padding_fraction"],
            100 * r.get("spread", 0.0),
        ]
        if result["mode"] == "gpu":
            row.append(100 * r["mfu"] if r.get("mfu") is not None else float("nan"))
        rows.append(row)
    headers = [
        "run",
        "real tok/s",
        "ours÷this",
        "(per CPU-s)",
        "loop s",
        "wall s",
        "peak GiB" + (" (cuda)" if result["mode"] == "gpu" else " (RSS)"),
        "val loss",
        "pad %",
        f"spread % ({result.get('repeats', 1)} runs)",
    ]
    if result["mode"] == "gpu":
        headers.append("MFU %")
    m = result["model"]
    print(
        f"train throughput, {result['mode'].upper()}: Llama {m['parameters'] / 1e6:.1f}M params, "
        f"seq_len {spec['seq_len']}, {spec['steps']} optimizer steps, LoRA r{spec['lora_r']} "
        f"attn+MLP; ours {spec['batch_tokens']} tokens/step, baseline "
        f"{spec['hf_batch']}×{spec['hf_accum']} records/step"
    )
    print(format_table(headers, rows))
    d = result["data"]["train"]
    print(
        f"records: mean {d['mean']:.0f} tokens, p50 {d['p50']:.0f}, p90 {d['p90']:.0f}, "
        f"max {d['max']:.0f}; tokens/s over steps {spec['skip_steps'] + 1}..{spec['steps']}"
    )
    if result["mode"] == "gpu":
        print(
            f"MFU: FLOPs/token = {result['flops']['formula']} = "
            f"{result['flops']['flops_per_token'] / 1e9:.2f} GFLOP; peak "
            f"{(result['peak_flops'] or float('nan')) / 1e12:.0f} TFLOP/s ({result['gpu']})"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_throughput",
        description="Our LoRA engine vs HF Trainer + PEFT, side by side.",
    )
    parser.add_argument("--gpu", action="store_true", help="8B-shaped model on one CUDA device")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in-process (smoke)")
    parser.add_argument("--model-size", choices=sorted(MODEL_SHAPES), default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seq-len", dest="seq_len", type=int, default=None)
    parser.add_argument(
        "--batch-tokens",
        dest="batch_tokens",
        type=int,
        default=None,
        help="ours: tokens per optimizer step",
    )
    parser.add_argument(
        "--micro-batch",
        dest="micro_batch",
        type=int,
        default=None,
        help="ours: blocks per micro-step",
    )
    parser.add_argument(
        "--hf-batch",
        dest="hf_batch",
        type=int,
        default=None,
        help="baseline: records per micro-batch",
    )
    parser.add_argument(
        "--skip-steps",
        dest="skip_steps",
        type=int,
        default=None,
        help="steps left out of the steady-state window",
    )
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="GPU dense bf16 peak for MFU when the name is not known",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per method, interleaved (default 3)"
    )
    parser.add_argument("--in-process", action="store_true", help="no subprocess per run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model/data here")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def _require_cuda() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        raise SystemExit("--gpu needs torch with CUDA; torch is not installed") from None
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only build)"
        raise SystemExit(
            f"--gpu needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build: {built}). Run it on a GPU node with the "
            "CUDA build of torch, or drop --gpu for the CPU benchmark."
        )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command line: run, print, write ``bench/results/train_throughput[_gpu].json``."""
    args = _parser().parse_args(argv)
    if args.worker:
        spec = Spec(**json.loads(args.spec.read_text()))
        result = run_method(spec, args.worker)
        args.out.write_text(json.dumps(result))
        return None
    if args.gpu:
        _require_cuda()
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; use {', '.join(METHODS)}")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="oneseek-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        spec = build_spec(args, workdir)
        repeats = args.repeats or (1 if args.quick or args.gpu else 3)
        result = run(spec, methods, isolate=not (args.in_process or args.quick), repeats=repeats)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_result(result)
    name = "train_throughput_gpu" if args.gpu else "train_throughput"
    if args.quick:
        name += "_quick"
    path = write_results(name, result, results_dir=args.results_dir)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
