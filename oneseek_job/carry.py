"""Carry-over: reuse a model's adapter from an earlier certified run instead of training it.

Adding a model to BASE_MODELS makes a new run (a new RUN_ID). The models that were in the
list before would come out of training with the same inputs as last time, so when an
earlier committed run holds a model with the same per-model fingerprint
(:func:`provenance.model_fingerprint`: key, base model file digests, dataset digest,
hyper-parameters, MODEL_VERSION, language), its files are copied into this run's staging
and the model gets a done marker that says where it came from. Everything after the done
marker (certification, signatures, promotion) is the normal path, so the new run stands
and verifies on its own.

Rules (docs/operations.md "Carry-over"):

- Sources are committed runs with a v2 MANIFEST that records ``inputs`` and
  ``model_inputs``; v1 runs are never sources. Newest first, by :func:`certify.run_order`
  (the rule CURRENT moves by); a source that fails a check is skipped with a warning and
  the next one is tried, else the model is trained.
- When this run signs, the source's MANIFEST must carry a valid signature by the same
  key: a run planted in the bucket cannot launder an adapter into a signed run.
- Only an adapter the source certified is carried (not one that failed to beat its base).
- Every file is re-hashed from its content against the source MANIFEST (never metadata),
  then copied server-side into this run's content-addressed staging and re-hashed there.
  Nothing outside ARTIFACTS_URI is read and no symlink is followed (the store refuses).

This module never imports torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from oneseek_job import layout, provenance
from oneseek_job.certify import run_order
from oneseek_job.digests import sha256_bytes
from oneseek_job.documents import (
    MANIFEST_FORMAT,
    CarriedFrom,
    FileDigest,
    Manifest,
    ManifestFile,
    RunInputs,
    SignatureFile,
    TrainedModel,
    TrainingResults,
)
from oneseek_job.errors import IntegrityError, JobError
from oneseek_job.logs import get_logger
from oneseek_job.provenance import SigningKey
from oneseek_job.storage import Store
from oneseek_job.verify import rehash

__all__ = [
    "CarryRefused",
    "Source",
    "Verified",
    "check_source",
    "committed_runs",
    "copy_to_staging",
    "could_give",
    "matching_sources",
]

log = get_logger(__name__)
# Manifests are small; reading them in parallel keeps a bucket of many runs quick on S3.
_READERS = 8


class CarryRefused(Exception):  # noqa: N818 - a verdict, not a failure
    """A source run cannot give this model (the model is then trained); says why."""


@dataclass(frozen=True)
class Source:
    """A committed run that could give models: its MANIFEST and that file's digest."""

    run_id: str
    manifest: Manifest
    manifest_bytes: bytes

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the exact MANIFEST.json bytes (what its signature covers)."""
        return sha256_bytes(self.manifest_bytes)


@dataclass(frozen=True)
class Verified:
    """A model's files in a source run, every one re-hashed, and its training record."""

    source: Source
    key: str
    files: list[ManifestFile]
    entry: TrainedModel
    origin: CarriedFrom


def committed_runs(store: Store, exclude: str) -> list[Source]:
    """Every committed run of the store that records its inputs, newest first.

    Args:
        store: the artifact store.
        exclude: this run's id (never its own source).
    """
    run_ids = [
        run
        for key in store.list_keys(f"{layout.CERTIFIED_DIR}/")
        if (run := layout.manifest_run_id(key)) is not None and run != exclude
    ]

    def read(run_id: str) -> Source | None:
        try:
            data = store.get_bytes(layout.run_prefix(run_id) + layout.MANIFEST_NAME)
            manifest = Manifest.model_validate_json(data)
            run_order(run_id, manifest)  # a start time that does not parse cannot be ordered
        except (FileNotFoundError, JobError, ValidationError, ValueError) as error:
            log.warning("carry_over_source_unreadable", tag="mode", run=run_id, error=str(error))
            return None
        usable = (
            manifest.format == MANIFEST_FORMAT
            and manifest.run_id == run_id
            and manifest.inputs is not None
            and manifest.model_inputs is not None
        )
        return Source(run_id, manifest, data) if usable else None

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        sources = [s for s in pool.map(read, run_ids) if s is not None]
    return sorted(sources, key=lambda s: run_order(s.run_id, s.manifest), reverse=True)


