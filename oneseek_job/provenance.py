"""Provenance primitives: content hashes, DNA fingerprint, hash-chained ledger, ed25519
signing helpers. (The documents that use them are built in ``certify`` and checked in
``verify``.)

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
- **Signature**: ECDSA P-256 (deterministic, RFC 6979) over the exact bytes of MANIFEST.json
  (itself canonical JSON listing every file's size and SHA-256), stored as
  ``MANIFEST.json.sig`` with the public key (DER SubjectPublicKeyInfo) and its fingerprint
  (SHA-256 of those bytes). Runs certified before used ed25519 (fingerprint over the 32 raw
  public key bytes); both verify. OpenSSF model signing (OMS) signatures of every adapter
  and run directory are made in ``oms``.

This module never imports torch: ``verify`` must start fast and run anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from oneseek_job import layout
from oneseek_job.digests import sha256_bytes, sha256_file
from oneseek_job.documents import LedgerEntry, SignatureFile
from oneseek_job.errors import ConfigError, InputError
from oneseek_job.logs import register_secret
from oneseek_job.safefile import read_regular_file

__all__ = [
    "GENESIS_HASH",
    "DnaParts",
    "PublicKey",
    "SigningKey",
    "canonical_json",
    "chain_entries",
    "check_ledger_chain",
    "dna_string",
    "entry_hash",
    "generate_keypair",
    "hash_model_inputs",
    "hash_model_inputs_async",
    "immutable_hash",
    "load_private_key",
    "load_public_key",
    "model_fingerprint",
    "model_input_files",
    "parse_dna",
    "public_key_b64",
    "public_key_fingerprint",
    "public_pem",
    "sign",
    "sign_detached",
    "signature_algorithm",
    "verify_detached",
    "weights_digest",
]

GENESIS_HASH = "0" * 64
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
        f"{layout.MODEL_NAME}.v{version}.{language}.ds{max(n_datasets, 1)}."
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

# What `oneseek-job keygen` writes and OpenSSF model signing accepts: ECDSA P-256. Runs
# signed before OMS signing used ed25519 keys; those still load and verify.
SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}
_HASH_FOR: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_KEY_HINT = "create one with `oneseek-job keygen` and mount it via ONESEEK_SIGNING_KEY_FILE"


def load_private_key(path: Path) -> SigningKey:
    """Read a signing key: ECDSA P-256/384/521 (PEM PKCS#8 or SEC1) or a legacy ed25519 key.

    Unencrypted: the Secret mount is the protection.

    Raises:
        InputError: missing, unreadable, not a regular file (FIFO, device) or too large.
        ConfigError: encrypted, or not one of those key types.
    """
    # Never a blocking open: a FIFO or a device here must fail, not hang the job.
    data, _mode = read_regular_file(Path(path), what="signing key", limit=64 * 1024)
    register_secret(data.decode("utf-8", "replace").strip())
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"signing key {path} is not an unencrypted PEM key: {_KEY_HINT}"
        ) from error
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVES:
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key
    raise ConfigError(
        f"signing key {path} is not an ECDSA P-256/384/521 (or legacy ed25519) key: {_KEY_HINT}"
    )


def load_public_key(path: Path) -> PublicKey:
    """Read a public key (PEM SubjectPublicKeyInfo, as ``oneseek-job keygen`` writes it).

    Raises:
        InputError: missing, unreadable, not a regular file (FIFO, device) or too large.
        ConfigError: not an ECDSA or ed25519 public key.
    """
    data, _mode = read_regular_file(Path(path), what="public key", limit=64 * 1024)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"public key {path} is not a PEM public key") from error
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        return key
    if isinstance(key, Ed25519PublicKey):
        return key
    raise ConfigError(f"public key {path} is not an ECDSA P-256/384/521 or ed25519 key")


def generate_keypair(out_dir: Path, *, name: str = "oneseek-signing") -> tuple[Path, Path]:
    """Write a new ECDSA P-256 key pair: ``<name>.key`` (PEM PKCS#8, mode 0600), ``<name>.pub``.

    P-256 because the OpenSSF model signing key signer takes elliptic-curve keys only.

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
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL + 0600 at creation: the key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem(key))
    return private_path, public_path


def _public(key: SigningKey | PublicKey) -> PublicKey:
    if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return key.public_key()
    return key


def public_pem(key: SigningKey | PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo (what ``model_signing`` verifiers read)."""
    return _public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_bytes(key: SigningKey | PublicKey) -> bytes:
    # ed25519: the 32 raw bytes (the format runs were signed with); ECDSA: DER SPKI.
    public = _public(key)
    if isinstance(public, Ed25519PublicKey):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signature_algorithm(key: SigningKey | PublicKey) -> str:
    """``ed25519`` or ``ecdsa-<curve>-sha<bits>`` (e.g. ``ecdsa-p256-sha256``)."""
    public = _public(key)
    if isinstance(public, Ed25519PublicKey):
        return "ed25519"
    return f"ecdsa-{_CURVES[public.curve.name]}-{_HASH_FOR[public.curve.name]().name}"


def public_key_fingerprint(key: SigningKey | PublicKey) -> str:
    """SHA-256 (hex) of the public key bytes (ed25519: 32 raw bytes; ECDSA: DER SPKI)."""
    return sha256_bytes(_public_bytes(key))


def public_key_b64(key: SigningKey | PublicKey) -> str:
    """Base64 of the public key bytes (ed25519: 32 raw bytes; ECDSA: DER SPKI)."""
    return base64.b64encode(_public_bytes(key)).decode("ascii")


def sign_detached(data: bytes, key: SigningKey) -> str:
    """Base64 signature of ``data``: ed25519, or deterministic ECDSA (RFC 6979).

    Deterministic either way, so two certifiers with one key produce identical bytes.
    """
    if isinstance(key, Ed25519PrivateKey):
        return base64.b64encode(key.sign(data)).decode("ascii")
    algorithm = ec.ECDSA(_HASH_FOR[key.curve.name](), deterministic_signing=True)
    return base64.b64encode(key.sign(data, algorithm)).decode("ascii")


def verify_detached(data: bytes, signature_b64: str, public_key_b64_: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``data`` by that key (either type)."""
    try:
        raw = base64.b64decode(public_key_b64_, validate=True)
        signature = base64.b64decode(signature_b64, validate=True)
        if len(raw) == 32:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
            return True
        public = serialization.load_der_public_key(raw)
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in _CURVES:
            return False
        public.verify(signature, data, ec.ECDSA(_HASH_FOR[public.curve.name]()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def sign(manifest_bytes: bytes, key: SigningKey) -> bytes:
    """The MANIFEST.json.sig content: a signature of the exact MANIFEST.json bytes.

    Args:
        manifest_bytes: the MANIFEST.json bytes as uploaded.
        key: the signing key.
    """
    document = SignatureFile(
        algorithm=signature_algorithm(key),
        signed_file=layout.MANIFEST_NAME,
        public_key_fingerprint=public_key_fingerprint(key),
        public_key=public_key_b64(key),
        signature=sign_detached(manifest_bytes, key),
    )
    return json.dumps(document.model_dump(), indent=2).encode() + b"\n"


def model_fingerprint(
    key: str, weight_digests: Mapping[str, str], inputs: Mapping[str, Any]
) -> str:
    """SHA-256 (hex) of what decides one model's adapter: its key, its base model files'
    digests, and the run-wide inputs (dataset digest, hyper-parameters, version, language).

    Equal fingerprints mean a retrained adapter would come from the same inputs, so a
    finished one can be carried over.

    Args:
        key: the model key.
        weight_digests: file name → SHA-256 of the base model's files (hash_model_inputs).
        inputs: the run-wide part (``RunInputs.model_dump()``; its ``models`` list is
            ignored so adding another model to the run does not change this one's print).
    """
    shared = {k: v for k, v in inputs.items() if k != "models"}
    return sha256_bytes(
        canonical_json({"key": key, "weights": dict(sorted(weight_digests.items())), **shared})
    )
