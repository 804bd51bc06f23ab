"""The artifact layout of DESIGN.md: where every file of a run lives, and the seed's JSON files.

Keys are store keys (relative to ARTIFACTS_URI), '/'-separated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CERTIFIED_DIR",
    "CURRENT_KEY",
    "LATEST_DIR",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "SIGNATURE_NAME",
    "FileDigest",
    "ModelResult",
    "adapter_dir_name",
    "done_marker_key",
    "run_prefix",
    "weights_file_name",
    "weights_metadata_name",
]

MODEL_NAME = "OneSeek-7B-Zero"
CERTIFIED_DIR = "oneseek-certified"
LATEST_DIR = "oneseek-7b-zero"
CURRENT_KEY = f"{CERTIFIED_DIR}/OneSeek-7B-Zero-CURRENT.txt"
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.json.sig"
# Per-model "this model is finished and uploaded" records of an Indexed Job; not part of the
# certified file set (MANIFEST lists them separately so verify can ignore them).
DONE_DIR = ".done"


def run_prefix(run_id: str) -> str:
    """``oneseek-certified/<run_id>/``."""
    return f"{CERTIFIED_DIR}/{run_id}/"


def adapter_dir_name(key: str) -> str:
    """``<key>-adapter``: the seed's adapter directory name."""
    return f"{key}-adapter"


def weights_file_name(version: str, key: str) -> str:
    """``oneseek-7b-zero-v<ver>-<key>.pth``."""
    return f"oneseek-7b-zero-v{version}-{key}.pth"


def weights_metadata_name(version: str) -> str:
    """``oneseek-7b-zero-v<ver>.json``."""
    return f"oneseek-7b-zero-v{version}.json"


def done_marker_key(run_id: str, key: str) -> str:
    """Store key of one model's done marker inside the run."""
    return f"{run_prefix(run_id)}{DONE_DIR}/{key}.json"


class FileDigest(BaseModel):
    """Size and SHA-256 of one file."""

    model_config = ConfigDict(frozen=True)

    size: int
    sha256: str


class ModelResult(BaseModel):
    """One finished model: the content of its done marker, input to the run's JSON files.

    Written by the training step after the model's files are uploaded; read back by
    whichever process certifies the run (all markers present), so every run-level file is
    derived from these records only and two racing certifiers write identical bytes.
    """

    model_config = ConfigDict(frozen=True)

    key: str
    position: int = 0  # index in the resolved BASE_MODELS list: keeps the admin's order
    display_name: str
    model_path: str
    architecture: str
    base_val_loss: float
    final_val_loss: float
    final_train_loss: float
    improved: bool  # final_val_loss < base_val_loss
    certified: bool  # improved, or allowed to regress with --allow-regression
    steps: int
    epochs: int
    samples: int  # training records seen per epoch
    train_tokens: int  # real (non-padding) tokens trained on
    duration_seconds: float
    started_at: str  # ISO-8601 UTC
    finished_at: str
    # Store keys relative to the run prefix (lora_adapters/<key>-adapter/..., weights/<pth>).
    files: dict[str, FileDigest]
    # Base model inputs: file name relative to the model dir -> SHA-256 (config, weights).
    base_model_digests: dict[str, str] = Field(default_factory=dict)
    dataset_sha256: str
    dataset_files: list[str] = Field(default_factory=list)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    host: str = ""
    image_digest: str | None = None
