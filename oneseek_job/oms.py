"""OpenSSF model signing (OMS v1.0) signatures, made and checked with the ``model-signing``
library, so the upstream verifier accepts them::

    model_signing verify key DIR --signature DIR/model.sig --public_key key.pub

An OMS signature is a Sigstore bundle holding a DSSE envelope over an in-toto statement that
lists every file of a directory with its SHA-256. We build that list from digests we
already know (every file was hashed on upload and re-hashed by the server), so signing a
run never downloads it; the upstream verifier re-hashes the files it is given.

``model_signing`` is imported inside the functions: it pulls in sigstore and grpc-era
protobufs, which ``verify --help`` and ``discover`` must not pay for.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from oneseek_job.errors import ConfigError

__all__ = ["sign_files", "verify_signature"]

_HASH = "sha256"


def sign_files(
    files: Mapping[str, str], *, name: str, key_path: Path, ignore: Sequence[str] = ()
) -> bytes:
    """The bytes of an OMS signature (``model.sig``) over ``files``.

    Args:
        files: path relative to the signed directory → SHA-256 (hex) of that file.
        name: the model name recorded in the statement (the directory's name).
        key_path: PEM private key, ECDSA P-256/384/521.
        ignore: paths relative to the directory that the verifier must skip (recorded in
            the signed statement, so nobody can widen them afterwards); the signature
            file itself belongs here when it lives inside the directory.

    Raises:
        ConfigError: the key is not an elliptic-curve key (OMS key signing needs one).
    """
    from model_signing import manifest
    from model_signing._hashing import hashing
    from model_signing._signing import sign_ec_key, signing

    items = [
        manifest.FileManifestItem(
            path=PurePosixPath(path), digest=hashing.Digest(_HASH, bytes.fromhex(sha))
        )
        for path, sha in sorted(files.items())
    ]
    # The serialization the upstream hashing.Config() defaults to: one digest per file.
    serialization = manifest._FileSerialization(_HASH, False, [Path(p) for p in ignore])
    try:
        signer = sign_ec_key.Signer(key_path)
    except ValueError as error:
        raise ConfigError(
            f"signing key {key_path} cannot make OpenSSF model signatures ({error}); "
            "create an ECDSA P-256 key with `oneseek-job keygen`"
        ) from None
    signature = signer.sign(signing.Payload(manifest.Manifest(name, items, serialization)))
    with tempfile.TemporaryDirectory(prefix="oneseek-oms-") as tmp:
        path = Path(tmp) / "model.sig"
        signature.write(path)
        return path.read_bytes()


def verify_signature(signature: bytes, public_key_pem: bytes) -> tuple[dict[str, str], list[str]]:
    """Check an OMS signature with a public key; return what it signs.

    Returns:
        (path → SHA-256 hex of every signed file, the ignore paths it records).

    Raises:
        ValueError: the signature is malformed, by another key, or not a per-file SHA-256
            statement.
    """
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    with tempfile.TemporaryDirectory(prefix="oneseek-oms-") as tmp:
        sig_path, key_path = Path(tmp) / "model.sig", Path(tmp) / "key.pub"
        sig_path.write_bytes(signature)
        key_path.write_bytes(public_key_pem)
        try:
            bundle = sign_sigstore_pb.Signature.read(sig_path)
            expected = sign_ec_key.Verifier(key_path).verify(bundle)
        except ValueError:
            raise
        except Exception as error:  # the library raises assorted types for bad input
            raise ValueError(f"{type(error).__name__}: {error}") from None
    params = expected.serialization_type
    if params.get("method") != "files" or params.get("hash_type") != _HASH:
        raise ValueError(f"OMS signature uses {params}, not per-file {_HASH}")
    digests = {
        str(descriptor.identifier): descriptor.digest.digest_value.hex()
        for descriptor in expected.resource_descriptors()
    }
    return digests, [str(p) for p in params.get("ignore_paths", [])]
