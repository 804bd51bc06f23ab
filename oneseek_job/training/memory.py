"""Pre-flight resource checks: accelerator memory (derived from the architecture) and disk.

The activation estimate counts what autograd keeps per token and decoder layer for a
LoRA-adapted pre-norm decoder (Llama, Mistral, Qwen, Gemma shapes) as this recipe runs
it: the two RMSNorms (input and normalised output, the input in fp32), the attention
inputs after RoPE (q at full width, k/v at GQA width: the kernels never repeat K/V) and
its output twice (kernel output, o_proj input), the MLP's gate, up, activation, product
(SwiGLU: five intermediate-size tensors; three without a gate), and, for every adapted
module with LoRA dropout > 0, a dropped-out copy of its input plus the boolean mask.
Gradient checkpointing keeps only each layer's input and recomputes one layer at a time.
The loss adds the logits of the target tokens and their gradient, plus the fp32 working
set of one loss chunk (see ``loss.chunked_cross_entropy``).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.errors import InputError

__all__ = ["MemoryEstimate", "estimate_memory", "preflight_disk", "preflight_memory"]

_FP32 = 4
_ADAM_BYTES = 4 * 4  # fp32 adapter weight + gradient + two AdamW moments
_MARGIN = 1.10  # allocator fragmentation, CUDA context, small buffers


def _safetensors_shapes(model_path: Path) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers (no tensor is read)."""
    shapes: dict[str, list[int]] = {}
    for file in model_path.glob("*.safetensors"):
        with file.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                shapes[name] = list(meta.get("shape", []))
    return shapes


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training micro-step, by part."""

    weights: int
    adapter: int
    activations: int
    loss: int

    @property
    def total(self) -> int:
        """All parts plus a margin for fragmentation and small buffers."""
        return int((self.weights + self.adapter + self.activations + self.loss) * _MARGIN)


def estimate_memory(
    model_path: Path,
    config: Any,
    lora: LoraSettings,
    train: TrainSettings,
    targets: list[str],
    *,
    dtype_bytes: int,
    loss_chunk_tokens: int,
) -> MemoryEstimate:
    """Peak memory of a micro-step of ``train.micro_batch_size`` × ``train.seq_len`` tokens.

    Args:
        model_path: the base model (shapes come from its safetensors headers).
        config: its transformers config (hidden, intermediate, heads, vocab sizes).
        lora: rank and dropout.
        train: micro-batch, sequence length, gradient checkpointing.
        targets: the LoRA target module names.
        dtype_bytes: bytes per weight/activation element (2 for bf16, 4 for fp32).
        loss_chunk_tokens: target tokens whose logits exist at once (chunked loss).
    """
    shapes = _safetensors_shapes(model_path)
    weights = sum(math.prod(s) for s in shapes.values()) * dtype_bytes
    adapted = [s for n, s in shapes.items() if len(s) == 2 and n.rsplit(".", 2)[-2] in set(targets)]
    adapter = sum(lora.r * (rows + cols) for rows, cols in adapted) * _ADAM_BYTES

    a = dtype_bytes
    h = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    q = heads * head_dim
    inter = int(getattr(config, "intermediate_size", 4 * h))
    vocab = int(config.vocab_size)
    gated = any("gate" in name for name in shapes)
    # Per token and layer, in bytes.
    norms = 2 * (h * _FP32 + h * a)
    attention = (q + 2 * kv) * a + 2 * q * a  # q, k, v after RoPE; output; o_proj input
    mlp = (5 if gated else 3) * inter * a
    per_module_in = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q}
    per_module_in |= {"gate_proj": h, "up_proj": h, "down_proj": inter}
    dropout_in = sum(per_module_in.get(t, h) for t in targets) if lora.dropout > 0 else 0
    lora_mid = len(targets) * lora.r * a
    per_layer = norms + attention + mlp + dropout_in * (a + 1) + lora_mid
    tokens = train.micro_batch_size * train.seq_len
    if train.gradient_checkpointing:
        activations = tokens * (layers * h * a + per_layer)
    else:
        activations = tokens * layers * per_layer
    # Backward of the last layer briefly holds gradients beside the saved tensors.
    activations += tokens * 2 * max(inter, q) * a
    # fp32 log-softmax output, its gradient and the loss gradient (12 bytes per logit), plus
    # the model-dtype logits when they are not fp32 already; chunked (loss.py), only one
    # chunk has the fp32 part and the whole batch keeps model-dtype logits and gradient.
    if tokens <= loss_chunk_tokens:
        loss = tokens * vocab * (3 * _FP32 + (0 if a == _FP32 else a))
    else:
        loss = tokens * vocab * 2 * a + loss_chunk_tokens * vocab * 3 * _FP32
    loss += tokens * h * 2 * a  # the final norm
    return MemoryEstimate(weights=weights, adapter=adapter, activations=activations, loss=loss)


def preflight_memory(estimate: MemoryEstimate, device: Any) -> None:
    """On CUDA, refuse before loading when the run clearly cannot fit in free memory."""
    import torch

    if device.type != "cuda":
        return
    free, _total = torch.cuda.mem_get_info(device)
    if estimate.total > free:
        raise InputError(
            f"estimated GPU memory need {estimate.total / 2**30:.1f} GiB (weights "
            f"{estimate.weights / 2**30:.1f}, activations {estimate.activations / 2**30:.1f}) "
            f"exceeds free {free / 2**30:.1f} GiB for this model; lower ONESEEK_SEQ_LEN / "
            "ONESEEK_MICRO_BATCH_SIZE or set ONESEEK_GRADIENT_CHECKPOINTING=true"
        )


def preflight_disk(checkpoint_dir: Path, trainable: int, keep: int) -> None:
    """Refuse when the checkpoint volume cannot hold ``keep`` checkpoints plus the final one."""
    # Adapter (fp32) + AdamW moments, for the checkpoints kept plus the final copy.
    need = trainable * 4 * 3 * (keep + 1) + 16 * 1024 * 1024
    probe = checkpoint_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise InputError(
            f"checkpoints need about {need / 1e6:.0f} MB but {probe} has {free / 1e6:.0f} MB "
            "free; point CHECKPOINT_DIR at a larger volume"
        )
