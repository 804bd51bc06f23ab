"""Pydantic schemas of every JSON file a run holds: the one definition the writer
(``certify``, ``job``) and the reader (``verify``) share.

The run-level files keep the original trainer's field names (camelCase where it had them,
via aliases) so its readers keep working. Documents we write are ``frozen`` and
``extra="forbid"``; ``verify`` parses what it reads with the same classes, so a file that
does not fit its schema fails a check instead of being read as a loose dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "INTOTO_PREDICATE_TYPE",
    "INTOTO_STATEMENT_TYPE",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMATS",
    "CarriedFrom",
    "DnaDocument",
    "Document",
    "FileDigest",
    "LedgerEntry",
    "LedgerProof",
    "LiveMetrics",
    "Manifest",
    "ManifestFile",
    "ModelMetrics",
    "ModelResult",
    "ResolvedName",
    "RunInputs",
    "SignatureFile",
    "TrainedModel",
    "TrainingResults",
    "WeightsMetadata",
    "live_metrics",
]

MANIFEST_FORMAT = "oneseek-manifest/v2"
MANIFEST_FORMATS = ("oneseek-manifest/v1", MANIFEST_FORMAT)
INTOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
INTOTO_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"


class FileDigest(BaseModel):
    """Size and SHA-256 of one file."""

    model_config = ConfigDict(frozen=True)

    size: int
    sha256: str


class ResolvedName(BaseModel):
    """How one BASE_MODELS spelling resolved (DESIGN.md "Resolution").

    ``exact`` is False for the loose rules (separator-free, token run), which are logged as
    warnings; the record lets an auditor see that ``mistral`` was taken to mean
    ``mistral-7b-instruct``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requested: str
    key: str
    rule: str
    exact: bool


class CarriedFrom(BaseModel):
    """Where a carried-over model comes from: an earlier certified run with the same
    per-model fingerprint (``provenance.model_fingerprint``), whose files and training
    numbers this run reuses instead of training the model again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str  # the run the files were copied from
    manifest_sha256: str  # SHA-256 of that run's MANIFEST.json: pins exactly which files
    fingerprint: str  # the per-model fingerprint both runs share
    trained_in: str  # the run that trained the adapter (run_id, unless it was carried there too)
    trained_started_at: str  # when it was trained (ISO-8601 UTC)
    trained_finished_at: str


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
    attempt: str = ""  # the process that trained it (id of its staging attempt)
    # Every BASE_MODELS spelling that led to this model, with the rule that matched it.
    resolution: list[ResolvedName] = Field(default_factory=list)
    # Set when the model was carried over from an earlier run instead of trained: the
    # numbers above are that training's; started_at / finished_at are this run's (the
    # carry), so the run's start time (CURRENT's ordering key) stays its own.
    carried_from: CarriedFrom | None = None


class Document(BaseModel):
    """Base of the JSON files: field order is the file's order; camelCase names via aliases."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_bytes(self) -> bytes:
        """Indented UTF-8 JSON (human-readable; hashes cover the bytes as stored)."""
        document = self.model_dump(mode="json", by_alias=True)
        return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


class ModelMetrics(Document):
    """Held-out validation of one adapter against its base: the run's only quality numbers."""

    base_val_loss: float
    final_val_loss: float
    final_train_loss: float
    val_loss_delta: float  # final - base: negative means the adapter beats its base
    improved: bool
    certified: bool


class TrainedModel(ModelMetrics):
    """One entry of training_results.json ``trained_models``."""

    display_name: str
    architecture: str
    adapter: str
    weights: str
    steps: int
    epochs: int
    samples: int
    train_tokens: int
    duration_seconds: float
    started_at: str
    finished_at: str
    resolution: list[ResolvedName] = Field(default_factory=list)
    # None: trained in this run; else the earlier run it was carried over from.
    carried_from: CarriedFrom | None = None


class WeightsMetadata(Document):
    """``weights/oneseek-7b-zero-v<ver>.json`` with the seed's field names."""

    version: str
    created_at: str = Field(alias="createdAt")
    training_type: str = Field(alias="trainingType")
    multi_model_mode: bool = Field(alias="multiModelMode")
    base_models: list[str] = Field(alias="baseModels")  # display names
    adapters: list[str]
    samples_processed: int = Field(alias="samplesProcessed")
    is_current: bool = Field(alias="isCurrent")
    metrics: dict[str, Any]
    config: dict[str, Any]
    model_specific_weights: dict[str, str] = Field(alias="modelSpecificWeights")
    status: str
    not_certified: list[str] = Field(alias="notCertified")
    run_id: str = Field(alias="runId")
    dna: str


