"""Verifiable provenance: content hashes, DNA fingerprint, hash-chained ledger, ed25519
signatures, the in-toto statement, and ``verify``.

What each piece proves, and the exact bytes it covers:

- **Canonical JSON** (:func:`canonical_json`): ``json.dumps(obj, sort_keys=True,
  separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` encoded as UTF-8. Every hash
  and signature over a JSON value is over these bytes, so formatting never matters.
- **DNA** (:func:`dna_string`): ``OneSeek-7B-Zero.v<version>.<lang>.ds<n datasets>.<h1>.<h2>``
  where ``h1`` is the first 8 hex of the dataset's SHA-256 and ``h2`` the first 8 hex of the
  final weights digest (:func:`weights_digest`): SHA-256 over the UTF-8 lines
  ``"<key>\\0<sha256 of weights/oneseek-7b-zero-v<ver>-<key>.pth>\\n"`` for every key of
  ``final_weights``, sorted by key. ``oneseek_dna.json`` carries both full digests.
- **Ledger**: entries ``{index, event, timestamp, data, prev_hash}``; ``prev_hash`` is the
  SHA-256 of the previous entry's canonical JSON (64 zeros for the first), and the document's
  ``head_hash`` is the SHA-256 of the last entry, so removing, reordering or editing any entry
  (the last one included) breaks the chain. The hashes alone can be recomputed by anyone;
  the signatures below are what a forger cannot redo.
- **Signature**: ed25519 over the exact bytes of MANIFEST.json (itself canonical JSON listing
  every file's size and SHA-256), stored as ``MANIFEST.json.sig`` with the public key and its
  fingerprint (SHA-256 of the 32 raw public key bytes). Ed25519 is deterministic, so two
  racing certifiers produce identical signatures.
- **in-toto**: a Statement v1 with an SLSA Provenance v1 predicate whose subjects are every
  certified file except the statement itself.

This module never imports torch: ``verify`` must start fast and run anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from oneseek_job import __version__, artifacts
from oneseek_job.artifacts import LedgerEntry
from oneseek_job.digests import sha256_bytes, sha256_file
from oneseek_job.errors import ConfigError, InputError
from oneseek_job.logs import register_secret

if TYPE_CHECKING:
    from oneseek_job.storage import ObjectInfo, Store

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "GENESIS_HASH",
    "INTOTO_PREDICATE_TYPE",
    "INTOTO_STATEMENT_TYPE",
    "Check",
    "LedgerEntry",
    "Manifest",
    "ManifestFile",
    "SignatureFile",
    "VerifyReport",
    "build_intoto_statement",
    "build_manifest",
    "canonical_json",
    "chain_entries",
    "check_ledger_chain",
    "dna_string",
    "entry_hash",
    "generate_keypair",
    "hash_model_inputs",
    "hash_model_inputs_async",
    "immutable_hash",
    "is_certified_path",
    "load_private_key",
    "load_public_key",
    "model_input_files",
    "parse_dna",
    "public_key_b64",
    "public_key_fingerprint",
    "resolve_run_id",
    "sha256_bytes",
    "sha256_file",
    "sign",
    "sign_detached",
    "verify_detached",
    "verify_run",
    "weights_digest",
]

GENESIS_HASH = "0" * 64
INTOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
INTOTO_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:oneseek:oneseek-job:lora-training:v1"
BUILDER_ID = "urn:oneseek:oneseek-job:builder"
SIGNATURE_ALGORITHM = "ed25519"
MANIFEST_FORMAT = "oneseek-manifest/v1"
# Objects up to this size are read into memory to hash; bigger ones are streamed to a temp file.
SMALL_OBJECT_BYTES = 16 * 1024 * 1024
# Files of a model directory that decide what the model computes: config, tokenizer and weights.
_INPUT_SUFFIXES = (".json", ".safetensors", ".bin", ".pth", ".pt", ".model", ".txt")
_DNA_RE = re.compile(
    r"^(?P<name>OneSeek-7B-Zero)\.v(?P<version>[^.]+(?:\.[0-9]+)*)\.(?P<lang>[a-z]{2,3})"
    r"\.ds(?P<n>[0-9]+)\.(?P<h1>[0-9a-f]{8})\.(?P<h2>[0-9a-f]{8})$"
)


# --------------------------------------------------------------------------- hashing


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that every hash and signature covers.

    Args:
        obj: a JSON-compatible value (dicts, lists, str, int, float, bool, None).

    Raises:
        ValueError: the value holds NaN/Infinity, which JSON cannot carry portably.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def model_input_files(model_dir: Path) -> list[Path]:
    """The files of a model directory that define the model: config, tokenizer, weights.

    Top-level regular files only (a model's weights and config live there in the HF layout),
    sorted by name so the digest map is stable.
    """
    root = Path(model_dir)
    return sorted(
        (p for p in root.iterdir() if p.is_file() and p.suffix.lower() in _INPUT_SUFFIXES),
        key=lambda p: p.name,
    )


def hash_model_inputs(model_dir: Path) -> dict[str, str]:
    """``{file name: sha256}`` for :func:`model_input_files` of ``model_dir``.

    Raises:
        InputError: the directory cannot be read.
    """
    try:
        return {p.name: sha256_file(p) for p in model_input_files(model_dir)}
    except OSError as error:
        raise InputError(f"cannot hash model files in {model_dir}: {error}") from error


def hash_model_inputs_async(model_dir: Path) -> Future[dict[str, str]]:
    """Start :func:`hash_model_inputs` in a background thread; ``.result()`` waits for it.

    Training starts while multi-GB weights are hashed: the thread reads the files the model
    loader reads anyway (page cache), and hashlib releases the GIL while hashing.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-inputs")
    future = executor.submit(hash_model_inputs, model_dir)
    executor.shutdown(wait=False)  # the worker finishes the job, then exits
    return future


def weights_digest(pth_digests: Mapping[str, str]) -> str:
    """The final-weights digest the DNA abbreviates.

    SHA-256 over ``"<key>\\0<pth sha256>\\n"`` (UTF-8) for every key, sorted by key.

    Args:
        pth_digests: model key → SHA-256 of its ``weights/oneseek-7b-zero-v<ver>-<key>.pth``.
    """
    digest = hashlib.sha256()
    for key in sorted(pth_digests):
        digest.update(f"{key}\0{pth_digests[key]}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- DNA


def dna_string(
    version: str, language: str, n_datasets: int, dataset_sha256: str, weights_sha256: str
) -> str:
    """``OneSeek-7B-Zero.v<version>.<lang>.ds<n datasets>.<dataset[:8]>.<weights[:8]>``.

    Args:
        version: MODEL_VERSION, e.g. ``1.0``.
        language: ISO 639 code of the training data, e.g. ``sv``.
        n_datasets: number of dataset files trained on (at least 1).
        dataset_sha256: full SHA-256 of the dataset (one file's, or the combined digest).
        weights_sha256: :func:`weights_digest` of the final weights.
    """
    return (
        f"{artifacts.MODEL_NAME}.v{version}.{language}.ds{max(n_datasets, 1)}."
        f"{dataset_sha256[:8]}.{weights_sha256[:8]}"
    )


@dataclass(frozen=True)
class DnaParts:
    """The fields of a DNA string."""

    version: str
    language: str
    n_datasets: int
    dataset_prefix: str
    weights_prefix: str


def parse_dna(dna: str) -> DnaParts | None:
    """Split a DNA string into its fields, or None when it is not one."""
    match = _DNA_RE.match(dna)
    if match is None:
        return None
    return DnaParts(
        version=match["version"],
        language=match["lang"],
        n_datasets=int(match["n"]),
        dataset_prefix=match["h1"],
        weights_prefix=match["h2"],
    )


def immutable_hash(
    *,
    dna: str,
    version: str,
    base_models: list[str],
    final_weights: Mapping[str, float],
    dataset_sha256: str,
    weights_sha256: str,
) -> str:
    """SHA-256 of the canonical JSON of the model's identity (the DNA and what it abbreviates).

    The object hashed is ``{"baseModels", "dataset_sha256", "dna", "final_weights",
    "version", "weights_sha256"}``; ``oneseek_dna.json`` and ``ledger_proof.json`` carry it.
    """
    return sha256_bytes(
        canonical_json(
            {
                "baseModels": list(base_models),
                "dataset_sha256": dataset_sha256,
                "dna": dna,
                "final_weights": dict(final_weights),
                "version": version,
                "weights_sha256": weights_sha256,
            }
        )
    )


# --------------------------------------------------------------------------- ledger


def entry_hash(entry: LedgerEntry | Mapping[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON: what the next entry's ``prev_hash`` holds."""
    obj = entry.model_dump(mode="json") if isinstance(entry, LedgerEntry) else dict(entry)
    return sha256_bytes(canonical_json(obj))


def chain_entries(events: Iterable[tuple[str, str, dict[str, Any]]]) -> list[LedgerEntry]:
    """Link ``(event, timestamp, data)`` triples into hash-chained ledger entries.

    Args:
        events: in the order they happened.
    """
    entries: list[LedgerEntry] = []
    prev = GENESIS_HASH
    for index, (event, timestamp, data) in enumerate(events):
        entry = LedgerEntry(
            index=index, event=event, timestamp=timestamp, data=data, prev_hash=prev
        )
        entries.append(entry)
        prev = entry_hash(entry)
    return entries


def check_ledger_chain(entries: list[Mapping[str, Any]], head_hash: str | None) -> list[str]:
    """Every break in a ledger chain, as one message each (empty: intact).

    Detects a removed entry (index gap), reordered entries, an edited entry (the next
    entry's ``prev_hash`` no longer matches), and an edited or dropped last entry
    (``head_hash``).
    """
    if not entries:
        return ["ledger has no entries"]
    problems: list[str] = []
    indices = [e.get("index") for e in entries]
    expected = list(range(len(entries)))
    if indices != expected:
        if sorted(i for i in indices if isinstance(i, int)) == expected:
            moved = [p for p, i in enumerate(indices) if i != p]
            problems.append(
                f"ledger entries reordered: positions {moved} hold indices "
                f"{[indices[p] for p in moved]}"
            )
        else:
            for position, index in enumerate(indices):
                if index != position:
                    problems.append(
                        f"ledger entry {position} missing or renumbered: found index {index} "
                        f"where {position} belongs (an entry was removed)"
                    )
                    break
    if entries[0].get("prev_hash") != GENESIS_HASH:
        problems.append("ledger entry 0: prev_hash is not the genesis hash (entries before it)")
    for position in range(1, len(entries)):
        if entries[position].get("prev_hash") != entry_hash(entries[position - 1]):
            problems.append(
                f"ledger entry {position}: prev_hash does not match entry {position - 1} "
                f"(entry {position - 1} edited, removed or moved)"
            )
    if head_hash is not None and entry_hash(entries[-1]) != head_hash:
        problems.append(
            f"ledger head_hash does not match the last entry {len(entries) - 1} "
            "(last entry edited or removed)"
        )
    return problems


# --------------------------------------------------------------------------- keys and signatures


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an ed25519 private key (PEM, unencrypted: the Secret mount is the protection).

    Raises:
        ConfigError: missing, unreadable, or not an ed25519 private key.
    """
    hint = "create one with `oneseek-job keygen` and mount it via ONESEEK_SIGNING_KEY_FILE"
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(
            f"signing key {path} cannot be read ({error.strerror}): {hint}"
        ) from error
    register_secret(data.decode("utf-8", "replace").strip())
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"signing key {path} is not an unencrypted PEM key: {hint}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an ed25519 key: {hint}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an ed25519 public key (PEM, as ``oneseek-job keygen`` writes it).

    Raises:
        ConfigError: missing, unreadable, or not an ed25519 public key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"public key {path} cannot be read: {error.strerror}") from error
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"public key {path} is not a PEM public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {path} is not an ed25519 key")
    return key


def generate_keypair(out_dir: Path, *, name: str = "oneseek-signing") -> tuple[Path, Path]:
    """Write a new ed25519 key pair: ``<name>.key`` (PEM PKCS#8, mode 0600) and ``<name>.pub``.

    Args:
        out_dir: created if missing.
        name: file name stem.

    Raises:
        InputError: a key file of that name already exists (never overwritten).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for existing in (private_path, public_path):
        if existing.exists():
            raise InputError(f"{existing} already exists; remove it or pick another --name")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL + 0600 at creation: the key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SHA-256 (hex) of the 32 raw public key bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return sha256_bytes(_raw_public(public))


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Base64 of the 32 raw public key bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(_raw_public(public)).decode("ascii")


def sign_detached(data: bytes, key: Ed25519PrivateKey) -> str:
    """Base64 ed25519 signature of ``data``."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_detached(data: bytes, signature_b64: str, public_key_b64_: str) -> bool:
    """True when ``signature_b64`` is a valid ed25519 signature of ``data`` by that key."""
    try:
        public = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(public_key_b64_, validate=True)
        )
        public.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


class SignatureFile(BaseModel):
    """The content of MANIFEST.json.sig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: str
    signed_file: str
    public_key_fingerprint: str
    public_key: str
    signature: str


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The MANIFEST.json.sig content: ed25519 signature of the exact MANIFEST.json bytes.

    Args:
        manifest_bytes: what :func:`build_manifest` returned (and what is uploaded).
        key: the signing key.
    """
    document = SignatureFile(
        algorithm=SIGNATURE_ALGORITHM,
        signed_file=artifacts.MANIFEST_NAME,
        public_key_fingerprint=public_key_fingerprint(key),
        public_key=public_key_b64(key),
        signature=sign_detached(manifest_bytes, key),
    )
    return json.dumps(document.model_dump(), indent=2).encode() + b"\n"


# --------------------------------------------------------------------------- manifest


class ManifestFile(BaseModel):
    """One certified file: path relative to the run prefix, size, SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    """MANIFEST.json: the committed file set of a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    run_id: str
    signed: bool
    signer_fingerprint: str | None
    file_count: int
    total_size: int
    files: list[ManifestFile]


def is_certified_path(relative: str) -> bool:
    """Whether a run-relative path belongs to the certified file set.

    Excluded: MANIFEST.json and its signature (they certify the rest) and every top-level
    dot directory (``.done/`` markers, ``.live/`` progress), which is scratch state of the
    run, not its result.
    """
    if relative in (artifacts.MANIFEST_NAME, artifacts.SIGNATURE_NAME):
        return False
    return not relative.split("/", 1)[0].startswith(".")


def build_manifest(
    run_id: str, objects: Iterable[ObjectInfo], *, signing_key: Ed25519PrivateKey | None
) -> bytes:
    """MANIFEST.json bytes (canonical JSON) for the certified files among ``objects``.

    Args:
        run_id: the run.
        objects: ``store.list(run_prefix(run_id))``; keys outside the prefix are refused,
            uncertified paths (:func:`is_certified_path`) skipped.
        signing_key: the key that will sign it (its fingerprint is recorded), or None for
            an unsigned run (``"signed": false``).

    Raises:
        InputError: an object outside the run prefix, or no certified file at all.
    """
    prefix = artifacts.run_prefix(run_id)
    files: list[ManifestFile] = []
    for info in objects:
        if not info.key.startswith(prefix):
            raise InputError(f"{info.key} is not under {prefix}; cannot list it in the manifest")
        relative = info.key[len(prefix) :]
        if is_certified_path(relative):
            files.append(ManifestFile(path=relative, size=info.size, sha256=info.sha256))
    if not files:
        raise InputError(f"run {run_id} has no files to certify under {prefix}")
    files.sort(key=lambda f: f.path)
    manifest = Manifest(
        format=MANIFEST_FORMAT,
        run_id=run_id,
        signed=signing_key is not None,
        signer_fingerprint=public_key_fingerprint(signing_key) if signing_key else None,
        file_count=len(files),
        total_size=sum(f.size for f in files),
        files=files,
    )
    return canonical_json(manifest.model_dump(mode="json"))


# --------------------------------------------------------------------------- in-toto


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
    results: list[artifacts.ModelResult],
    info: artifacts.RunInfo,
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
            "digest": {"sha256": weights_digest(r.base_model_digests)},
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


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Check:
    """One verdict line: which check, whether it holds, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Every check of one run; ``ok`` only when all hold."""

    run_id: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is at least one check and every check holds."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        """Record one verdict."""
        self.checks.append(Check(name, ok, detail))


def resolve_run_id(store: Store, run_id: str | None, current: bool) -> str:
    """The run to verify: ``run_id`` as given, or the run CURRENT points at.

    Raises:
        ConfigError: both a run id and ``current`` were asked for.
        InputError: no run id given and no CURRENT pointer in the store.
    """
    if run_id and current:
        raise ConfigError("give either --run-id or --current, not both")
    if run_id:
        return run_id
    from oneseek_job import storage

    pointer: str | None = storage.read_current(store)
    if not pointer:
        raise InputError(f"no committed run in {store.uri} (no CURRENT pointer): pass --run-id")
    return _run_id_from_pointer(pointer)


def _run_id_from_pointer(pointer: str) -> str:
    """CURRENT may hold a bare run id or the run's path (``oneseek-certified/<run>/``)."""
    text = pointer.strip().rstrip("/")
    return text.rsplit("/", 1)[-1]


# Run files verify reads after hashing: always fetched whole (they are small by construction).
_READ_BACK = ("oneseek_dna.json", "training_results.json", "ledger_proof.json")
_INTOTO_NAME = "provenance.intoto.json"


def _rehash(
    store: Store, key: str, size: int, tmp_dir: Path, *, keep: bool = False
) -> tuple[str, int, bytes | None]:
    """(sha256, size, bytes-if-small) of an object, from its content (never store metadata)."""
    if keep or size <= SMALL_OBJECT_BYTES:
        data = store.get_bytes(key)
        return sha256_bytes(data), len(data), data
    target = Path(tempfile.mkstemp(dir=tmp_dir)[1])
    try:
        store.download_file(key, target)
        return sha256_file(target), target.stat().st_size, None
    finally:
        target.unlink(missing_ok=True)


def _load_json(contents: dict[str, bytes], name: str) -> dict[str, Any] | None:
    data = contents.get(name)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def verify_run(
    store: Store,
    run_id: str,
    *,
    public_key: Ed25519PublicKey | None,
    allow_unsigned: bool = False,
) -> VerifyReport:
    """Re-check a committed run from its content; every failure is its own check.

    Checks: MANIFEST present; every listed file present with its size and SHA-256
    (re-hashed from content, streamed for big files); no unlisted file; signature over
    MANIFEST.json (and the expected signer when ``public_key`` is given); ledger chain and
    signature; DNA against the weights and dataset digests; run files agree with each other;
    in-toto subjects equal the manifest.

    Args:
        store: where the run lives.
        run_id: the run.
        public_key: the expected signer; without it a valid signature is accepted from any key.
        allow_unsigned: accept a run without MANIFEST.json.sig.
    """
    report = VerifyReport(run_id)
    prefix = artifacts.run_prefix(run_id)
    try:
        manifest_bytes = store.get_bytes(prefix + artifacts.MANIFEST_NAME)
    except FileNotFoundError:
        report.add("manifest", False, f"MANIFEST.json missing under {prefix}: run not committed")
        return report
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as error:
        report.add("manifest", False, f"MANIFEST.json is not a valid manifest: {error.errors()[0]}")
        return report
    if manifest.run_id != run_id:
        report.add("manifest", False, f"MANIFEST.json names run {manifest.run_id}, not {run_id}")
    else:
        report.add("manifest", True, f"{manifest.file_count} files, {manifest.total_size} bytes")

    contents = _check_files(store, prefix, manifest, report)
    _check_signature(store, prefix, manifest, manifest_bytes, public_key, allow_unsigned, report)
    ledger = _load_json(contents, "ledger_proof.json")
    _check_ledger(ledger, manifest, report)
    _check_dna(contents, manifest, ledger, report)
    _check_intoto(contents, manifest, report)
    return report


def _safe_relative(path: str) -> bool:
    """A forged MANIFEST must not make verify read outside the run prefix."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _check_files(
    store: Store, prefix: str, manifest: Manifest, report: VerifyReport
) -> dict[str, bytes]:
    """Re-hash every listed file; flag missing, changed and unlisted ones."""
    listed = {f.path: f for f in manifest.files if _safe_relative(f.path)}
    for bad in sorted(f.path for f in manifest.files if not _safe_relative(f.path)):
        report.add("files", False, f"{bad!r}: MANIFEST lists a path outside the run")
    present = {
        info.key[len(prefix) :]: info for info in store.list(prefix) if info.key.startswith(prefix)
    }
    contents: dict[str, bytes] = {}
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="oneseek-verify-") as tmp,
        ThreadPoolExecutor(8) as pool,
    ):
        futures = {
            path: pool.submit(
                _rehash,
                store,
                prefix + path,
                present[path].size,
                Path(tmp),
                keep=path in (*_READ_BACK, _INTOTO_NAME),
            )
            for path in sorted(listed)
            if path in present
        }
        for path in sorted(listed):
            expected = listed[path]
            if path not in present:
                problems.append(f"{path}: listed in MANIFEST but missing (deleted)")
                continue
            try:
                digest, size, data = futures[path].result()
            except FileNotFoundError:
                problems.append(f"{path}: listed in MANIFEST but missing (deleted)")
                continue
            if size != expected.size:
                problems.append(
                    f"{path}: size {size} != {expected.size} in MANIFEST (content changed)"
                )
            elif digest != expected.sha256:
                problems.append(f"{path}: sha256 differs from MANIFEST (content changed)")
            elif data is not None:
                contents[path] = data  # only verified bytes feed the later checks
    for problem in problems:
        report.add("files", False, problem)
    if not problems and len(listed) == len(manifest.files):
        report.add("files", True, f"{len(listed)} files re-hashed, all match MANIFEST")
    unlisted = sorted(p for p in present if is_certified_path(p) and p not in listed)
    for path in unlisted:
        report.add("unlisted", False, f"{path}: present but not in MANIFEST (added after commit)")
    if not unlisted:
        report.add("unlisted", True, "no file outside MANIFEST")
    return contents


def _check_signature(
    store: Store,
    prefix: str,
    manifest: Manifest,
    manifest_bytes: bytes,
    public_key: Ed25519PublicKey | None,
    allow_unsigned: bool,
    report: VerifyReport,
) -> None:
    try:
        raw = store.get_bytes(prefix + artifacts.SIGNATURE_NAME)
    except FileNotFoundError:
        if manifest.signed:
            report.add(
                "signature", False, "MANIFEST.json.sig missing but MANIFEST says the run is signed"
            )
        elif allow_unsigned:
            report.add("signature", True, "run is unsigned (accepted: --allow-unsigned)")
        else:
            report.add(
                "signature",
                False,
                "run is unsigned (no MANIFEST.json.sig); pass --allow-unsigned to accept it",
            )
        return
    try:
        signature = SignatureFile.model_validate_json(raw)
    except ValidationError:
        report.add("signature", False, "MANIFEST.json.sig is not a valid signature file")
        return
    if signature.algorithm != SIGNATURE_ALGORITHM:
        report.add("signature", False, f"unsupported signature algorithm {signature.algorithm}")
        return
    if not verify_detached(manifest_bytes, signature.signature, signature.public_key):
        report.add(
            "signature",
            False,
            "signature does not match MANIFEST.json bytes (MANIFEST edited after signing)",
        )
        return
    try:
        embedded_fp = sha256_bytes(base64.b64decode(signature.public_key, validate=True))
    except ValueError:
        embedded_fp = ""
    if embedded_fp != signature.public_key_fingerprint:
        report.add("signature", False, "MANIFEST.json.sig fingerprint does not match its key")
        return
    if public_key is not None and embedded_fp != public_key_fingerprint(public_key):
        report.add(
            "signature",
            False,
            f"signature from another key: signed by {embedded_fp[:16]}…, expected "
            f"{public_key_fingerprint(public_key)[:16]}… (--public-key)",
        )
        return
    if manifest.signer_fingerprint != embedded_fp:
        report.add(
            "signature",
            False,
            f"MANIFEST names signer {str(manifest.signer_fingerprint)[:16]}… but the signature "
            f"is by {embedded_fp[:16]}… (re-signed with another key)",
        )
        return
    pinned = "matches --public-key" if public_key else "signer not pinned: pass --public-key"
    report.add("signature", True, f"valid ed25519 signature by {embedded_fp[:16]}… ({pinned})")


def _check_ledger(ledger: dict[str, Any] | None, manifest: Manifest, report: VerifyReport) -> None:
    if ledger is None:
        report.add("ledger", False, "ledger_proof.json missing, unreadable or not verified")
        return
    raw_entries = ledger.get("entries")
    if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
        report.add("ledger", False, "ledger_proof.json has no list of entries")
        return
    problems = check_ledger_chain(raw_entries, ledger.get("head_hash"))
    signer = ledger.get("signer_public_key")
    if signer:
        unsigned_doc = {k: v for k, v in ledger.items() if k != "signature"}
        if not verify_detached(canonical_json(unsigned_doc), str(ledger.get("signature")), signer):
            problems.append("ledger signature does not match its content (ledger edited)")
        else:
            try:
                fingerprint = sha256_bytes(base64.b64decode(signer, validate=True))
            except ValueError:
                fingerprint = ""
            if manifest.signer_fingerprint not in (None, fingerprint):
                problems.append("ledger signed by a different key than MANIFEST")
    elif manifest.signed:
        problems.append("ledger is unsigned but MANIFEST says the run is signed")
    problems += _ledger_run_files(raw_entries, manifest)
    for problem in problems:
        report.add("ledger", False, problem)
    if not problems:
        report.add("ledger", True, f"{len(raw_entries)} entries, hash chain intact")


def _ledger_run_files(entries: list[dict[str, Any]], manifest: Manifest) -> list[str]:
    """The certified entry's digests of the run files must be the manifest's."""
    certified = [e for e in entries if e.get("event") == "certified"]
    if len(certified) != 1 or not isinstance(certified[0].get("data"), dict):
        return ["ledger has no single certified entry"]
    recorded = certified[0]["data"].get("run_files") or {}
    digests = {f.path: f.sha256 for f in manifest.files}
    return [
        f"{path}: sha256 differs from the ledger's certified entry (file replaced)"
        for path, sha in sorted(recorded.items())
        if digests.get(path) != sha
    ]


def _check_dna(
    contents: dict[str, bytes],
    manifest: Manifest,
    ledger: dict[str, Any] | None,
    report: VerifyReport,
) -> None:
    dna_doc = _load_json(contents, "oneseek_dna.json")
    results = _load_json(contents, "training_results.json")
    if dna_doc is None:
        report.add("dna", False, "oneseek_dna.json missing, unreadable or not verified")
        return
    problems: list[str] = []
    dna = str(dna_doc.get("dna", ""))
    parts = parse_dna(dna)
    version = str(dna_doc.get("version", ""))
    final_weights = dna_doc.get("final_weights")
    if parts is None:
        problems.append(f"DNA {dna!r} is not OneSeek-7B-Zero.v<ver>.<lang>.ds<n>.<h1>.<h2>")
    if not isinstance(final_weights, dict) or not final_weights:
        problems.append("oneseek_dna.json has no final_weights")
        final_weights = {}
    digests = {f.path: f.sha256 for f in manifest.files}
    pth: dict[str, str] = {}
    for key in final_weights:
        path = f"weights/{artifacts.weights_file_name(version, key)}"
        if path not in digests:
            problems.append(f"DNA weight {key}: {path} not in MANIFEST")
        else:
            pth[key] = digests[path]
    if parts is not None and len(pth) == len(final_weights):
        actual = weights_digest(pth)
        if dna_doc.get("weights_sha256") != actual or parts.weights_prefix != actual[:8]:
            problems.append(
                f"DNA weights hash {parts.weights_prefix} does not match the .pth files "
                f"in MANIFEST ({actual[:8]})"
            )
    dataset = dna_doc.get("dataset_sha256")
    if parts is not None and (not isinstance(dataset, str) or parts.dataset_prefix != dataset[:8]):
        problems.append("DNA dataset hash does not match oneseek_dna.json dataset_sha256")
    if parts is not None and isinstance(dataset, str) and isinstance(final_weights, dict):
        identity = immutable_hash(
            dna=dna,
            version=version,
            base_models=list(dna_doc.get("baseModels") or []),
            final_weights=final_weights,
            dataset_sha256=dataset,
            weights_sha256=str(dna_doc.get("weights_sha256")),
        )
        if dna_doc.get("immutable_hash") != identity:
            problems.append("oneseek_dna.json immutable_hash does not match its content")
        if ledger is not None and ledger.get("immutable_hash") != identity:
            problems.append("ledger_proof.json immutable_hash differs from oneseek_dna.json")
    if results is None:
        problems.append("training_results.json missing, unreadable or not verified")
    else:
        if results.get("dataset_sha256") != dataset:
            problems.append(
                "dataset sha256 differs between oneseek_dna.json and training_results.json"
            )
        if results.get("dna") != dna:
            problems.append("DNA differs between oneseek_dna.json and training_results.json")
    if ledger is not None:
        ledger_dataset = (ledger.get("dataset_hashes") or {}).get("sha256")
        if ledger_dataset != dataset:
            problems.append("dataset sha256 differs between oneseek_dna.json and ledger_proof.json")
        if ledger.get("dna") != dna:
            problems.append("DNA differs between oneseek_dna.json and ledger_proof.json")
        problems += _results_vs_ledger(results, ledger)
    for problem in problems:
        report.add("dna", False, problem)
    if not problems:
        report.add("dna", True, f"{dna} matches weights, dataset, results and ledger")


def _results_vs_ledger(results: dict[str, Any] | None, ledger: dict[str, Any]) -> list[str]:
    """training_results.json per-model metrics must equal the ledger's model_trained events."""
    if results is None:
        return []
    trained = results.get("trained_models")
    if not isinstance(trained, dict):
        return ["training_results.json trained_models is not an object keyed by model"]
    ledger_metrics = {
        e["data"].get("model"): e["data"].get("metrics")
        for e in ledger.get("entries") or []
        if isinstance(e, dict)
        and e.get("event") == "model_trained"
        and isinstance(e.get("data"), dict)
    }
    problems: list[str] = []
    if set(trained) != set(ledger_metrics):
        problems.append(
            f"trained_models {sorted(trained)} differ from ledger models {sorted(ledger_metrics)}"
        )
    for key, entry in trained.items():
        metrics = ledger_metrics.get(key)
        if not isinstance(entry, dict) or not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if entry.get(name) != value:
                problems.append(
                    f"training_results.json {key}.{name}={entry.get(name)!r} but the ledger "
                    f"recorded {value!r} (value edited)"
                )
    return problems


def _check_intoto(contents: dict[str, bytes], manifest: Manifest, report: VerifyReport) -> None:
    statement = _load_json(contents, "provenance.intoto.json")
    if statement is None:
        report.add("in-toto", False, "provenance.intoto.json missing, unreadable or not verified")
        return
    if statement.get("_type") != INTOTO_STATEMENT_TYPE or (
        statement.get("predicateType") != INTOTO_PREDICATE_TYPE
    ):
        report.add("in-toto", False, "provenance.intoto.json is not an in-toto v1 SLSA statement")
        return
    subjects: dict[str, Any] = {
        str(s.get("name")): (s.get("digest") or {}).get("sha256")
        for s in statement.get("subject") or []
        if isinstance(s, dict)
    }
    expected = {f.path: f.sha256 for f in manifest.files if f.path != "provenance.intoto.json"}
    missing = sorted(set(expected) - set(subjects))
    extra = sorted(set(subjects) - set(expected))
    changed = sorted(p for p in expected if p in subjects and subjects[p] != expected[p])
    problems = [f"in-toto subject missing for {p}" for p in missing]
    problems += [f"in-toto subject {p} is not in MANIFEST" for p in extra]
    problems += [f"in-toto subject {p}: sha256 differs from MANIFEST" for p in changed]
    for problem in problems:
        report.add("in-toto", False, problem)
    if not problems:
        report.add("in-toto", True, f"{len(subjects)} subjects equal MANIFEST")
