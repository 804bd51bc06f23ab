"""Hand-made model directories for discovery tests: real file formats, no torch needed."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

__all__ = ["write_model_dir", "write_safetensors"]


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A valid safetensors file of zero-filled F32 tensors with the given shapes."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)


def write_model_dir(
    directory: Path,
    *,
    name_or_path: str | None = None,
    model_name: str | None = None,
    config: dict[str, Any] | None = None,
    weights: str = "safetensors",
    tokenizer: bool = True,
) -> Path:
    """A model directory as a PVC holds it: config.json, weights and tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "vocab_size": 16,
    }
    if name_or_path is not None:
        body["_name_or_path"] = name_or_path
    if model_name is not None:
        body["model_name"] = model_name
    body.update(config or {})
    (directory / "config.json").write_text(json.dumps(body), encoding="utf-8")
    if weights == "safetensors":
        write_safetensors(directory / "model.safetensors", {"embed": [16, 8], "head": [16, 8]})
    elif weights == "bin":
        (directory / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickle")
    if tokenizer:
        (directory / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    return directory