class DnaDocument(Document):
    """``oneseek_dna.json``: the DNA plus the full digests it abbreviates."""

    dna: str
    model_name: str
    version: str
    timestamp: str
    final_weights: dict[str, float]
    base_models: list[str] = Field(alias="baseModels")  # keys
    categories: list[str]
    immutable_hash: str
    language: str
    datasets: int
    dataset_files: list[str]
    dataset_sha256: str
    weights_sha256: str
    weights: dict[str, FileDigest]  # key -> its .pth digest
    status: str
    not_certified: list[str]
    run_id: str


class TrainingResults(Document):
    """``training_results.json``; ``trained_models`` is keyed by model key (the seed's reader)."""

    dna: str
    version: str
    base_models: list[str] = Field(alias="baseModels")
    dataset: str
    dataset_files: list[str]
    dataset_sha256: str
    samples: int
    epochs: int
    final_loss: float  # mean final training loss over the models
    metrics: dict[str, Any]
    trained_models: dict[str, TrainedModel]
    status: str
    not_certified: list[str]
    timestamp: str
    duration_seconds: float
    run_id: str


class LedgerEntry(BaseModel):
    """One event of the append-only ledger; ``prev_hash`` chains it to the one before."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    event: str
    timestamp: str
    data: dict[str, Any]
    prev_hash: str


class LedgerProof(Document):
    """``ledger_proof.json``: the seed's summary fields plus the hash-chained ``entries``."""

    event: str
    model: str
    dna: str
    version: str
    base_models: list[str] = Field(alias="baseModels")
    dataset_hashes: dict[str, str]
    final_weights: dict[str, float]
    immutable_hash: str
    timestamp: str
    status: str
    not_certified: list[str]
    run_id: str
    head_hash: str
    entries: list[LedgerEntry]
    signer_public_key: str | None
    signature: str | None


class LiveMetrics(Document):
    """``live_metrics.json``: training progress, rewritten while training."""

    type: str
    epoch: int | None
    total_epochs: int | None
    step: int | None
    total_steps: int | None
    val_losses: dict[str, float | None]
    weights: dict[str, float]
    total_loss: float | None
    progress_percent: float
    timestamp: str


def live_metrics(
    *,
    epoch: int | None,
    total_epochs: int | None,
    step: int | None,
    total_steps: int | None,
    val_losses: Mapping[str, float | None],
    weights: Mapping[str, float],
    total_loss: float | None,
    timestamp: str,
    kind: str = "live_metrics",
) -> bytes:
    """The bytes of ``live_metrics.json`` for one progress report.

    Args:
        epoch, total_epochs, step, total_steps: progress (None while unknown).
        val_losses: model key → latest validation loss (None before the first evaluation).
        weights: model key → ensemble weight (``final_weights_for`` of the run).
        total_loss: latest training loss.
        timestamp: ISO-8601 UTC; passed in so the bytes are a function of the arguments.
        kind: the ``type`` field; the certified run's final state uses ``final``.
    """
    percent = 0.0
    if step is not None and total_steps is not None:
        # A run of zero steps is complete, not 0 % done.
        done = step >= total_steps
        percent = 100.0 if done else round(max(100.0 * step / total_steps, 0.0), 1)
    return LiveMetrics(
        type=kind,
        epoch=epoch,
        total_epochs=total_epochs,
        step=step,
        total_steps=total_steps,
        val_losses=dict(val_losses),
        weights=dict(weights),
        total_loss=total_loss,
        progress_percent=percent,
        timestamp=timestamp,
    ).to_bytes()


class ManifestFile(BaseModel):
    """One certified file: path relative to the run prefix, size, SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int
    sha256: str


class RunInputs(BaseModel):
    """What a RUN_ID is bound to: the run-wide part of its input fingerprint.

    Claimed by the first process of a run (staging ``identity.json``) and recorded in
    MANIFEST.json; a process of the same RUN_ID with other inputs is refused (exit 2). The
    per-model part (each base model's file digests) lives in the done markers and in
    MANIFEST ``model_inputs``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str]  # resolved keys, in BASE_MODELS order
    dataset_sha256: str
    hyperparameters: dict[str, Any]
    version: str
    language: str


class Manifest(BaseModel):
    """MANIFEST.json: the committed file set of a run (the commit point).

    v2 adds what the run is bound to (``inputs``, ``model_inputs``), when it started (the
    CURRENT ordering key) and the signature algorithm; v1 manifests (ed25519 era) still parse.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    run_id: str
    signed: bool
    signer_fingerprint: str | None
    file_count: int
    total_size: int
    files: list[ManifestFile]
    signature_algorithm: str | None = None
    started_at: str | None = None
    inputs: RunInputs | None = None
    model_inputs: dict[str, dict[str, str]] | None = None
    # Models carried over from earlier runs (key → source); absent before carry-over existed.
    carried_over: dict[str, CarriedFrom] | None = None


class SignatureFile(BaseModel):
    """The content of MANIFEST.json.sig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: str
    signed_file: str
    public_key_fingerprint: str
    public_key: str
    signature: str