def _shared(inputs: RunInputs) -> dict[str, Any]:
    """The run-wide inputs every model shares (the model list aside)."""
    return {k: v for k, v in inputs.model_dump(mode="json").items() if k != "models"}


def could_give(sources: list[Source], key: str, inputs: RunInputs) -> list[Source]:
    """The sources that hold ``key`` with the same run-wide inputs: only for these the base
    model files need hashing (cheap filter first)."""
    ours = _shared(inputs)
    return [
        s
        for s in sources
        if s.manifest.inputs is not None
        and key in (s.manifest.model_inputs or {})
        and _shared(s.manifest.inputs) == ours
    ]


def matching_sources(
    sources: list[Source], key: str, digests: Mapping[str, str], inputs: RunInputs
) -> list[Source]:
    """The sources whose fingerprint of ``key`` equals this run's, newest first."""
    ours = provenance.model_fingerprint(key, digests, inputs.model_dump(mode="json"))
    return [
        s
        for s in could_give(sources, key, inputs)
        if s.manifest.inputs is not None
        and provenance.model_fingerprint(
            key, (s.manifest.model_inputs or {})[key], s.manifest.inputs.model_dump(mode="json")
        )
        == ours
    ]


def check_source(
    store: Store,
    source: Source,
    key: str,
    *,
    version: str,
    signing_key: SigningKey | None,
    work_dir: Path,
) -> Verified:
    """Check that ``source`` can give model ``key``: signer, verdict, every file re-hashed.

    Read-only and a pure function of the stored bytes, so every rank of a torchrun group
    reaches the same verdict.

    Raises:
        CarryRefused: the source cannot give the model (the reason is the message).
        StorageError: the store failed (a retry may succeed).
    """
    _check_signer(store, source, signing_key)
    prefix = layout.run_prefix(source.run_id)
    files = [f for f in source.manifest.files if layout.is_model_file(f.path, version, key)]
    if f"weights/{layout.weights_file_name(version, key)}" not in {f.path for f in files}:
        raise CarryRefused(f"run {source.run_id} has no weights of {key}")
    if any(not _safe_relative(f.path) for f in files):
        raise CarryRefused(f"run {source.run_id} lists a path outside the run")
    entry = _training_record(store, source, key, work_dir)
    if not entry.certified:
        raise CarryRefused(f"{key} was not certified in run {source.run_id}")
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for f in files:
            _same_content(store, prefix + f.path, f, Path(tmp), source.run_id)
    earlier = entry.carried_from
    origin = CarriedFrom(
        run_id=source.run_id,
        manifest_sha256=source.manifest_sha256,
        fingerprint=provenance.model_fingerprint(
            key,
            (source.manifest.model_inputs or {})[key],
            source.manifest.inputs.model_dump(mode="json") if source.manifest.inputs else {},
        ),
        trained_in=earlier.trained_in if earlier else source.run_id,
        trained_started_at=earlier.trained_started_at if earlier else entry.started_at,
        trained_finished_at=earlier.trained_finished_at if earlier else entry.finished_at,
    )
    return Verified(source, key, files, entry, origin)


