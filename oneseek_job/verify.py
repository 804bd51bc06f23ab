"""``verify``: re-hash a committed run and check manifest, signature, ledger, DNA and in-toto.

Every file is hashed from its content (never store metadata), and only verified bytes feed
the later checks. A forged MANIFEST cannot make verify read outside the run prefix. This
module never imports torch: ``verify`` must start fast and run anywhere. It returns a
:class:`VerifyReport`; printing it is the CLI's job.
"""

from __future__ import annotations

import base64
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_der_public_key
from pydantic import ValidationError

from oneseek_job import layout, oms
from oneseek_job.digests import sha256_bytes, sha256_file
from oneseek_job.documents import (
    INTOTO_PREDICATE_TYPE,
    INTOTO_STATEMENT_TYPE,
    Manifest,
    SignatureFile,
)
from oneseek_job.errors import ConfigError, InputError, IntegrityError
from oneseek_job.provenance import (
    PublicKey,
    canonical_json,
    check_ledger_chain,
    immutable_hash,
    parse_dna,
    public_key_fingerprint,
    public_pem,
    verify_detached,
    weights_digest,
)
from oneseek_job.storage import Store

__all__ = ["SMALL_OBJECT_BYTES", "Check", "VerifyReport", "rehash", "resolve_run_id", "verify_run"]

# Objects up to this size are read into memory to hash; bigger ones are streamed to a temp file.
SMALL_OBJECT_BYTES = 16 * 1024 * 1024


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
    try:
        pointer = store.get_bytes(layout.CURRENT_KEY).decode("utf-8", errors="replace")
    except FileNotFoundError:
        pointer = ""
    target = layout.run_id_from_pointer(pointer)
    if not target:
        raise InputError(f"no committed run in {store.uri} (no CURRENT pointer): pass --run-id")
    return target


# Run files verify reads after hashing: always fetched whole (they are small by construction).
_READ_BACK = (layout.DNA_NAME, layout.RESULTS_NAME, layout.LEDGER_NAME)
_INTOTO_NAME = layout.INTOTO_NAME


