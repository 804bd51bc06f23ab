"""The commit protocol: done markers → run documents → signatures → conditional commit →
materialization → promotion → CURRENT → staging removed.

The run-level JSON files are a pure function of the done markers and :class:`RunInfo` (no
clock, no host lookups). Racing certifiers (two indices of an Indexed Job, a retry racing
the pod it replaced) each stage their files in the run's content-addressed staging area;
the conditional put of MANIFEST.json decides which one commits, and everything after it
is idempotent. See "the commit protocol" below and docs/operations.md for the guarantees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from oneseek_job import faultpoints, layout, oms, provenance
from oneseek_job.digests import sha256_bytes, sha256_file
from oneseek_job.documents import MANIFEST_FORMAT, FileDigest, Manifest, ModelResult, RunInputs
from oneseek_job.errors import InputError, IntegrityError, RunConflictError, StorageError
from oneseek_job.logs import get_logger
from oneseek_job.provenance import SigningKey
from oneseek_job.rundocs import RunInfo, build_manifest, build_run_files, instant, run_status
from oneseek_job.storage import AlreadyExists, Store, upload_files

__all__ = [
    "Certified",
    "certify_run",
    "check_model_inputs",
    "claim_run",
    "commit_manifest",
    "finish_run",
    "input_differences",
    "is_committed",
    "mark_done",
    "missing_models",
    "promote_run",
    "read_current",
    "read_manifest",
    "read_results",
    "run_order",
    "stage_files",
]

log = get_logger(__name__)
# Derives more run files (the HTML report) from the run files and the staged model files.
ExtraFiles = Callable[[Mapping[str, bytes], Mapping[str, str]], Mapping[str, bytes]]


# --------------------------------------------------------------------------------------------
# the commit protocol
#
# Nothing under a run's prefix is written before its MANIFEST.json exists, and nothing there
# is ever replaced afterwards. Until the commit, every byte of the run waits in its staging
# area (outside the prefix), content-addressed (blobs/<sha256>), so two attempts never
# write the same key with different bytes. MANIFEST.json is the only conditional write
# under the prefix: whoever creates it commits, naming by digest exactly the files that
# make the run. After it, "finishing" the run (by anyone, any number of times) creates the
# named files from their blobs (create-only, digest-checked), promotes, sets CURRENT and
# deletes the staging area.


def is_committed(store: Store, run_id: str) -> bool:
    """True once the run's MANIFEST.json exists."""
    return store.head(layout.run_prefix(run_id) + layout.MANIFEST_NAME) is not None


