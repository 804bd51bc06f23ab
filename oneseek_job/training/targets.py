"""Per-architecture LoRA target modules: the only place base models differ (data, not code)."""

from __future__ import annotations

from oneseek_job.config import LoraSettings
from oneseek_job.errors import InputError

__all__ = ["TARGET_MODULES", "target_modules"]

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


def target_modules(model_type: str, lora: LoraSettings) -> list[str]:
    """The LoRA target modules: the override when set, else the architecture's defaults.

    Raises:
        InputError: no override and no default for ``model_type``.
    """
    if lora.target_modules:
        return list(lora.target_modules)
    if model_type not in TARGET_MODULES:
        raise InputError(
            f"no default LoRA target modules for architecture {model_type!r}; set "
            "ONESEEK_LORA_TARGET_MODULES (e.g. q_proj,k_proj,v_proj,o_proj)"
        )
    return list(TARGET_MODULES[model_type])
