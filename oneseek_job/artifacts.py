"""The artifact layout of DESIGN.md: where every file of a run lives, and the seed's JSON files.

Keys are store keys (relative to ARTIFACTS_URI), '/'-separated.

The run-level JSON files (:func:`build_run_files`) keep the original trainer's field names
(camelCase where it had them, via pydantic aliases) so its readers keep working. They are a
pure function of the done markers and :class:`RunInfo` — no clock, no host lookups — because
two indices of an Indexed Job may certify at once and must write identical bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from oneseek_job.errors import InputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "CERTIFIED_DIR",
    "CURRENT_KEY",
    "DEFAULT_MODEL_KEY",
    "DONE_DIR",
    "LATEST_DIR",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "RUN_FILES",
    "SIGNATURE_NAME",
    "DnaDocument",
    "FileDigest",
    "LedgerEntry",
    "LedgerProof",
    "LiveMetrics",
    "ModelMetrics",
    "ModelResult",
    "RunInfo",
    "TrainedModel",
    "TrainingResults",
    "WeightsMetadata",
    "adapter_dir_name",
    "build_run_files",
    "done_marker_key",
    "final_weights_for",
    "live_metrics",
    "run_prefix",
    "run_status",
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


# ----------------------------------------------------------------------------- run-level files

DEFAULT_MODEL_KEY = "unknown-model"
# The run-level files build_run_files writes, relative to the run prefix (weights JSON aside,
# whose name depends on the version).
RUN_FILES = (
    "oneseek_dna.json",
    "training_results.json",
    "ledger_proof.json",
    "live_metrics.json",
    "provenance.intoto.json",
)


@dataclass(frozen=True)
class RunInfo:
    """Run-wide settings the certifier adds to the markers; equal for every racing certifier."""

    run_id: str
    version: str
    language: str
    dataset_name_tokens: list[str]
    dataset_sha256: str
    total_epochs: int
    allow_regression: bool
    image_digest: str | None
    hyperparameters: dict[str, Any]


class _Doc(BaseModel):
    """Base of the JSON files: field order is the file's order; camelCase names via aliases."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_bytes(self) -> bytes:
        """Indented UTF-8 JSON (human-readable; hashes cover the bytes as stored)."""
        document = self.model_dump(mode="json", by_alias=True)
        return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


class ModelMetrics(_Doc):
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


class WeightsMetadata(_Doc):
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


class DnaDocument(_Doc):
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


class TrainingResults(_Doc):
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


class LedgerProof(_Doc):
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


class LiveMetrics(_Doc):
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


def _names(values: list[str]) -> list[str]:
    """Normalized keys of comma-split names, in order, without blanks or repeats."""
    from oneseek_job.discovery import normalize_model_name

    keys = [normalize_model_name(v) for v in values]
    return list(dict.fromkeys(k for k in keys if k))


def final_weights_for(
    trained: list[str], env_base_models: list[str], cli_base_models: list[str]
) -> dict[str, float]:
    """The seed's final-weights priority: trained models → BASE_MODELS → --base-models →
    DEFAULT_MODEL_KEY, each weighted 1/n.

    Args:
        trained: keys of the models the run actually trained.
        env_base_models: the BASE_MODELS names (normalized to keys here).
        cli_base_models: the --base-models names (normalized to keys here).
    """
    for names in (list(dict.fromkeys(k for k in trained if k)), _names(env_base_models)):
        if names:
            return {k: 1.0 / len(names) for k in names}
    cli = _names(cli_base_models)
    names = cli or [DEFAULT_MODEL_KEY]
    return {k: 1.0 / len(names) for k in names}


def run_status(results: list[ModelResult]) -> tuple[str, list[str]]:
    """(``certified`` | ``partially-certified`` | ``not-certified``, keys not certified)."""
    rejected = sorted(r.key for r in results if not r.certified)
    if not rejected:
        return "certified", []
    if len(rejected) == len(results):
        return "not-certified", rejected
    return "partially-certified", rejected