def _read_or_none(store: Store, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except FileNotFoundError:
        return None


def read_manifest(store: Store, run_id: str) -> Manifest | None:
    """The run's MANIFEST.json, or None while it is not committed."""
    data = _read_or_none(store, layout.run_prefix(run_id) + layout.MANIFEST_NAME)
    return None if data is None else Manifest.model_validate_json(data)


def read_current(store: Store) -> str | None:
    """Run id named by ``OneSeek-7B-Zero-CURRENT.txt``, or None if nothing was promoted."""
    data = _read_or_none(store, layout.CURRENT_KEY)
    if data is None:
        return None
    return layout.run_id_from_pointer(data.decode("utf-8", errors="replace"))


# -- run identity


def input_differences(bound: RunInputs, given: RunInputs) -> list[str]:
    """Human-readable ``name: bound → given`` lines for every input that differs."""
    left = _flatten(bound.model_dump(mode="json"))
    right = _flatten(given.model_dump(mode="json"))
    return [
        f"{name}: {_short(left.get(name))} → {_short(right.get(name))}"
        for name in sorted(set(left) | set(right))
        if left.get(name) != right.get(name)
    ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:18] + "…" + text[-18:]


def claim_run(store: Store, run_id: str, inputs: RunInputs) -> Manifest | None:
    """Bind ``run_id`` to ``inputs``, or check that it is bound to them.

    The first process of a run claims it (a conditional put of the staging
    ``identity.json``); every later one compares. A committed run compares against its
    MANIFEST.

    Returns:
        The MANIFEST when the run is already committed (the caller only finishes it), else
        None.

    Raises:
        RunConflictError: the run is bound to other inputs (exit 2, naming each difference).
    """
    manifest = read_manifest(store, run_id)
    if manifest is not None:
        if manifest.inputs is not None:
            _refuse_other_inputs(run_id, manifest.inputs, inputs, "committed")
        return manifest
    data = inputs.model_dump_json(indent=2).encode()
    try:
        store.put_bytes(layout.identity_key(run_id), data, if_none_match=True)
        log.info("run_claimed", tag="config", run_id=run_id)
        faultpoints.reached("claimed")
        return None
    except AlreadyExists:
        pass
    bound = RunInputs.model_validate_json(store.get_bytes(layout.identity_key(run_id)))
    _refuse_other_inputs(run_id, bound, inputs, "started")
    return None


def _refuse_other_inputs(run_id: str, bound: RunInputs, given: RunInputs, state: str) -> None:
    differences = input_differences(bound, given)
    if differences:
        raise RunConflictError(
            f"RUN_ID {run_id} is already {state} with other inputs ("
            + "; ".join(differences[:6])
            + ("; …" if len(differences) > 6 else "")
            + "): use a new RUN_ID, or the run's original settings"
        )


def check_model_inputs(
    run_id: str, manifest: Manifest, key: str, digests: Mapping[str, str]
) -> None:
    """A committed run's record of one base model must equal the files on the volume now.

    Raises:
        RunConflictError: the model's files changed since the run was certified.
    """
    recorded = (manifest.model_inputs or {}).get(key)
    if recorded is None or dict(recorded) == dict(digests):
        return
    changed = sorted(
        name for name in set(recorded) | set(digests) if recorded.get(name) != digests.get(name)
    )
    raise RunConflictError(
        f"RUN_ID {run_id} is committed with other files of base model {key} ("
        + ", ".join(changed[:5])
        + " differ): use a new RUN_ID to train on the current files"
    )


# -- staging


def stage_files(store: Store, run_id: str, local_dir: Path) -> dict[str, FileDigest]:
    """Upload every file under ``local_dir`` into the run's staging, named by content.

    Returns:
        path relative to ``local_dir`` (= relative to the run prefix) → size and SHA-256.
    """
    files = {
        path.relative_to(local_dir).as_posix(): path
        for path in sorted(local_dir.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
    digests = {rel: sha256_file(path) for rel, path in files.items()}
    uploads = {layout.blob_key(run_id, digests[rel]): path for rel, path in files.items()}
    try:
        uploaded = {
            info.key: info
            for info in upload_files(
                store, uploads, on_uploaded=lambda _info: faultpoints.reached("staged")
            )
        }
    except StorageError:
        # A certifier that committed meanwhile removes the staging area under our feet; the
        # files need not go up then, only be compared (mark_done does).
        if not is_committed(store, run_id):
            raise
        log.info("run_committed_meanwhile", tag="upload", run_id=run_id)
        return {
            rel: FileDigest(size=files[rel].stat().st_size, sha256=sha)
            for rel, sha in digests.items()
        }
    staged: dict[str, FileDigest] = {}
    for rel, sha in digests.items():
        info = uploaded[layout.blob_key(run_id, sha)]
        if info.sha256 != sha:
            raise IntegrityError(f"{files[rel]} changed while it was being uploaded; re-run")
        staged[rel] = FileDigest(size=info.size, sha256=sha)
    return staged


def _stage_bytes(store: Store, run_id: str, data: bytes) -> FileDigest:
    sha = sha256_bytes(data)
    store.put_bytes(layout.blob_key(run_id, sha), data)
    faultpoints.reached("staged")
    return FileDigest(size=len(data), sha256=sha)


def mark_done(store: Store, result: ModelResult, run_id: str) -> bool:
    """Record one finished model (a conditional put: the first attempt's files win).

    Returns:
        True if this marker was written; False if an earlier attempt's marker lists exactly
        the same files (same bytes: nothing is lost).

    Raises:
        RunConflictError: an earlier attempt finished this model with other bytes (exit 2).
    """
    key = layout.done_marker_key(run_id, result.key)
    written = True
    try:
        store.put_bytes(key, result.model_dump_json(indent=2).encode(), if_none_match=True)
        faultpoints.reached("done")
    except AlreadyExists:
        written = False
    if not written:
        earlier = ModelResult.model_validate_json(store.get_bytes(key)).files
    else:
        # The run may have been committed (and its staging removed) while this model
        # trained: then the committed MANIFEST is what our bytes must equal.
        manifest = read_manifest(store, run_id)
        if manifest is None or manifest.format != MANIFEST_FORMAT:
            return True
        earlier = {
            f.path: FileDigest(size=f.size, sha256=f.sha256)
            for f in manifest.files
            if f.path in result.files
        }
    # Only the trained bytes count: the telemetry published with a model (metrics/
    # history, TensorBoard events) records one attempt's timings and differs between any
    # two attempts; the first marker's copy is the one published.
    changed = sorted(
        path
        for path in set(earlier) | set(result.files)
        if _is_trained(path) and earlier.get(path) != result.files.get(path)
    )
    if not changed:
        log.info("model_done_identical", tag="upload", model=result.key, run_id=run_id)
        return written
    if is_committed(store, run_id):
        # Our blobs (and, if written, our marker) landed in a committed run's staging area,
        # which its certifier may already have removed: finishing the run removes them.
        finish_run(store, run_id)
    raise RunConflictError(
        f"model {result.key} of run {run_id} was already finished by another attempt with "
        f"other bytes ({', '.join(changed[:3])}{', …' if len(changed) > 3 else ''}); the "
        "first one is kept: use a new RUN_ID to publish this training"
    )


def missing_models(store: Store, run_id: str, keys: list[str]) -> list[str]:
    """The keys among ``keys`` without a done marker in the run."""
    return [k for k in keys if store.head(layout.done_marker_key(run_id, k)) is None]


def read_results(store: Store, run_id: str) -> list[ModelResult]:
    """Every done marker of the run.

    Raises:
        InputError: a marker is not a ModelResult, or names another model than its file
            (a crafted or damaged marker: retrying cannot repair it).
    """
    from pydantic import ValidationError

    prefix = layout.done_marker_key(run_id, "x").rsplit("/", 1)[0] + "/"
    results: list[ModelResult] = []
    for info in store.list(prefix):
        if not info.key.endswith(".json"):
            continue
        try:
            result = ModelResult.model_validate_json(store.get_bytes(info.key))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "document"
            raise InputError(
                f"done marker {info.key} is not a model result ({where}: {first['msg']}); "
                "delete it and re-run that model with the same RUN_ID"
            ) from None
        if f"{result.key}.json" != info.key.rsplit("/", 1)[-1]:
            raise InputError(
                f"done marker {info.key} names model {result.key[:80]!r}; delete it and "
                "re-run that model with the same RUN_ID"
            )
        results.append(result)
    return results


# -- certify


@dataclass(frozen=True)
class Certified:
    """What :func:`certify_run` did."""

    run_id: str
    uri: str  # where the run lives
    models: list[str]
    not_certified: list[str]
    signed: bool
    already: bool  # the run was committed before this call (only finishing was left)
    dna: str = ""  # empty when ``already``
    status: str = ""


def _dataset_tokens(results: list[ModelResult]) -> list[str]:
    names = [Path(name).stem for name in results[0].dataset_files]
    return names[:3]


def certify_run(
    store: Store,
    run_id: str,
    *,
    version: str,
    language: str,
    allow_regression: bool,
    image_digest: str | None,
    signing_key_file: Path | None,
    expected: list[str] | None,
    extra_files: ExtraFiles | None = None,
) -> Certified:
    """Certify a run whose models are all done: documents, signatures, commit, finish.

    Idempotent; a committed run is only finished (materialized, promoted, CURRENT, staging
    removed). Racing certifiers each stage their own documents; the one whose MANIFEST.json
    lands first commits, and the others finish the winner's run.

    Args:
        store: the artifact store.
        run_id: the run.
        version, language: must equal the run's inputs (they are part of its identity).
        allow_regression, image_digest: recorded in the documents.
        signing_key_file: signs ledger, MANIFEST and OMS signatures; None: unsigned.
        expected: model keys that must have done markers (None: whatever is there).
        extra_files: derives more run files (the HTML report) from the run-level files and
            the staged model files (run-relative path → store key of its bytes); they are
            certified like the others. Must be a pure function of its input and the store.

    Raises:
        InputError: no finished models, or some expected ones are missing.
        RunConflictError: version/language differ from the run's inputs, or another
            certifier committed other content first (the run is still finished).
    """
    prefix = layout.run_prefix(run_id)
    uri = f"{store.uri.rstrip('/')}/{prefix}"
    signing_key = provenance.load_private_key(signing_key_file) if signing_key_file else None
    if is_committed(store, run_id):
        return _finished_by_other(store, run_id, uri, signing_key)
    results = read_results(store, run_id)
    if not results:
        if is_committed(store, run_id):  # another certifier committed and cleaned up meanwhile
            return _finished_by_other(store, run_id, uri, signing_key)
        raise InputError(
            f"run {run_id} has no finished models under {store.uri}; nothing to certify"
        )
    if expected is not None:
        missing = sorted(set(expected) - {r.key for r in results})
        if missing:
            raise InputError(f"run {run_id} is missing models {', '.join(missing)}")
    results.sort(key=lambda r: (r.position, r.key))
    identity = _read_or_none(store, layout.identity_key(run_id))
    inputs = RunInputs.model_validate_json(identity) if identity else None
    if inputs is not None:
        asked = {"version": version, "language": language}
        bound = {"version": inputs.version, "language": inputs.language}
        if asked != bound:
            raise RunConflictError(
                f"run {run_id} was started with MODEL_VERSION={inputs.version} and "
                f"ONESEEK_LANGUAGE={inputs.language}; certify it with those (got "
                f"{version}/{language})"
            )
    info = RunInfo(
        run_id=run_id,
        version=version,
        language=language,
        dataset_name_tokens=_dataset_tokens(results),
        dataset_sha256=results[0].dataset_sha256,
        total_epochs=max(r.epochs for r in results),
        allow_regression=allow_regression,
        image_digest=image_digest,
        hyperparameters=results[0].hyperparameters,
    )
    try:
        manifest, dna = _stage_run(
            store, run_id, results, info, inputs, signing_key, signing_key_file, extra_files
        )
    except (InputError, StorageError):
        # A certifier that committed meanwhile removes the staging area under our feet.
        if is_committed(store, run_id):
            return _finished_by_other(store, run_id, uri, signing_key)
        raise
    won = commit_manifest(store, run_id, manifest)
    finish_run(store, run_id)
    if not won:
        winner = read_manifest(store, run_id)
        differences = _content_differences(winner, Manifest.model_validate_json(manifest))
        if differences:
            raise RunConflictError(
                f"run {run_id} was certified first by another certifier with other content "
                f"({'; '.join(differences)}); it is kept and finished, this one is dropped"
            )
    certified = Certified(
        run_id=run_id,
        uri=uri,
        models=[r.key for r in results],
        not_certified=[r.key for r in results if not r.certified],
        signed=signing_key is not None,
        already=not won,
        dna=dna,
        status=run_status(results)[0],
    )
    log.info(
        "certified",
        tag="certified",
        run_id=run_id,
        models=certified.models,
        signed=certified.signed,
        not_certified=certified.not_certified,
        won=won,
        uri=uri,
    )
    return certified


def _stage_run(
    store: Store,
    run_id: str,
    results: list[ModelResult],
    info: RunInfo,
    inputs: RunInputs | None,
    signing_key: SigningKey | None,
    signing_key_file: Path | None,
    extra_files: ExtraFiles | None,
) -> tuple[bytes, str]:
    """Stage the run documents and signatures; return the MANIFEST.json to commit and the
    run's DNA."""
    files: dict[str, FileDigest] = {p: d for r in results for p, d in r.files.items()}
    run_files = build_run_files(results, info, signing_key=signing_key)
    if extra_files is not None:
        staged = {path: layout.blob_key(run_id, d.sha256) for path, d in files.items()}
        run_files = build_run_files(
            results, info, signing_key=signing_key, extra_files=extra_files(run_files, staged)
        )
    for name, data in run_files.items():
        files[name] = _stage_bytes(store, run_id, data)
    if signing_key_file is not None and isinstance(signing_key, ec.EllipticCurvePrivateKey):
        for name, data in _oms_signatures(files, [r.key for r in results], signing_key_file):
            files[name] = _stage_bytes(store, run_id, data)
    elif signing_key is not None:
        log.warning(
            "oms_not_signed",
            tag="certified",
            reason="ed25519 key: OpenSSF model signing needs an ECDSA key (oneseek-job keygen)",
        )
    missing_blobs = [
        path for path, d in files.items() if store.head(layout.blob_key(run_id, d.sha256)) is None
    ]
    if missing_blobs:
        raise InputError(
            f"run {run_id}: staged files are missing ({', '.join(missing_blobs[:3])}); "
            "retrain those models (delete their done markers) or use a new RUN_ID"
        )
    manifest = build_manifest(
        run_id,
        files,
        signing_key=signing_key,
        started_at=min((r.started_at for r in results), key=instant),
        inputs=inputs,
        model_inputs={r.key: r.base_model_digests for r in results},
        carried_over={r.key: r.carried_from for r in results if r.carried_from is not None},
    )
    if signing_key is not None:
        store.put_bytes(
            layout.staged_signature_key(run_id, sha256_bytes(manifest)),
            provenance.sign(manifest, signing_key),
        )
        faultpoints.reached("staged")
    return manifest, json.loads(run_files[layout.DNA_NAME])["dna"]


def _finished_by_other(
    store: Store, run_id: str, uri: str, signing_key: SigningKey | None
) -> Certified:
    """The run is committed (by someone else): finish it; refuse if we would sign otherwise."""
    log.info("already_certified", tag="certified", run_id=run_id)
    finish_run(store, run_id)
    committed = read_manifest(store, run_id)
    assert committed is not None  # finish_run raised otherwise
    ours = provenance.public_key_fingerprint(signing_key) if signing_key else None
    if committed.format == MANIFEST_FORMAT and committed.signer_fingerprint != ours:
        raise RunConflictError(
            f"run {run_id} is already certified by signer "
            f"{str(committed.signer_fingerprint)[:12]}…, not by this key; it is kept"
        )
    return Certified(run_id, uri, [], [], committed.signed, already=True)


def _oms_signatures(
    files: Mapping[str, FileDigest], keys: list[str], key_file: Path
) -> list[tuple[str, bytes]]:
    """OMS signatures of every adapter directory, then of the run directory (which covers
    the adapter signatures too); each signature file lives in the directory it signs."""
    signatures: list[tuple[str, bytes]] = []
    for key in keys:
        directory = f"lora_adapters/{layout.adapter_dir_name(key)}/"
        inside = {
            path.removeprefix(directory): d.sha256
            for path, d in files.items()
            if path.startswith(directory)
        }
        data = oms.sign_files(
            inside,
            name=layout.adapter_dir_name(key),
            key_path=key_file,
            ignore=[layout.OMS_SIGNATURE_NAME],
        )
        signatures.append((directory + layout.OMS_SIGNATURE_NAME, data))
    run_files = {path: d.sha256 for path, d in files.items()}
    run_files.update({path: sha256_bytes(data) for path, data in signatures})
    run_signature = oms.sign_files(
        run_files,
        name=layout.MODEL_NAME,
        key_path=key_file,
        ignore=[layout.OMS_SIGNATURE_NAME, layout.MANIFEST_NAME, layout.SIGNATURE_NAME],
    )
    return [*signatures, (layout.OMS_SIGNATURE_NAME, run_signature)]


def _content_differences(winner: Manifest | None, ours: Manifest) -> list[str]:
    """What makes two MANIFESTs of one run differ, beyond signature bytes.

    Signatures (MANIFEST's and OMS) differ between any two certifiers; what counts is the
    trained files, the inputs and the signer.
    """
    if winner is None:
        return ["the committed MANIFEST.json could not be read"]
    problems: list[str] = []
    if winner.signer_fingerprint != ours.signer_fingerprint:
        problems.append(
            f"signer {str(winner.signer_fingerprint)[:12]}… vs {str(ours.signer_fingerprint)[:12]}…"
        )
    if winner.inputs != ours.inputs or winner.model_inputs != ours.model_inputs:
        problems.append("inputs differ")

    def trained(m: Manifest) -> dict[str, str]:
        return {f.path: f.sha256 for f in m.files if _is_trained(f.path)}

    ours_trained, theirs = trained(ours), trained(winner)
    changed = sorted(
        p for p in set(ours_trained) | set(theirs) if ours_trained.get(p) != theirs.get(p)
    )
    if changed:
        problems.append(f"files {', '.join(changed[:3])} differ")
    return problems


def _is_trained(path: str) -> bool:
    """Whether a run-relative path is trained content (adapter, weights), not telemetry or
    a signature: what two attempts or certifiers of one run must agree on."""
    return path.startswith(("lora_adapters/", "weights/")) and not path.endswith(
        layout.OMS_SIGNATURE_NAME
    )


def commit_manifest(store: Store, run_id: str, manifest: bytes) -> bool:
    """Create MANIFEST.json with a conditional put: the commit point of the run.

    Returns:
        True if this call committed the run, False if a MANIFEST was already there (nothing
        is overwritten; the caller compares and finishes the winner's run).
    """
    key = layout.run_prefix(run_id) + layout.MANIFEST_NAME
    try:
        store.put_bytes(key, manifest, if_none_match=True)
    except AlreadyExists:
        log.info("commit_lost", tag="certified", run_id=run_id)
        return False
    log.info("committed", tag="certified", run_id=run_id, manifest=key)
    faultpoints.reached("committed")
    return True


# -- finishing a committed run


def finish_run(store: Store, run_id: str) -> None:
    """Bring a committed run to its final state; safe to call any number of times, by anyone.

    1. materialize: create each file MANIFEST names from its staged blob (create-only; a
       file already there must have the named digest, else nothing is touched and the
       run is reported), then MANIFEST.json.sig;
    2. promote to the latest paths and set CURRENT, unless CURRENT names a newer run;
    3. delete the run's staging area and abort unfinished multipart uploads.

    Raises:
        InputError: the run has no MANIFEST.json (uncommitted runs are never finished).
        IntegrityError: a file under the run prefix is not what MANIFEST names.
        StorageError: a staged blob is gone before its file was created (the run cannot be
            completed from this store).
    """
    manifest_bytes = _read_or_none(store, layout.run_prefix(run_id) + layout.MANIFEST_NAME)
    if manifest_bytes is None:
        raise InputError(
            f"run {run_id} has no {layout.MANIFEST_NAME} in {store.uri}; not finishing it"
        )
    manifest = Manifest.model_validate_json(manifest_bytes)
    if manifest.format != MANIFEST_FORMAT:  # runs of the pre-staging protocol: files in place
        promote_run(store, run_id)
        return
    _materialize(store, run_id, manifest, sha256_bytes(manifest_bytes))
    promote_run(store, run_id)
    _remove_staging(store, run_id)


def _materialize(store: Store, run_id: str, manifest: Manifest, manifest_sha256: str) -> None:
    prefix = layout.run_prefix(run_id)
    created = 0
    for entry in manifest.files:
        target = prefix + entry.path
        existing = store.head(target)
        if existing is None:
            try:
                store.copy(layout.blob_key(run_id, entry.sha256), target, if_none_match=True)
                created += 1
                faultpoints.reached("materialized")
            except AlreadyExists:
                pass  # another finisher created it a moment ago: checked below
            except (FileNotFoundError, StorageError) as error:
                # Another finisher may have created the file and removed the staging area
                # between our check and our copy; only a still-missing file is a failure.
                if store.head(target) is None:
                    raise StorageError(
                        f"run {run_id}: the staged copy of {entry.path} is gone before the "
                        f"file was created ({error}); the run cannot be completed from here"
                    ) from None
            existing = store.head(target)
        if existing is None or existing.sha256 != entry.sha256 or existing.size != entry.size:
            raise IntegrityError(
                f"run {run_id}: {entry.path} is not the file MANIFEST.json names; it is left "
                "alone (run `oneseek-job verify` to see what changed)"
            )
    if manifest.signed and store.head(prefix + layout.SIGNATURE_NAME) is None:
        staged = layout.staged_signature_key(run_id, manifest_sha256)
        try:
            store.copy(staged, prefix + layout.SIGNATURE_NAME, if_none_match=True)
            faultpoints.reached("materialized")
        except AlreadyExists:
            pass
        except FileNotFoundError:
            raise StorageError(
                f"run {run_id}: the staged MANIFEST.json.sig is gone; the run stays unsigned"
            ) from None
    log.info("materialized", tag="certified", run_id=run_id, created=created)


def _remove_staging(store: Store, run_id: str) -> None:
    staging = layout.staging_prefix(run_id)
    removed = 0
    for info in list(store.list(staging)):
        store.delete(info.key)
        removed += 1
        faultpoints.reached("unstaged")
    aborted = store.cleanup(staging) + store.cleanup(layout.run_prefix(run_id))
    log.info("staging_removed", tag="certified", run_id=run_id, objects=removed, aborted=aborted)


def _ordering_key(store: Store, run_id: str) -> tuple[str, str]:
    return run_order(run_id, read_manifest(store, run_id))


def run_order(run_id: str, manifest: Manifest | None) -> tuple[str, str]:
    """(start time, run id) of a committed run: CURRENT only ever moves to a larger key, and
    carry-over takes a model from the largest matching run.

    v2 manifests record ``started_at`` (the earliest model start); older runs fall back to
    the UTC time in a default ``run-YYYYMMDD-HHMMSS`` id, else sort first.
    """
    if manifest is not None and manifest.started_at:
        return (datetime.fromisoformat(manifest.started_at).astimezone(UTC).isoformat(), run_id)
    match = re.fullmatch(r"run-(\d{8})-(\d{6})", run_id)
    if match is None:
        return ("", run_id)
    stamp = datetime.strptime(match[1] + match[2], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return (stamp.isoformat(), run_id)


def promote_run(store: Store, run_id: str) -> None:
    """Copy a committed run's adapters and weights to the latest paths, then write CURRENT.

    Ordering rule: CURRENT names the committed run with the greatest (start time, run id);
    a run whose key is smaller than the run CURRENT names is not promoted (it stays
    certified and verifiable under its own prefix). Files at the latest paths that the
    promoted run does not have are deleted before CURRENT moves, so no file of an earlier
    run is left there. Server-side copies; objects already equal are skipped, so an
    interrupted promotion is finished by calling it again.

    Raises:
        InputError: the run has no MANIFEST.json (uncommitted runs are never promoted).
    """
    if not is_committed(store, run_id):
        raise InputError(
            f"run {run_id} has no {layout.MANIFEST_NAME} in {store.uri}; not promoting"
        )
    current = read_current(store)
    newer = (
        current not in (None, run_id)
        and is_committed(store, str(current))
        and _ordering_key(store, str(current)) > _ordering_key(store, run_id)
    )
    if newer:
        log.info("promotion_skipped", tag="certified", run_id=run_id, current=current)
        return
    prefix = layout.run_prefix(run_id)
    wanted: set[str] = set()
    for sub in ("lora_adapters/", "weights/"):
        for info in store.list(prefix + sub):
            rel = info.key.removeprefix(prefix)
            store.copy(info.key, f"{layout.LATEST_DIR}/{rel}")
            wanted.add(f"{layout.LATEST_DIR}/{rel}")
            faultpoints.reached("promoted")
    stale = [
        info.key
        for sub in ("lora_adapters/", "weights/")
        for info in store.list(f"{layout.LATEST_DIR}/{sub}")
        if info.key not in wanted
    ]
    for key in stale:
        store.delete(key)
        faultpoints.reached("pruned")
    faultpoints.reached("before_current")
    store.put_bytes(layout.CURRENT_KEY, layout.current_pointer(run_id))
    faultpoints.reached("current")
    log.info(
        "promoted", tag="certified", run_id=run_id, objects=len(wanted), stale_removed=len(stale)
    )
