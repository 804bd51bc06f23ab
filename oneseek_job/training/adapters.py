"""Serving-ready adapter directories: a stable base model id and vLLM's LoRA loader rules.

``save_pretrained`` records the local path the base model was loaded from (a pod path such
as ``/models/base_models/KB-Llama-3.1-8B-Swedish``) as ``base_model_name_or_path``, in
adapter_config.json and in the generated README; outside the pod that breaks
``AutoPeftModelForCausalLM``, vLLM's filesystem resolver and hub metadata. It is replaced
by a stable id: the config's hub-style ``_name_or_path`` (``org/name``) when it is one,
else the configured id, else the model's display name.

:func:`check_vllm_compatible` applies what vLLM's ``PEFTHelper`` (``_validate_features``,
``validate_legal``) and ``LoRAModel.from_local_checkpoint`` check when they load an
adapter: PEFT type LORA, no ``modules_to_save``, no DoRA, bias ``none``, rank no higher
than vLLM's largest ``--max-lora-rank`` (its allowed values are 1, 8, 16, 32, 64, 128,
256, 320, 512; an adapter of rank r needs the smallest value >= r), ``r``/``lora_alpha``/
``target_modules`` present, weights in ``adapter_model.safetensors`` holding only
``lora_A``/``lora_B`` matrices of standard projection modules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from oneseek_job.discovery import get_model_display_name
from oneseek_job.errors import InputError
from oneseek_job.training.targets import TARGET_MODULES

__all__ = [
    "VLLM_MAX_LORA_RANKS",
    "check_vllm_compatible",
    "finish_adapter_dir",
    "stable_base_model_id",
    "vllm_max_lora_rank",
]

# vLLM's MaxLoRARanks (vllm/config/lora.py): the values --max-lora-rank accepts.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_STANDARD_MODULES = frozenset(m for modules in TARGET_MODULES.values() for m in modules)
_ADAPTER_KEY = re.compile(
    r"^base_model\.model\.(?P<path>.+)\.(?P<module>[^.]+)\.lora_[AB]\.weight$"
)


def stable_base_model_id(model_path: Path, configured: str | None = None) -> str:
    """The base model's id for adapter metadata: never a local path.

    Args:
        model_path: the base model directory (its config.json is read).
        configured: an explicit id (wins when set).
    """
    if configured:
        return configured
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    name = config.get("_name_or_path") if isinstance(config, dict) else None
    if isinstance(name, str) and _HUB_ID.fullmatch(name.strip()):
        candidate = name.strip()
        if not (model_path.parent / candidate).exists() and not Path(candidate).exists():
            return candidate
    return get_model_display_name(config if isinstance(config, dict) else {}, model_path)


def vllm_max_lora_rank(r: int) -> int | None:
    """The smallest ``--max-lora-rank`` that serves rank ``r`` (None: vLLM cannot)."""
    return next((m for m in VLLM_MAX_LORA_RANKS if m >= r), None)


def check_vllm_compatible(adapter_dir: Path) -> list[str]:
    """Every reason vLLM's LoRA loader would refuse ``adapter_dir`` (empty: it loads)."""
    problems: list[str] = []
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [f"adapter_config.json unreadable ({type(error).__name__})"]
    for required in ("r", "lora_alpha", "target_modules"):
        if required not in config:
            problems.append(f"adapter_config.json lacks {required}")
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, vLLM loads LORA only")
    if config.get("modules_to_save"):
        problems.append("modules_to_save is set (vLLM supports none)")
    if config.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM")
    if config.get("bias", "none") != "none":
        problems.append("adapter bias is not supported by vLLM")
    ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
    if vllm_max_lora_rank(max(ranks)) is None or min(ranks) < 1:
        problems.append(f"rank {max(ranks)} is outside vLLM's max_lora_rank (at most 512)")
    name = config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name or name.startswith(("/", "./", "../")):
        problems.append(f"base_model_name_or_path {name!r} is a local path, not a model id")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        problems.append("no adapter_model.safetensors (vLLM wants safetensors)")
    else:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            keys = list(handle.keys())
        odd = [k for k in keys if not _ADAPTER_KEY.match(k)]
        modules = {m["module"] for k in keys if (m := _ADAPTER_KEY.match(k))}
        if odd:
            problems.append(f"non-LoRA tensors in the adapter, e.g. {odd[0]}")
        if modules - _STANDARD_MODULES:
            problems.append(f"non-standard target modules {sorted(modules - _STANDARD_MODULES)}")
    return problems


def finish_adapter_dir(adapter_dir: Path, model_path: Path, configured_id: str | None) -> None:
    """Rewrite the base model reference to a stable id, then check vLLM compatibility.

    Raises:
        InputError: the adapter would not load in vLLM (names every reason).
    """
    base_id = stable_base_model_id(model_path, configured_id)
    local = {str(model_path), str(model_path.resolve())}
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_id
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True), encoding="utf-8")
    readme = adapter_dir / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        for path in sorted(local, key=len, reverse=True):
            text = text.replace(path, base_id)
        readme.write_text(text, encoding="utf-8")
    problems = check_vllm_compatible(adapter_dir)
    if problems:
        raise InputError(
            f"the adapter for {base_id} would not load in vLLM: {'; '.join(problems)}; "
            "fix ONESEEK_LORA_* settings"
        )