def _metrics(r: ModelResult) -> ModelMetrics:
    return ModelMetrics(
        base_val_loss=r.base_val_loss,
        final_val_loss=r.final_val_loss,
        final_train_loss=r.final_train_loss,
        val_loss_delta=r.final_val_loss - r.base_val_loss,
        improved=r.improved,
        certified=r.certified,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _instant(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        raise InputError(f"done marker timestamp {text!r} is not ISO-8601") from error


def build_run_files(
    results: list[ModelResult], info: RunInfo, *, signing_key: Ed25519PrivateKey | None
) -> dict[str, bytes]:
    """Every run-level JSON file of a run, as bytes, keyed by path relative to the run prefix.

    A pure function of the markers and ``info``: timestamps come from the markers
    (certified = latest ``finished_at``), models are ordered by key, and ed25519 is
    deterministic, so racing certifiers write identical bytes.

    Args:
        results: one done marker per model of the run (any order).
        info: run-wide settings.
        signing_key: signs the ledger (the MANIFEST is signed separately); None: unsigned.

    Raises:
        InputError: no results, duplicate keys, or a model without its .pth in ``files``.
    """
    from oneseek_job import provenance

    if not results:
        raise InputError(f"run {info.run_id} has no finished models to certify")
    models = sorted(results, key=lambda r: r.key)
    keys = [r.key for r in models]
    if len(set(keys)) != len(keys):
        raise InputError(f"run {info.run_id} has duplicate done markers for {keys}")
    pth_names = {r.key: weights_file_name(info.version, r.key) for r in models}
    pth: dict[str, FileDigest] = {}
    for r in models:
        digest = r.files.get(f"weights/{pth_names[r.key]}")
        if digest is None:
            raise InputError(
                f"model {r.key}: done marker lists no weights/{pth_names[r.key]}; retrain it"
            )
        pth[r.key] = digest
    status, rejected = run_status(models)
    final_weights = final_weights_for(keys, [], [])
    started = min((r.started_at for r in models), key=_instant)
    certified_at = max((r.finished_at for r in models), key=_instant)
    duration = max((_instant(certified_at) - _instant(started)).total_seconds(), 0.0)
    dataset_files = sorted({f for r in models for f in r.dataset_files})
    weights_sha = provenance.weights_digest({k: d.sha256 for k, d in pth.items()})
    dna = provenance.dna_string(
        info.version, info.language, len(dataset_files) or 1, info.dataset_sha256, weights_sha
    )
    immutable = provenance.immutable_hash(
        dna=dna,
        version=info.version,
        base_models=keys,
        final_weights=final_weights,
        dataset_sha256=info.dataset_sha256,
        weights_sha256=weights_sha,
    )
    per_model = {r.key: _metrics(r) for r in models}
    metrics: dict[str, Any] = {
        "mean_final_val_loss": _mean([r.final_val_loss for r in models]),
        "mean_base_val_loss": _mean([r.base_val_loss for r in models]),
        "models": {k: m.model_dump(mode="json") for k, m in per_model.items()},
    }
    files: dict[str, bytes] = {}

    weights_name = f"weights/{weights_metadata_name(info.version)}"
    files[weights_name] = WeightsMetadata(
        version=f"{MODEL_NAME}.v{info.version}",
        created_at=certified_at,
        training_type="dna-v2" if len(models) > 1 else "single-model",
        multi_model_mode=len(models) > 1,
        base_models=[r.display_name for r in models],
        adapters=[f"lora_adapters/{adapter_dir_name(k)}" for k in keys],
        samples_processed=sum(r.samples * r.epochs for r in models),
        is_current=True,  # written to be promoted; the run dir copy is a snapshot
        metrics=metrics,
        config={
            "language": info.language,
            "allow_regression": info.allow_regression,
            "hyperparameters": info.hyperparameters,
        },
        model_specific_weights=pth_names,
        status=status,
        not_certified=rejected,
        run_id=info.run_id,
        dna=dna,
    ).to_bytes()

    files["oneseek_dna.json"] = DnaDocument(
        dna=dna,
        model_name=MODEL_NAME,
        version=info.version,
        timestamp=certified_at,
        final_weights=final_weights,
        base_models=keys,
        categories=list(info.dataset_name_tokens),
        immutable_hash=immutable,
        language=info.language,
        datasets=len(dataset_files) or 1,
        dataset_files=dataset_files,
        dataset_sha256=info.dataset_sha256,
        weights_sha256=weights_sha,
        weights=pth,
        status=status,
        not_certified=rejected,
        run_id=info.run_id,
    ).to_bytes()

    files["training_results.json"] = TrainingResults(
        dna=dna,
        version=info.version,
        base_models=keys,
        dataset=", ".join(dataset_files) or "-".join(info.dataset_name_tokens),
        dataset_files=dataset_files,
        dataset_sha256=info.dataset_sha256,
        samples=max(r.samples for r in models),
        epochs=info.total_epochs,
        final_loss=_mean([r.final_train_loss for r in models]),
        metrics=metrics,
        trained_models={
            r.key: TrainedModel(
                **per_model[r.key].model_dump(),
                display_name=r.display_name,
                architecture=r.architecture,
                adapter=f"lora_adapters/{adapter_dir_name(r.key)}",
                weights=f"weights/{pth_names[r.key]}",
                steps=r.steps,
                epochs=r.epochs,
                samples=r.samples,
                train_tokens=r.train_tokens,
                duration_seconds=r.duration_seconds,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in models
        },
        status=status,
        not_certified=rejected,
        timestamp=certified_at,
        duration_seconds=duration,
        run_id=info.run_id,
    ).to_bytes()

    files["live_metrics.json"] = live_metrics(
        epoch=info.total_epochs,
        total_epochs=info.total_epochs,
        step=sum(r.steps for r in models),
        total_steps=sum(r.steps for r in models),
        val_losses={r.key: r.final_val_loss for r in models},
        weights=final_weights,
        total_loss=_mean([r.final_train_loss for r in models]),
        timestamp=certified_at,
        kind="final",
    )

    model_files = {path: d for r in models for path, d in sorted(r.files.items())}
    run_file_digests = {name: provenance.sha256_bytes(data) for name, data in files.items()}
    entries = provenance.chain_entries(
        [
            (
                "run_started",
                started,
                {
                    "run_id": info.run_id,
                    "model_name": MODEL_NAME,
                    "version": info.version,
                    "language": info.language,
                    "models": keys,
                    "allow_regression": info.allow_regression,
                },
            ),
            (
                "inputs_hashed",
                started,
                {
                    "base_models": {
                        r.key: {
                            "display_name": r.display_name,
                            "path": r.model_path,
                            "architecture": r.architecture,
                            "digests": dict(sorted(r.base_model_digests.items())),
                        }
                        for r in models
                    },
                    "dataset": {"files": dataset_files, "sha256": info.dataset_sha256},
                    "hyperparameters": info.hyperparameters,
                    "image_digest": info.image_digest,
                },
            ),
            *(
                (
                    "model_trained",
                    r.finished_at,
                    {
                        "model": r.key,
                        "metrics": per_model[r.key].model_dump(mode="json"),
                        "steps": r.steps,
                        "epochs": r.epochs,
                        "train_tokens": r.train_tokens,
                        "host": r.host,
                    },
                )
                for r in sorted(models, key=lambda r: (_instant(r.finished_at), r.key))
            ),
            (
                "artifacts_uploaded",
                certified_at,
                {"files": {p: d.model_dump(mode="json") for p, d in model_files.items()}},
            ),
            (
                "certified",
                certified_at,
                {
                    "dna": dna,
                    "status": status,
                    "not_certified": rejected,
                    "final_weights": final_weights,
                    "immutable_hash": immutable,
                    "run_files": run_file_digests,
                    "signer_fingerprint": (
                        provenance.public_key_fingerprint(signing_key) if signing_key else None
                    ),
                },
            ),
        ]
    )
    ledger = LedgerProof(
        event=f"training_{status.replace('-', '_')}",
        model=MODEL_NAME,
        dna=dna,
        version=info.version,
        base_models=keys,
        dataset_hashes={"sha256": info.dataset_sha256},
        final_weights=final_weights,
        immutable_hash=immutable,
        timestamp=certified_at,
        status=status,
        not_certified=rejected,
        run_id=info.run_id,
        head_hash=provenance.entry_hash(entries[-1]),
        entries=entries,
        signer_public_key=provenance.public_key_b64(signing_key) if signing_key else None,
        signature=None,
    )
    if signing_key is not None:
        # Signed over the canonical JSON of the document without its "signature" field.
        unsigned = ledger.model_dump(mode="json", by_alias=True, exclude={"signature"})
        signature = provenance.sign_detached(provenance.canonical_json(unsigned), signing_key)
        ledger = ledger.model_copy(update={"signature": signature})
    files["ledger_proof.json"] = ledger.to_bytes()

    subjects = {path: d.sha256 for path, d in model_files.items()}
    subjects.update({name: provenance.sha256_bytes(data) for name, data in files.items()})
    statement = provenance.build_intoto_statement(subjects, models, info)
    files["provenance.intoto.json"] = (
        json.dumps(statement, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode()
    return files
