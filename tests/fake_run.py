"""A small committed run built the way certify.py certifies one, for provenance and artifact tests.

Adapter and weight files are random bytes (the lead's end-to-end test trains real ones);
everything after the done markers is the real certification path: markers → build_run_files
→ upload → build_manifest → sign → certify.certify_run (stage → markers → commit → finish).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from oneseek_job import certify, documents, layout, provenance, rundocs, verify
from oneseek_job.digests import sha256_file
from oneseek_job.storage import LocalStore, Store

RUN_ID = "run-20251123-001234"
VERSION = "1.0"
DATASET_NAME = "svenska_samhalle.jsonl"


@dataclass(frozen=True)
class Model:
    key: str
    display_name: str
    base_val_loss: float
    final_val_loss: float
    started_at: str
    finished_at: str


KB = Model(
    "kb-llama-3-1-8b-swedish",
    "KB-Llama-3.1-8B-Swedish",
    3.25,
    2.5,
    "2025-11-23T00:12:34+00:00",
    "2025-11-23T00:20:00+00:00",
)
QWEN = Model(
    "qwen-2-5-7b",
    "Qwen-2.5-7B",
    3.5,
    3.75,
    "2025-11-23T00:12:35+00:00",
    "2025-11-23T00:18:10+00:00",
)


@dataclass
class FakeRun:
    store: Store
    run_id: str
    prefix: str
    results: list[documents.ModelResult]
    info: certify.RunInfo
    key: provenance.SigningKey | None
    dataset_sha256: str
    key_file: Path | None = None

    def path(self, relative: str) -> Path:
        """The on-disk file behind a run-relative key (to tamper with it directly)."""
        assert isinstance(self.store, LocalStore), "direct file access needs a LocalStore"
        return self.store.root / (self.prefix + relative)

    def read_json(self, relative: str) -> dict[str, object]:
        return json.loads(self.path(relative).read_bytes())  # type: ignore[no-any-return]

    def write_json(self, relative: str, document: object) -> None:
        self.path(relative).write_text(json.dumps(document, indent=2) + "\n")

    def recommit(self, key: provenance.SigningKey | None) -> None:
        """An insider's forgery: rebuild MANIFEST over the current files and re-sign it."""
        files = {
            info.key.removeprefix(self.prefix): documents.FileDigest(
                size=info.size, sha256=info.sha256
            )
            for info in self.store.list(self.prefix)
        }
        manifest = rundocs.build_manifest(self.run_id, files, signing_key=key)
        self.path(layout.MANIFEST_NAME).write_bytes(manifest)
        if key is not None:
            self.path(layout.SIGNATURE_NAME).write_bytes(provenance.sign(manifest, key))

    def verify(
        self, public_key: object = "own", *, allow_unsigned: bool = False
    ) -> verify.VerifyReport:
        if public_key == "own":
            pub = self.key.public_key() if self.key is not None else None
        else:
            pub = public_key  # type: ignore[assignment]
        return verify.verify_run(
            self.store, self.run_id, public_key=pub, allow_unsigned=allow_unsigned
        )


