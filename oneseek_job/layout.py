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
    "OMS_SIGNATURE_NAME",
    "REPORT_NAME",
    "RESULTS_NAME",
    "RUN_FILES",
    "SIGNATURE_NAME",
    "STAGING_DIR",
    "TENSORBOARD_DIR",
    "adapter_dir_name",
    "blob_key",
    "current_pointer",
    "done_marker_key",
    "identity_key",
    "is_certified_path",
    "is_model_file",
    "live_key",
    "manifest_run_id",
    "run_id_from_pointer",
    "run_prefix",
    "staged_signature_key",
    "staging_prefix",
    "weights_file_name",
    "weights_metadata_name",
]

MODEL_NAME = "OneSeek-7B-Zero"
CERTIFIED_DIR = "oneseek-certified"
LATEST_DIR = "oneseek-7b-zero"
CURRENT_KEY = f"{CERTIFIED_DIR}/OneSeek-7B-Zero-CURRENT.txt"
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.json.sig"
# Runs certified before staging kept their scratch state in dot directories of the run
# (``.done/`` markers, ``.live/`` progress); verify still ignores them there.
DONE_DIR = ".done"
LIVE_DIR = ".live"
# Scratch state of runs not yet finished, outside every run prefix so nothing ever writes
# under a committed run: content-addressed blobs (``blobs/<sha256>``), done markers, the
# input fingerprint, progress, and MANIFEST signatures by MANIFEST digest. Deleted once a
# committed run is materialized, promoted and CURRENT is set.
STAGING_DIR = f"{CERTIFIED_DIR}/.staging"
# OpenSSF model signing (OMS) signature of a directory, inside the directory it signs.
OMS_SIGNATURE_NAME = "model.sig"
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


def staging_prefix(run_id: str) -> str:
    """``oneseek-certified/.staging/<run_id>/``: the run's scratch state until it is finished."""
    return f"{STAGING_DIR}/{run_id}/"


def blob_key(run_id: str, sha256: str) -> str:
    """Where a file of the run waits, named by its content, until the run is materialized."""
    return f"{staging_prefix(run_id)}blobs/{sha256}"


def done_marker_key(run_id: str, key: str) -> str:
    """Store key of one model's done marker (in the run's staging)."""
    return f"{staging_prefix(run_id)}done/{key}.json"


def identity_key(run_id: str) -> str:
    """Store key of the run's input fingerprint, claimed by the first process of the run."""
    return f"{staging_prefix(run_id)}identity.json"


def live_key(run_id: str, name: str) -> str:
    """Store key of one process's live_metrics.json while the run trains."""
    return f"{staging_prefix(run_id)}live/{name}.json"


def staged_signature_key(run_id: str, manifest_sha256: str) -> str:
    """Where the signature of one MANIFEST.json candidate waits (named by its digest)."""
    return f"{staging_prefix(run_id)}signatures/{manifest_sha256}.sig"


def is_certified_path(relative: str) -> bool:
    """Whether a run-relative path belongs to the certified file set.

    Excluded: MANIFEST.json and its signature (they certify the rest) and every top-level
    dot directory (``.done/`` markers, ``.live/`` progress), which is scratch state of the
    run, not its result.
    """
    if relative in (MANIFEST_NAME, SIGNATURE_NAME):
        return False
    return not relative.split("/", 1)[0].startswith(".")


def is_model_file(relative: str, version: str, key: str) -> bool:
    """Whether a run-relative path is one of the files a model's done marker lists: its
    adapter directory (less the certifier's OMS signature), its ``.pth`` weights, and its
    telemetry (progress history, TensorBoard events)."""
    adapter = f"lora_adapters/{adapter_dir_name(key)}/"
    if relative.startswith(adapter):
        return relative != adapter + OMS_SIGNATURE_NAME
    own = (f"weights/{weights_file_name(version, key)}", f"{METRICS_DIR}/{key}.jsonl")
    return relative in own or relative.startswith(f"{TENSORBOARD_DIR}/{key}/")


def manifest_run_id(key: str) -> str | None:
    """The run whose MANIFEST.json ``key`` is (``oneseek-certified/<run>/MANIFEST.json``),
    else None (staging and other dot directories are no runs)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != CERTIFIED_DIR or parts[2] != MANIFEST_NAME:
        return None
    return None if not parts[1] or parts[1].startswith(".") else parts[1]


def current_pointer(run_id: str) -> bytes:
    """The content of CURRENT for ``run_id``: the run's path, one line."""
    return f"{run_prefix(run_id).rstrip('/')}\n".encode()


def run_id_from_pointer(pointer: str) -> str | None:
    """The run id CURRENT names: a bare run id or the run's path (``oneseek-certified/<run>/``)."""
    text = pointer.strip().strip("/")
    return text.rsplit("/", 1)[-1] or None
