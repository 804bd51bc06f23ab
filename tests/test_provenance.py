"""Provenance: a clean run verifies, and every tamper is caught by its own check and message."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from oneseek_job import documents, layout, provenance, rundocs, verify
from oneseek_job.digests import sha256_file
from oneseek_job.errors import ConfigError, InputError, JobError
from oneseek_job.storage import LocalStore, S3Store
from tests.fake_run import KB, QWEN, RUN_ID, VERSION, FakeRun, failures, make_run

# SeaweedFS fixtures (session server, shared bucket): imported so pytest registers them here.
from tests.fixtures_s3 import fresh_bucket, make_s3_store, seaweed  # noqa: F401
from tests.servers import SeaweedServer

ADAPTER = f"lora_adapters/{layout.adapter_dir_name(KB.key)}/adapter_model.safetensors"
PTH = f"weights/{layout.weights_file_name(VERSION, KB.key)}"


@pytest.fixture
def run(tmp_path: Path) -> FakeRun:
    return make_run(tmp_path / "artifacts")


def only_failing(report: verify.VerifyReport) -> set[str]:
    return {name for name, _ in failures(report)}


def details(report: verify.VerifyReport, name: str) -> str:
    return "\n".join(detail for check, detail in failures(report) if check == name)


# ----------------------------------------------------------------------------- clean run


def test_clean_run_verifies(run: FakeRun) -> None:
    report = run.verify()
    assert report.ok, failures(report)
    names = {c.name for c in report.checks}
    assert {"manifest", "files", "unlisted", "signature", "ledger", "dna", "in-toto"} <= names


def test_manifest_lists_every_certified_file_and_nothing_else(run: FakeRun) -> None:
    manifest = json.loads(run.path(layout.MANIFEST_NAME).read_bytes())
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {
        p.relative_to(run.store.root / run.prefix).as_posix()
        for p in (run.store.root / run.prefix).rglob("*")
        if p.is_file()
    }
    expected = {
        p
        for p in on_disk
        if not p.startswith(".") and p not in (layout.MANIFEST_NAME, layout.SIGNATURE_NAME)
    }
    assert listed == expected
    assert not any(p.startswith(".") for p in on_disk)  # scratch state lives in staging
    assert not list(run.store.list(layout.staging_prefix(RUN_ID)))  # and is gone once finished
    for entry in manifest["files"]:
        data = run.path(entry["path"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    # The manifest is canonical JSON, so the signature covers one exact byte form.
    raw = run.path(layout.MANIFEST_NAME).read_bytes()
    assert raw == provenance.canonical_json(json.loads(raw))
    assert manifest["signed"] is True
    assert manifest["signer_fingerprint"] == provenance.public_key_fingerprint(run.key)


def test_resolve_run_id_uses_current_pointer(run: FakeRun) -> None:
    assert verify.resolve_run_id(run.store, None, True) == RUN_ID
    assert verify.resolve_run_id(run.store, "run-x", False) == "run-x"
    with pytest.raises(ConfigError):
        verify.resolve_run_id(run.store, "run-x", True)


def test_resolve_run_id_without_current_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--run-id"):
        verify.resolve_run_id(LocalStore(tmp_path), None, True)


def test_missing_manifest_is_reported(tmp_path: Path) -> None:
    report = verify.verify_run(LocalStore(tmp_path), "run-nope", public_key=None)
    assert not report.ok
    assert "MANIFEST.json missing" in details(report, "manifest")


# ----------------------------------------------------------------------------- tampers


def test_flipped_byte_in_adapter(run: FakeRun) -> None:
    path = run.path(ADAPTER)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    report = run.verify()
    assert only_failing(report) == {"files"}
    assert details(report, "files") == (
        f"{ADAPTER}: sha256 differs from MANIFEST (content changed)"
    )


def test_big_files_are_streamed_and_still_checked(
    run: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "SMALL_OBJECT_BYTES", 1024)  # adapters take the stream path
    assert run.verify().ok
    path = run.path(ADAPTER)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    assert f"{ADAPTER}: sha256 differs" in details(run.verify(), "files")


def test_manifest_path_outside_the_run_is_refused(run: FakeRun) -> None:
    manifest = json.loads(run.path(layout.MANIFEST_NAME).read_bytes())
    manifest["files"].append({"path": "../../CURRENT", "size": 1, "sha256": "0" * 64})
    run.path(layout.MANIFEST_NAME).write_bytes(provenance.canonical_json(manifest))
    report = run.verify()
    assert "'../../CURRENT': MANIFEST lists a path outside the run" in details(report, "files")
    assert "signature" in only_failing(report)


def test_edited_training_results_value(run: FakeRun) -> None:
    document = run.read_json("training_results.json")
    trained = document["trained_models"]
    assert isinstance(trained, dict)
    trained[QWEN.key]["final_val_loss"] = 1.0  # make the regressed model look good
    run.write_json("training_results.json", document)
    report = run.verify()
    assert "training_results.json" in details(report, "files")
    assert "content changed" in details(report, "files")

    # Even an insider who re-hashes and re-signs the manifest is caught: the signed,
    # hash-chained ledger still holds the real metric.
    run.recommit(run.key)
    report = run.verify()
    # ...and the ledger's certified entry and the in-toto statement hold its original digest.
    # The OMS run signature lists every file's digest too.
    assert only_failing(report) == {"dna", "in-toto", "ledger", "oms"}
    assert (
        "training_results.json: sha256 differs from the ledger's certified entry (file replaced)"
        in details(report, "ledger")
    )
    assert (
        f"training_results.json {QWEN.key}.final_val_loss=1.0 but the ledger recorded "
        f"{QWEN.final_val_loss!r} (value edited)"
    ) in details(report, "dna")


def _ledger_with(run: FakeRun, entries: list[object]) -> None:
    document = run.read_json("ledger_proof.json")
    document["entries"] = entries
    run.write_json("ledger_proof.json", document)
    run.recommit(run.key)  # isolate the ledger check: manifest and signature stay valid


def test_removed_ledger_entry(run: FakeRun) -> None:
    entries = run.read_json("ledger_proof.json")["entries"]
    assert isinstance(entries, list) and len(entries) == 6
    assert entries[2]["event"] == "model_trained"
    _ledger_with(run, entries[:2] + entries[3:])
    report = run.verify()
    assert only_failing(report) == {"ledger", "in-toto", "dna", "oms"}  # dna: model set differs
    ledger = details(report, "ledger")
    assert "ledger entry 2 missing or renumbered: found index 3" in ledger
    assert "ledger entry 2: prev_hash does not match entry 1" in ledger
    assert "ledger signature does not match its content" in ledger


def test_reordered_ledger_entries(run: FakeRun) -> None:
    entries = run.read_json("ledger_proof.json")["entries"]
    assert isinstance(entries, list)
    entries[2], entries[3] = entries[3], entries[2]
    _ledger_with(run, entries)
    ledger = details(run.verify(), "ledger")
    assert "ledger entries reordered: positions [2, 3] hold indices [3, 2]" in ledger
    assert "prev_hash does not match" in ledger


def test_edited_last_ledger_entry_breaks_head_hash(run: FakeRun) -> None:
    entries = run.read_json("ledger_proof.json")["entries"]
    assert isinstance(entries, list)
    entries[-1]["data"]["status"] = "certified"
    _ledger_with(run, entries)
    ledger = details(run.verify(), "ledger")
    assert "ledger head_hash does not match the last entry 5" in ledger


def test_manifest_rehashed_without_resigning(run: FakeRun) -> None:
    path = run.path(ADAPTER)
    forged = os.urandom(path.stat().st_size)
    path.write_bytes(forged)
    manifest = json.loads(run.path(layout.MANIFEST_NAME).read_bytes())
    for entry in manifest["files"]:
        if entry["path"] == ADAPTER:
            entry["sha256"] = hashlib.sha256(forged).hexdigest()
    run.path(layout.MANIFEST_NAME).write_bytes(provenance.canonical_json(manifest))
    report = run.verify()
    assert "signature" in only_failing(report)
    assert details(report, "signature") == (
        "signature does not match MANIFEST.json bytes (MANIFEST edited after signing)"
    )
    assert "files" not in only_failing(report)  # hashes were forged consistently


def test_signature_from_another_key(run: FakeRun) -> None:
    manifest = run.path(layout.MANIFEST_NAME).read_bytes()
    other = ec.generate_private_key(ec.SECP256R1())
    run.path(layout.SIGNATURE_NAME).write_bytes(provenance.sign(manifest, other))
    report = run.verify()
    assert only_failing(report) == {"signature"}  # the OMS signatures are still the owner's
    assert details(report, "signature").startswith("signature from another key: signed by ")

    # Without --public-key the forger is still caught: MANIFEST names the real signer.
    report = run.verify(public_key=None)
    assert "re-signed with another key" in details(report, "signature")


def test_insider_resigning_everything_with_own_key_fails_pinned_key(run: FakeRun) -> None:
    assert run.key is not None
    real_public = run.key.public_key()
    run.recommit(ec.generate_private_key(ec.SECP256R1()))
    report = run.verify(public_key=real_public)
    assert "signature from another key" in details(report, "signature")


def test_file_added_after_commit(run: FakeRun) -> None:
    extra = f"lora_adapters/{layout.adapter_dir_name(KB.key)}/extra.safetensors"
    run.store.put_bytes(run.prefix + extra, b"not certified")
    report = run.verify()
    assert only_failing(report) == {"unlisted"}
    assert (
        details(report, "unlisted") == f"{extra}: present but not in MANIFEST (added after commit)"
    )


def test_file_deleted(run: FakeRun) -> None:
    run.path(PTH).unlink()
    report = run.verify()
    assert "files" in only_failing(report)
    assert f"{PTH}: listed in MANIFEST but missing (deleted)" in details(report, "files")


def test_weights_swapped_by_insider_break_dna(run: FakeRun) -> None:
    run.path(PTH).write_bytes(os.urandom(2048))
    run.recommit(run.key)
    report = run.verify()
    assert only_failing(report) == {"dna", "in-toto", "oms"}
    assert "does not match the .pth files in MANIFEST" in details(report, "dna")
    assert f"in-toto subject {PTH}: sha256 differs from MANIFEST" in details(report, "in-toto")


def test_intoto_subject_edited_by_insider(run: FakeRun) -> None:
    statement = run.read_json("provenance.intoto.json")
    subjects = statement["subject"]
    assert isinstance(subjects, list)
    subjects.pop()
    run.write_json("provenance.intoto.json", statement)
    run.recommit(run.key)
    report = run.verify()
    assert only_failing(report) == {"in-toto", "oms"}
    assert "in-toto subject missing for " in details(report, "in-toto")


def test_deleted_signature_of_signed_run(run: FakeRun) -> None:
    run.path(layout.SIGNATURE_NAME).unlink()
    report = run.verify(allow_unsigned=True)  # a downgrade is not "unsigned"
    assert "MANIFEST.json.sig missing but MANIFEST says the run is signed" in details(
        report, "signature"
    )


def test_unsigned_run_fails_unless_allowed(tmp_path: Path) -> None:
    run = make_run(tmp_path / "artifacts", signed=False)
    assert not run.path(layout.SIGNATURE_NAME).exists()
    assert json.loads(run.path(layout.MANIFEST_NAME).read_bytes())["signed"] is False
    report = run.verify(public_key=None)
    assert only_failing(report) == {"signature", "oms"}
    assert "run is unsigned" in details(report, "signature")
    assert run.verify(public_key=None, allow_unsigned=True).ok


# ----------------------------------------------------------------------------- determinism


def test_run_documents_are_a_function_of_the_markers(run: FakeRun) -> None:
    first = rundocs.build_run_files(run.results, run.info, signing_key=run.key)
    second = rundocs.build_run_files(list(reversed(run.results)), run.info, signing_key=run.key)
    assert first == second  # deterministic ECDSA: same key, same bytes
    for name, data in first.items():  # and equal to what was committed
        assert run.path(name).read_bytes() == data
    manifest = run.path(layout.MANIFEST_NAME).read_bytes()
    assert run.key is not None
    assert provenance.sign(manifest, run.key) == run.path(layout.SIGNATURE_NAME).read_bytes()


def test_build_manifest_skips_scratch_paths_and_refuses_empty() -> None:
    digest = documents.FileDigest(size=1, sha256="0" * 64)
    manifest = json.loads(
        rundocs.build_manifest(
            "run-x", {"a.json": digest, ".done/k.json": digest}, signing_key=None
        )
    )
    assert [f["path"] for f in manifest["files"]] == ["a.json"]
    with pytest.raises(InputError):
        rundocs.build_manifest("run-x", {".live/x.json": digest}, signing_key=None)


# ----------------------------------------------------------------------------- DNA


def test_dna_is_computed_from_content(run: FakeRun) -> None:
    dna = run.read_json("oneseek_dna.json")
    pth = {
        model.key: hashlib.sha256(
            run.path(f"weights/{layout.weights_file_name(VERSION, model.key)}").read_bytes()
        ).hexdigest()
        for model in (KB, QWEN)
    }
    lines = "".join(f"{k}\0{pth[k]}\n" for k in sorted(pth)).encode()
    weights = hashlib.sha256(lines).hexdigest()
    assert dna["weights_sha256"] == weights
    assert dna["dataset_sha256"] == run.dataset_sha256
    assert dna["dna"] == f"OneSeek-7B-Zero.v1.0.sv.ds1.{run.dataset_sha256[:8]}.{weights[:8]}"
    parts = provenance.parse_dna(str(dna["dna"]))
    assert parts is not None
    assert (parts.version, parts.language, parts.n_datasets) == ("1.0", "sv", 1)


def test_parse_dna_rejects_malformed() -> None:
    assert provenance.parse_dna("OneSeek-7B-Zero.v1.0.sv.dsDefault.abcd.1234") is None
    assert provenance.parse_dna("Other.v1.0.sv.ds1.0123abcd.0123abcd") is None


def test_weights_digest_order_independent_and_content_bound() -> None:
    a = provenance.weights_digest({"b": "1" * 64, "a": "2" * 64})
    assert a == provenance.weights_digest({"a": "2" * 64, "b": "1" * 64})
    assert a != provenance.weights_digest({"a": "1" * 64, "b": "2" * 64})


# ----------------------------------------------------------------------------- ledger unit


def test_chain_entries_link_by_canonical_hash() -> None:
    entries = provenance.chain_entries(
        [("a", "t0", {"x": 1}), ("b", "t1", {"ö": [1.5, None]}), ("c", "t2", {})]
    )
    assert entries[0].prev_hash == provenance.GENESIS_HASH
    for prev, entry in itertools.pairwise(entries):
        canonical = json.dumps(
            prev.model_dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
        assert entry.prev_hash == hashlib.sha256(canonical).hexdigest()
    raw = [e.model_dump() for e in entries]
    assert provenance.check_ledger_chain(raw, provenance.entry_hash(raw[-1])) == []
    raw[1]["data"]["ö"] = [1.5]
    assert provenance.check_ledger_chain(raw, None) == [
        "ledger entry 2: prev_hash does not match entry 1 (entry 1 edited, removed or moved)"
    ]


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert provenance.canonical_json({"b": 1, "a": "å"}) == '{"a":"å","b":1}'.encode()
    with pytest.raises(ValueError):
        provenance.canonical_json({"loss": float("nan")})


# ----------------------------------------------------------------------------- hashing, keys


def test_sha256_file_streams_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(300_001)
    path.write_bytes(data)
    assert sha256_file(path, chunk=4096) == hashlib.sha256(data).hexdigest()


def test_hash_model_inputs_async(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(os.urandom(10_000))
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "README.md").write_text("not an input")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.safetensors").write_bytes(b"nested, ignored")
    digests = provenance.hash_model_inputs_async(tmp_path).result(timeout=60)
    assert digests == {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("config.json", "model.safetensors", "tokenizer.json")
    }


def test_keygen_writes_private_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    private, public = provenance.generate_keypair(tmp_path / "keys", name="k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = provenance.load_private_key(private)
    assert provenance.public_key_fingerprint(key) == provenance.public_key_fingerprint(
        provenance.load_public_key(public)
    )
    with pytest.raises(InputError, match="already exists"):
        provenance.generate_keypair(tmp_path / "keys", name="k")


def test_load_private_key_rejects_other_key_types(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = tmp_path / "rsa.pem"
    path.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an ECDSA P-256/384/521"):
        provenance.load_private_key(path)
    secp256k1 = tmp_path / "k1.pem"
    secp256k1.write_bytes(
        ec.generate_private_key(ec.SECP256K1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an ECDSA P-256/384/521"):
        provenance.load_private_key(secp256k1)
    with pytest.raises(JobError, match="cannot be opened") as info:
        provenance.load_private_key(tmp_path / "missing.pem")
    assert info.value.exit_code == 2
    os.mkfifo(tmp_path / "fifo.pem")  # refused at once, never a blocking open
    with pytest.raises(JobError, match="not a regular file"):
        provenance.load_public_key(tmp_path / "fifo.pem")


def test_signature_file_content(run: FakeRun) -> None:
    assert run.key is not None
    sig = json.loads(run.path(layout.SIGNATURE_NAME).read_bytes())
    der_public = run.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert sig["algorithm"] == "ecdsa-p256-sha256"
    assert sig["public_key_fingerprint"] == hashlib.sha256(der_public).hexdigest()
    import base64

    from cryptography.hazmat.primitives import hashes

    assert isinstance(run.key, ec.EllipticCurvePrivateKey)
    run.key.public_key().verify(
        base64.b64decode(sig["signature"]),
        run.path(layout.MANIFEST_NAME).read_bytes(),
        ec.ECDSA(hashes.SHA256()),
    )


def test_verify_never_imports_torch() -> None:
    code = (
        "import sys, oneseek_job.verify, oneseek_job.certify, oneseek_job.storage; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- S3 (SeaweedFS)


@pytest.fixture
def bucket_store(seaweed: SeaweedServer, fresh_bucket: str) -> Iterator[S3Store]:  # noqa: F811
    store = make_s3_store(seaweed, fresh_bucket)
    yield store
    store.close()


def test_verify_on_s3_store(bucket_store: S3Store, tmp_path: Path) -> None:
    s3_store = bucket_store
    run = make_run(tmp_path / "work", store=s3_store)
    report = run.verify()
    assert report.ok, failures(report)
    assert verify.resolve_run_id(s3_store, None, True) == RUN_ID

    # Overwrite an adapter in the bucket with one byte flipped, and add an unlisted object.
    data = bytearray(s3_store.get_bytes(run.prefix + ADAPTER))
    data[0] ^= 0xFF
    s3_store.put_bytes(run.prefix + ADAPTER, bytes(data))
    s3_store.put_bytes(run.prefix + "weights/extra.pth", b"smuggled")
    report = run.verify()
    assert details(report, "files") == f"{ADAPTER}: sha256 differs from MANIFEST (content changed)"
    assert "weights/extra.pth: present but not in MANIFEST" in details(report, "unlisted")
