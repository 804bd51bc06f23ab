"""The artifact contract of DESIGN.md: every store key and file name of a run.

A leaf module (it imports nothing of ours), so the writer (``certify``), the reader
(``verify``) and the job agree on names without importing each other. Keys are store keys,
relative to ARTIFACTS_URI and '/'-separated.
"""

from __future__ import annotations

__all__ = [
    "CERTIFIED_DIR",
    "CURRENT_KEY",
    "DEFAULT_MODEL_KEY",
    "DNA_NAME",
    "DONE_DIR",
    "INTOTO_NAME",
    "LATEST_DIR",
    "LEDGER_NAME",
    "LIVE_DIR",
    "LIVE_METRICS_NAME",
    "MANIFEST_NAME",
    "METRICS_DIR",
    "MODEL_NAME",
    "REPORT_NAME",
    "RESULTS_NAME",
    "RUN_FILES",
    "SIGNATURE_NAME",
    "TENSORBOARD_DIR",
    "adapter_dir_name",
    "current_pointer",
    "done_marker_key",
    "is_certified_path",
    "run_id_from_pointer",
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
# Progress of the indices while training (live_metrics.json per index); scratch, like .done.
LIVE_DIR = ".live"
DEFAULT_MODEL_KEY = "unknown-model"

DNA_NAME = "oneseek_dna.json"
RESULTS_NAME = "training_results.json"
LEDGER_NAME = "ledger_proof.json"
LIVE_METRICS_NAME = "live_metrics.json"
INTOTO_NAME = "provenance.intoto.json"
# Telemetry published with each model, and the run's HTML report (all certified files).
TENSORBOARD_DIR = "tensorboard"  # tensorboard/<key>/events.out.tfevents.*
METRICS_DIR = "metrics"  # metrics/<key>.jsonl: every progress report of the model
REPORT_NAME = "report.html"  # self-contained page rendered by the certifier
# The run-level files the certifier writes, relative to the run prefix (weights JSON aside,
# whose name depends on the version).
RUN_FILES = (DNA_NAME, RESULTS_NAME, LEDGER_NAME, LIVE_METRICS_NAME, INTOTO_NAME)


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


def is_certified_path(relative: str) -> bool:
    """Whether a run-relative path belongs to the certified file set.

    Excluded: MANIFEST.json and its signature (they certify the rest) and every top-level
    dot directory (``.done/`` markers, ``.live/`` progress), which is scratch state of the
    run, not its result.
    """
    if relative in (MANIFEST_NAME, SIGNATURE_NAME):
        return False
    return not relative.split("/", 1)[0].startswith(".")


def current_pointer(run_id: str) -> bytes:
    """The content of CURRENT for ``run_id``: the run's path, one line."""
    return f"{run_prefix(run_id).rstrip('/')}\n".encode()


def run_id_from_pointer(pointer: str) -> str | None:
    """The run id CURRENT names: a bare run id or the run's path (``oneseek-certified/<run>/``)."""
    text = pointer.strip().strip("/")
    return text.rsplit("/", 1)[-1] or None