def rehash(
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
    public_key: PublicKey | None,
    allow_unsigned: bool = False,
) -> VerifyReport:
    """Re-check a committed run from its content; every failure is its own check.

    Checks: MANIFEST present; every listed file present with its size and SHA-256
    (re-hashed from content, streamed for big files); no unlisted file; signature over
    MANIFEST.json (and the expected signer when ``public_key`` is given); OpenSSF model
    signatures of the run and every adapter directory; ledger chain and signature; DNA
    against the weights and dataset digests; run files agree with each other; in-toto
    subjects equal the manifest. Symlinks are never followed and nothing outside the run
    prefix is read (a LocalStore refuses both).

    Args:
        store: where the run lives.
        run_id: the run.
        public_key: the expected signer; without it a valid signature is accepted from any key.
        allow_unsigned: accept a run without MANIFEST.json.sig.
    """
    report = VerifyReport(run_id)
    prefix = layout.run_prefix(run_id)
    try:
        manifest_bytes = store.get_bytes(prefix + layout.MANIFEST_NAME)
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
    signer = _check_signature(
        store, prefix, manifest, manifest_bytes, public_key, allow_unsigned, report
    )
    _check_oms(contents, manifest, public_key or signer, allow_unsigned, report)
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
    try:
        present = {
            info.key[len(prefix) :]: info
            for info in store.list(prefix)
            if info.key.startswith(prefix)
        }
    except IntegrityError as error:  # e.g. the run directory itself is a symlink
        report.add("files", False, f"cannot list the run: {error}")
        return {}
    contents: dict[str, bytes] = {}
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="oneseek-verify-") as tmp,
        ThreadPoolExecutor(8) as pool,
    ):
        futures = {
            path: pool.submit(
                rehash,
                store,
                prefix + path,
                present[path].size,
                Path(tmp),
                keep=path in (*_READ_BACK, _INTOTO_NAME) or _is_oms(path),
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
            except IntegrityError as error:  # a symlink, or bytes that changed in place
                problems.append(f"{path}: {error}")
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
    unlisted = sorted(p for p in present if layout.is_certified_path(p) and p not in listed)
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
    public_key: PublicKey | None,
    allow_unsigned: bool,
    report: VerifyReport,
) -> bytes | None:
    """Check MANIFEST.json.sig; return the signer's public key (PEM) when it holds."""
    try:
        raw = store.get_bytes(prefix + layout.SIGNATURE_NAME)
    except (FileNotFoundError, IntegrityError):
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
        return None
    try:
        signature = SignatureFile.model_validate_json(raw)
    except ValidationError:
        report.add("signature", False, "MANIFEST.json.sig is not a valid signature file")
        return None
    if signature.algorithm != "ed25519" and not signature.algorithm.startswith("ecdsa-"):
        report.add("signature", False, f"unsupported signature algorithm {signature.algorithm}")
        return None
    if manifest.signature_algorithm not in (None, signature.algorithm):
        report.add(
            "signature",
            False,
            f"MANIFEST names {manifest.signature_algorithm} but the signature is "
            f"{signature.algorithm}",
        )
        return None
    if not verify_detached(manifest_bytes, signature.signature, signature.public_key):
        report.add(
            "signature",
            False,
            "signature does not match MANIFEST.json bytes (MANIFEST edited after signing)",
        )
        return None
    try:
        embedded_fp = sha256_bytes(base64.b64decode(signature.public_key, validate=True))
    except ValueError:
        embedded_fp = ""
    if embedded_fp != signature.public_key_fingerprint:
        report.add("signature", False, "MANIFEST.json.sig fingerprint does not match its key")
        return None
    if public_key is not None and embedded_fp != public_key_fingerprint(public_key):
        report.add(
            "signature",
            False,
            f"signature from another key: signed by {embedded_fp[:16]}…, expected "
            f"{public_key_fingerprint(public_key)[:16]}… (--public-key)",
        )
        return None
    if manifest.signer_fingerprint != embedded_fp:
        report.add(
            "signature",
            False,
            f"MANIFEST names signer {str(manifest.signer_fingerprint)[:16]}… but the signature "
            f"is by {embedded_fp[:16]}… (re-signed with another key)",
        )
        return None
    pinned = "matches --public-key" if public_key else "signer not pinned: pass --public-key"
    report.add(
        "signature",
        True,
        f"valid {signature.algorithm} signature by {embedded_fp[:16]}… ({pinned})",
    )
    if signature.algorithm == "ed25519":
        return None  # OMS signatures need an ECDSA key
    return public_pem(load_der_public_key(base64.b64decode(signature.public_key)))  # type: ignore[arg-type]


def _is_oms(path: str) -> bool:
    return path == layout.OMS_SIGNATURE_NAME or (
        path.startswith("lora_adapters/") and path.endswith("/" + layout.OMS_SIGNATURE_NAME)
    )


def _check_oms(
    contents: dict[str, bytes],
    manifest: Manifest,
    public_key: PublicKey | bytes | None,
    allow_unsigned: bool,
    report: VerifyReport,
) -> None:
    """OpenSSF model signatures of the run directory and of every adapter directory.

    Each must be by the signer and list exactly the MANIFEST's files of its directory
    (with their digests), minus the paths it says it ignores.
    """
    if manifest.format == "oneseek-manifest/v1":
        report.add("oms", True, "run certified before OMS signing (v1 MANIFEST): not applicable")
        return
    if not manifest.signed:
        report.add("oms", allow_unsigned, "run is unsigned: no OpenSSF model signatures")
        return
    if manifest.signature_algorithm == "ed25519":
        report.add("oms", True, "signed with a legacy ed25519 key: OMS needs ECDSA (not made)")
        return
    if public_key is None:
        report.add("oms", False, "no trusted public key to check the OMS signatures with")
        return
    pem = public_key if isinstance(public_key, bytes) else public_pem(public_key)
    digests = {f.path: f.sha256 for f in manifest.files}
    adapters = sorted(
        {p.split("/", 2)[1] for p in digests if p.startswith("lora_adapters/") and p.count("/") > 1}
    )
    directories = [""] + [f"lora_adapters/{name}/" for name in adapters]
    problems: list[str] = []
    for directory in directories:
        where = directory or "run directory"
        data = contents.get(directory + layout.OMS_SIGNATURE_NAME)
        if data is None:
            problems.append(f"{where}: OMS signature missing or not verified")
            continue
        try:
            signed, ignored = oms.verify_signature(data, pem)
        except ValueError as error:
            problems.append(f"{where}: OMS signature invalid ({str(error)[:120]})")
            continue
        expected = {
            path.removeprefix(directory): sha
            for path, sha in digests.items()
            if path.startswith(directory) and path.removeprefix(directory) not in ignored
        }
        if signed != expected:
            changed = sorted(
                p for p in set(signed) | set(expected) if signed.get(p) != expected.get(p)
            )
            problems.append(f"{where}: OMS signature does not list {', '.join(changed[:3])}")
    for problem in problems:
        report.add("oms", False, problem)
    if not problems:
        report.add("oms", True, f"{len(directories)} OpenSSF model signatures valid")


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
        path = f"weights/{layout.weights_file_name(version, key)}"
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
    """training_results.json per-model metrics must equal the ledger's per-model events
    (``model_trained``, or ``model_carried_over`` for a model reused from an earlier run)."""
    if results is None:
        return []
    trained = results.get("trained_models")
    if not isinstance(trained, dict):
        return ["training_results.json trained_models is not an object keyed by model"]
    ledger_metrics = {
        e["data"].get("model"): e["data"].get("metrics")
        for e in ledger.get("entries") or []
        if isinstance(e, dict)
        and e.get("event") in ("model_trained", "model_carried_over")
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
    # The statement cannot list itself, nor the OMS signatures made after it (they sign it).
    expected = {
        f.path: f.sha256
        for f in manifest.files
        if f.path != layout.INTOTO_NAME and not _is_oms(f.path)
    }
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