def upload_model(
    store: Store, run_id: str, model: Model, dataset_sha256: str, *, allow_regression: bool
) -> documents.ModelResult:
    """Stage one model's files (random bytes) and write its done marker, as job.py does."""
    adapter = f"lora_adapters/{layout.adapter_dir_name(model.key)}"
    contents = {
        f"{adapter}/adapter_model.safetensors": os.urandom(4096),
        f"{adapter}/adapter_config.json": json.dumps(
            {"peft_type": "LORA", "r": 8, "base_model_name_or_path": model.display_name}
        ).encode(),
        f"{adapter}/tokenizer.json": b'{"version": "1.0"}',
        f"weights/{layout.weights_file_name(VERSION, model.key)}": os.urandom(2048),
    }
    files = {}
    for relative, data in contents.items():
        sha = hashlib.sha256(data).hexdigest()
        info = store.put_bytes(layout.blob_key(run_id, sha), data)
        files[relative] = documents.FileDigest(size=info.size, sha256=info.sha256)
    improved = model.final_val_loss < model.base_val_loss
    result = documents.ModelResult(
        key=model.key,
        display_name=model.display_name,
        model_path=f"/models/oneseek-7b-zero/base_models/{model.key}",
        architecture="LlamaForCausalLM",
        base_val_loss=model.base_val_loss,
        final_val_loss=model.final_val_loss,
        final_train_loss=model.final_val_loss - 0.25,
        improved=improved,
        certified=improved or allow_regression,
        steps=40,
        epochs=2,
        samples=64,
        train_tokens=64 * 96,
        duration_seconds=12.5,
        started_at=model.started_at,
        finished_at=model.finished_at,
        files=files,
        base_model_digests={
            "config.json": hashlib.sha256(model.key.encode()).hexdigest(),
            "model.safetensors": hashlib.sha256(model.display_name.encode()).hexdigest(),
        },
        dataset_sha256=dataset_sha256,
        dataset_files=[DATASET_NAME],
        hyperparameters={"lora": {"r": 8, "alpha": 16}, "train": {"lr": 2e-4}},
        host=f"node-{model.key[:4]}",
        image_digest="ghcr.io/oneseek/oneseek-job@sha256:" + "ab" * 32,
    )
    certify.mark_done(store, result, run_id)
    return result


def read_markers(store: Store, run_id: str) -> list[documents.ModelResult]:
    """The done markers (read before certification: finishing removes the staging area)."""
    return sorted(certify.read_results(store, run_id), key=lambda r: r.key)


def run_info(results: list[documents.ModelResult], *, allow_regression: bool) -> rundocs.RunInfo:
    return rundocs.RunInfo(
        run_id=RUN_ID,
        version=VERSION,
        language="sv",
        dataset_name_tokens=[Path(DATASET_NAME).stem],
        dataset_sha256=results[0].dataset_sha256,
        total_epochs=max(r.epochs for r in results),
        allow_regression=allow_regression,
        image_digest=results[0].image_digest,
        hyperparameters=results[0].hyperparameters,
    )


def certify_fake(
    store: Store, run_id: str, key_file: Path | None, *, allow_regression: bool
) -> rundocs.RunInfo:
    """The certification step of job.py (the real certify_run), on the staged markers."""
    results = read_markers(store, run_id)
    info = run_info(results, allow_regression=allow_regression)
    certified = certify.certify_run(
        store,
        run_id,
        version=VERSION,
        language="sv",
        allow_regression=allow_regression,
        image_digest=results[0].image_digest,
        signing_key_file=key_file,
        expected=None,
    )
    assert not certified.already
    return info


def make_run(
    root: Path,
    models: tuple[Model, ...] = (KB, QWEN),
    *,
    signed: bool = True,
    allow_regression: bool = False,
    store: Store | None = None,
) -> FakeRun:
    """A committed, promoted run of ``models`` in ``store`` (default: a LocalStore at ``root``)."""
    store = store if store is not None else LocalStore(root)
    root.mkdir(parents=True, exist_ok=True)
    dataset = root.parent / DATASET_NAME
    dataset.write_text(
        '{"instruction": "Vad gör riksdagen?", "output": "Stiftar lagar."}\n', encoding="utf-8"
    )
    dataset_sha256 = sha256_file(dataset)
    key_file: Path | None = None
    if signed:
        key_file, _public = provenance.generate_keypair(root.parent / "keys", name=root.name)
    key = provenance.load_private_key(key_file) if key_file else None
    for model in models:
        upload_model(store, RUN_ID, model, dataset_sha256, allow_regression=allow_regression)
    results = read_markers(store, RUN_ID)
    info = certify_fake(store, RUN_ID, key_file, allow_regression=allow_regression)
    return FakeRun(
        store=store,
        run_id=RUN_ID,
        prefix=layout.run_prefix(RUN_ID),
        results=results,
        info=info,
        key=key,
        dataset_sha256=dataset_sha256,
        key_file=key_file,
    )


def failures(report: verify.VerifyReport) -> list[tuple[str, str]]:
    return [(c.name, c.detail) for c in report.checks if not c.ok]