def copy_to_staging(
    store: Store, run_id: str, verified: Verified, work_dir: Path
) -> dict[str, FileDigest]:
    """Copy the verified files server-side into ``run_id``'s staging blobs, re-hashing each
    copy; the files of the model's done marker.

    Raises:
        IntegrityError: a copy does not hold the bytes its source was verified to hold (the
            blob is deleted; a retry checks the source again).
        StorageError: the store failed.
    """
    prefix = layout.run_prefix(verified.source.run_id)
    staged: dict[str, FileDigest] = {}
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for f in verified.files:
            blob = layout.blob_key(run_id, f.sha256)
            try:
                _same_content(store, blob, f, Path(tmp), verified.source.run_id)
            except CarryRefused:
                # Not staged yet (or damaged): copy it; the blob's name is its content.
                store.delete(blob)
                store.copy(prefix + f.path, blob)
                try:
                    _same_content(store, blob, f, Path(tmp), verified.source.run_id)
                except CarryRefused as error:
                    store.delete(blob)
                    raise IntegrityError(
                        f"the copy of {f.path} from run {verified.source.run_id} did not "
                        f"verify ({error}); re-run"
                    ) from None
            staged[f.path] = FileDigest(size=f.size, sha256=f.sha256)
    return staged


def _check_signer(store: Store, source: Source, signing_key: SigningKey | None) -> None:
    """A signed run only takes files from a run signed by the same key (checked here,
    over the exact MANIFEST bytes); an unsigned run takes any (it is unsigned itself)."""
    if signing_key is None:
        return
    ours = provenance.public_key_fingerprint(signing_key)
    if source.manifest.signer_fingerprint != ours:
        raise CarryRefused(f"run {source.run_id} is not signed by this run's key")
    try:
        signature = SignatureFile.model_validate_json(
            store.get_bytes(layout.run_prefix(source.run_id) + layout.SIGNATURE_NAME)
        )
    except (FileNotFoundError, IntegrityError, ValidationError) as error:
        raise CarryRefused(f"run {source.run_id} has no valid MANIFEST.json.sig") from error
    valid = provenance.verify_detached(
        source.manifest_bytes, signature.signature, provenance.public_key_b64(signing_key)
    )
    if not valid:
        raise CarryRefused(f"run {source.run_id}: MANIFEST.json signature does not verify")


def _training_record(store: Store, source: Source, key: str, work_dir: Path) -> TrainedModel:
    """The model's entry of the source's training_results.json, read only after its bytes
    matched the MANIFEST."""
    listed = {f.path: f for f in source.manifest.files}.get(layout.RESULTS_NAME)
    if listed is None:
        raise CarryRefused(f"run {source.run_id} lists no {layout.RESULTS_NAME}")
    key_in_store = layout.run_prefix(source.run_id) + layout.RESULTS_NAME
    try:
        sha, size, data = rehash(store, key_in_store, listed.size, work_dir, keep=True)
    except (FileNotFoundError, IntegrityError) as error:
        raise CarryRefused(f"run {source.run_id}: {layout.RESULTS_NAME}: {error}") from None
    if (sha, size) != (listed.sha256, listed.size) or data is None:
        raise CarryRefused(f"run {source.run_id}: {layout.RESULTS_NAME} differs from MANIFEST")
    try:
        results = TrainingResults.model_validate_json(data)
    except ValidationError as error:
        raise CarryRefused(f"run {source.run_id}: {layout.RESULTS_NAME} unreadable") from error
    entry = results.trained_models.get(key)
    if entry is None:
        raise CarryRefused(f"run {source.run_id} has no training record of {key}")
    return entry


def _same_content(store: Store, key: str, listed: ManifestFile, tmp: Path, run_id: str) -> None:
    """Raise CarryRefused unless the object's content hashes to the listed digest."""
    try:
        sha, size, _ = rehash(store, key, listed.size, tmp)
    except (FileNotFoundError, IntegrityError) as error:
        # Missing, a symlink (never followed), or content that differs from the object's
        # own checksum on S3: all verdicts on the source; other StorageErrors propagate.
        raise CarryRefused(f"run {run_id}: {listed.path}: {error}") from None
    if (sha, size) != (listed.sha256, listed.size):
        raise CarryRefused(
            f"run {run_id}: {listed.path} is not the file MANIFEST.json names (changed after "
            "certification)"
        )


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)
