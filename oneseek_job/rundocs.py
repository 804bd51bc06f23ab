"""The documents of a run, built as bytes: weights metadata, DNA, training results, ledger,
final live metrics, in-toto provenance and MANIFEST.json.

Pure functions of the done markers and :class:`RunInfo` (no clock, no host lookups, no
store): certifying twice from the same markers gives the same documents, signatures aside.
The commit protocol that stores them is ``certify``'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oneseek_job import __version__, layout, provenance
from oneseek_job.digests import sha256_bytes
from oneseek_job.discovery import normalize_model_name
from oneseek_job.documents import (
    INTOTO_PREDICATE_TYPE,
    INTOTO_STATEMENT_TYPE,
    MANIFEST_FORMAT,
    CarriedFrom,
    DnaDocument,
    FileDigest,
    LedgerProof,
    Manifest,
    ManifestFile,
    ModelMetrics,
    ModelResult,
    RunInputs,
    TrainedModel,
    TrainingResults,
    WeightsMetadata,
    live_metrics,
)
from oneseek_job.errors import InputError
from oneseek_job.provenance import SigningKey

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "RunInfo",
    "build_intoto_statement",
    "build_manifest",
    "build_run_files",
    "final_weights_for",
    "instant",
    "run_status",
]

BUILD_TYPE = "urn:oneseek:oneseek-job:lora-training:v1"
BUILDER_ID = "urn:oneseek:oneseek-job:builder"


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


def _names(values: list[str]) -> list[str]:
    """Normalized keys of comma-split names, in order, without blanks or repeats."""
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
    names = cli or [layout.DEFAULT_MODEL_KEY]
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


def instant(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        raise InputError(f"done marker timestamp {text!r} is not ISO-8601") from error


def build_run_files(
    results: list[ModelResult],
    info: RunInfo,
    *,
    signing_key: SigningKey | None,
    extra_files: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Every run-level JSON file of a run, as bytes, keyed by path relative to the run prefix.

    A pure function of the markers and ``info``: timestamps come from the markers
    (certified = latest ``finished_at``), models are ordered by key, and ed25519 is
    deterministic, so racing certifiers write identical bytes.

    Args:
        results: one done marker per model of the run (any order).
        info: run-wide settings.
        signing_key: signs the ledger (the MANIFEST is signed separately); None: unsigned.
        extra_files: more run-level files (the HTML report), returned with the others and
            listed as in-toto subjects.

    Raises:
        InputError: no results, duplicate keys, or a model without its .pth in ``files``.
    """
    if not results:
        raise InputError(f"run {info.run_id} has no finished models to certify")
    models = sorted(results, key=lambda r: r.key)
    keys = [r.key for r in models]
    if len(set(keys)) != len(keys):
        raise InputError(f"run {info.run_id} has duplicate done markers for {keys}")
    pth_names = {r.key: layout.weights_file_name(info.version, r.key) for r in models}
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
    started = min((r.started_at for r in models), key=instant)
    certified_at = max((r.finished_at for r in models), key=instant)
    duration = max((instant(certified_at) - instant(started)).total_seconds(), 0.0)
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

    weights_name = f"weights/{layout.weights_metadata_name(info.version)}"
    files[weights_name] = WeightsMetadata(
        version=f"{layout.MODEL_NAME}.v{info.version}",
        created_at=certified_at,
        training_type="dna-v2" if len(models) > 1 else "single-model",
        multi_model_mode=len(models) > 1,
        base_models=[r.display_name for r in models],
        adapters=[f"lora_adapters/{layout.adapter_dir_name(k)}" for k in keys],
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
        model_name=layout.MODEL_NAME,
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
                adapter=f"lora_adapters/{layout.adapter_dir_name(r.key)}",
                weights=f"weights/{pth_names[r.key]}",
                steps=r.steps,
                epochs=r.epochs,
                samples=r.samples,
                train_tokens=r.train_tokens,
                duration_seconds=r.duration_seconds,
                started_at=r.started_at,
                finished_at=r.finished_at,
                resolution=list(r.resolution),
                carried_from=r.carried_from,
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
    run_file_digests = {name: sha256_bytes(data) for name, data in files.items()}
    entries = provenance.chain_entries(
        [
            (
                "run_started",
                started,
                {
                    "run_id": info.run_id,
                    "model_name": layout.MODEL_NAME,
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
                            "resolution": [n.model_dump() for n in r.resolution],
                        }
                        for r in models
                    },
                    "dataset": {"files": dataset_files, "sha256": info.dataset_sha256},
                    "hyperparameters": info.hyperparameters,
                    "image_digest": info.image_digest,
                },
            ),
            *(
                _model_event(r, per_model[r.key])
                for r in sorted(models, key=lambda r: (instant(r.finished_at), r.key))
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
        model=layout.MODEL_NAME,
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

    files.update(extra_files or {})
    subjects = {path: d.sha256 for path, d in model_files.items()}
    subjects.update({name: sha256_bytes(data) for name, data in files.items()})
    statement = build_intoto_statement(subjects, models, info)
    files["provenance.intoto.json"] = (
        json.dumps(statement, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode()
    return files


def _model_event(r: ModelResult, metrics: ModelMetrics) -> tuple[str, str, dict[str, Any]]:
    """The ledger entry of one model: ``model_trained``, or ``model_carried_over`` (with the
    run it came from) for a model this run reused instead of training it."""
    data: dict[str, Any] = {
        "model": r.key,
        "metrics": metrics.model_dump(mode="json"),
        "steps": r.steps,
        "epochs": r.epochs,
        "train_tokens": r.train_tokens,
        "host": r.host,
    }
    if r.carried_from is None:
        return ("model_trained", r.finished_at, data)
    data["carried_from"] = r.carried_from.model_dump(mode="json")
    return ("model_carried_over", r.finished_at, data)


def build_manifest(
    run_id: str,
    files: Mapping[str, FileDigest],
    *,
    signing_key: SigningKey | None,
    started_at: str | None = None,
    inputs: RunInputs | None = None,
    model_inputs: Mapping[str, Mapping[str, str]] | None = None,
    carried_over: Mapping[str, CarriedFrom] | None = None,
) -> bytes:
    """MANIFEST.json bytes (canonical JSON) for a run's certified files.

    Args:
        run_id: the run.
        files: path relative to the run prefix → size and SHA-256; uncertified paths
            (:func:`layout.is_certified_path`) are skipped.
        signing_key: the key that will sign it (its fingerprint is recorded), or None for
            an unsigned run (``"signed": false``).
        started_at: when the run started (ISO-8601): CURRENT's ordering key.
        inputs: the run-wide input fingerprint; model_inputs: each model's base files.
        carried_over: the models carried over from earlier runs, and from where.

    Raises:
        InputError: no certified file at all.
    """
    listed = [
        ManifestFile(path=path, size=digest.size, sha256=digest.sha256)
        for path, digest in sorted(files.items())
        if layout.is_certified_path(path)
    ]
    if not listed:
        raise InputError(f"run {run_id} has no files to certify")
    manifest = Manifest(
        format=MANIFEST_FORMAT,
        run_id=run_id,
        signed=signing_key is not None,
        signer_fingerprint=provenance.public_key_fingerprint(signing_key) if signing_key else None,
        file_count=len(listed),
        total_size=sum(f.size for f in listed),
        files=listed,
        signature_algorithm=provenance.signature_algorithm(signing_key) if signing_key else None,
        started_at=started_at,
        inputs=inputs,
        model_inputs={k: dict(sorted(v.items())) for k, v in sorted((model_inputs or {}).items())},
        carried_over=dict(sorted((carried_over or {}).items())),
    )
    return provenance.canonical_json(manifest.model_dump(mode="json"))


def _image_descriptor(image_digest: str) -> dict[str, Any]:
    """``repo@sha256:…`` or ``sha256:…`` → an SLSA ResourceDescriptor."""
    name, _, digest = image_digest.rpartition("@")
    algorithm, _, value = (digest or image_digest).partition(":")
    descriptor: dict[str, Any] = {"name": "container-image"}
    if name:
        descriptor["uri"] = f"oci://{name}"
    if value:
        descriptor["digest"] = {algorithm: value}
    else:
        descriptor["annotations"] = {"reference": image_digest}
    return descriptor


def build_intoto_statement(
    subjects: Mapping[str, str],
    results: list[ModelResult],
    info: RunInfo,
) -> dict[str, Any]:
    """An in-toto Statement v1 with an SLSA Provenance v1 predicate for a run.

    Args:
        subjects: run-relative path → SHA-256 of every certified file except the statement.
        results: the models' done markers.
        info: the run's settings.
    """
    models = sorted(results, key=lambda r: r.key)
    base_models = [
        {
            "key": r.key,
            "display_name": r.display_name,
            "architecture": r.architecture,
            "path": r.model_path,
            "digests": dict(sorted(r.base_model_digests.items())),
        }
        for r in models
    ]
    dependencies: list[dict[str, Any]] = [
        {
            "name": f"base-model:{r.key}",
            "uri": f"file://{r.model_path}",
            # One digest for the directory: the same (name, sha256) line scheme as weights.
            "digest": {"sha256": provenance.weights_digest(r.base_model_digests)},
            "annotations": {"files": dict(sorted(r.base_model_digests.items()))},
        }
        for r in models
    ]
    dependencies.append(
        {
            "name": "dataset",
            "digest": {"sha256": info.dataset_sha256},
            "annotations": {"files": sorted({f for r in models for f in r.dataset_files})},
        }
    )
    dependencies += [
        {
            # A reused adapter: its material is the earlier run, pinned by its MANIFEST.
            "name": f"carried-over:{r.key}",
            "digest": {"sha256": r.carried_from.manifest_sha256},
            "annotations": r.carried_from.model_dump(mode="json"),
        }
        for r in models
        if r.carried_from is not None
    ]
    if info.image_digest:
        dependencies.append(_image_descriptor(info.image_digest))
    builder: dict[str, Any] = {"id": BUILDER_ID, "version": {"oneseek-job": __version__}}
    if info.image_digest:
        builder["builderDependencies"] = [_image_descriptor(info.image_digest)]
    return {
        "_type": INTOTO_STATEMENT_TYPE,
        "subject": [
            {"name": path, "digest": {"sha256": subjects[path]}} for path in sorted(subjects)
        ],
        "predicateType": INTOTO_PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "run_id": info.run_id,
                    "version": info.version,
                    "language": info.language,
                    "base_models": base_models,
                    "dataset": {
                        "sha256": info.dataset_sha256,
                        "name_tokens": list(info.dataset_name_tokens),
                    },
                    "hyperparameters": info.hyperparameters,
                    "allow_regression": info.allow_regression,
                },
                "internalParameters": {"total_epochs": info.total_epochs},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": builder,
                "metadata": {
                    "invocationId": info.run_id,
                    "startedOn": min(r.started_at for r in models),
                    "finishedOn": max(r.finished_at for r in models),
                },
                "byproducts": [
                    {
                        "name": f"training-host:{r.key}",
                        "annotations": {
                            "host": r.host,
                            "image_digest": r.image_digest,
                            "started_at": r.started_at,
                            "finished_at": r.finished_at,
                        },
                    }
                    for r in models
                ],
            },
        },
    }
