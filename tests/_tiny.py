"""Tiny random-weight causal LMs for the training tests: the demo's own builder."""

from __future__ import annotations

from pathlib import Path

from oneseek_job import demo


def build_model(target: Path, *, architecture: str = "llama", seed: int = 0) -> Path:
    """A tiny ``architecture`` checkpoint (config, safetensors, tokenizer) at ``target``."""
    return demo.build_tiny_model(
        target, architecture=architecture, display_name=target.name, seed=seed
    )
