"""Carry-over (#15) through the real CLI on the demo's tiny models: adding a model to
BASE_MODELS trains only that model, the others are copied from the last certified run
whose per-model inputs match, and the provenance says so. Every attack (changed dataset,
weights or hyper-parameter, a source file changed after certification, another signer)
ends in training, never in a run that fails verify.

Runs are 1 optimizer step: these tests check what is carried, not model quality.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import carry, layout, provenance, rundocs
from oneseek_job.demo import DemoWorkspace, build_demo
from oneseek_job.digests import sha256_bytes
from oneseek_job.documents import FileDigest, Manifest, RunInputs
from oneseek_job.provenance import generate_keypair, load_private_key
from oneseek_job.storage import LocalStore
from tests.fixtures_s3 import make_s3_store
from tests.servers import SeaweedServer
from tests.test_job import events, job_env, run_job

KB = "kb-llama-3-1-8b-swedish"
MISTRAL = "mistral-7b-instruct"
QWEN = "qwen-2-5-7b"
NAMES = {KB: "KB-Llama-3.1-8B-Swedish", MISTRAL: "Mistral-7B-Instruct", QWEN: "Qwen-2.5-7B"}
TINY = {
    "ONESEEK_MAX_STEPS": "1",
    "ONESEEK_SEQ_LEN": "128",
    "ONESEEK_BATCH_TOKENS": "512",
    "ONESEEK_CHECKPOINT_EVERY": "50",
    "ONESEEK_LOG_EVERY": "1",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    return build_demo(tmp_path_factory.mktemp("carry") / "demo", seed=0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("carry-keys"), name="carry")


def _env(
    workspace: DemoWorkspace, artifacts: str, work: Path, run_id: str, *models: str, **extra: str
) -> dict[str, str]:
    return job_env(
        workspace,
        artifacts,
        work,
        RUN_ID=run_id,
        BASE_MODELS=",".join(NAMES[m] for m in models),
        **{**TINY, **extra},
    )


def _train(env: dict[str, str]) -> tuple[set[str], dict[str, str], list[dict[str, Any]]]:
    """Run ``train``: (models trained, {carried model: source run}, every log event)."""
    result = run_job(env, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    logged = events(result)
    trained = {e["model"] for e in logged if e["event"] == "model_done"}
    carried = {e["model"]: e["from_run"] for e in logged if e["event"] == "model_carried_over"}
    return trained, carried, logged


def _manifest(artifacts: Path, run_id: str) -> dict[str, str]:
    data = (artifacts / layout.run_prefix(run_id) / layout.MANIFEST_NAME).read_bytes()
    return {f.path: f.sha256 for f in Manifest.model_validate_json(data).files}


def _model_files(files: dict[str, str], key: str) -> dict[str, str]:
    return {p: sha for p, sha in files.items() if layout.is_model_file(p, "1.0", key)}


def _verify(artifacts: str, run_id: str, public: Path, **env: str) -> None:
    import os

    result = run_job(
        {**os.environ, **env}, "verify", artifacts, "--run-id", run_id, "--public-key", str(public)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def _upstream_verify(directory: Path, public: Path) -> None:
    """The OpenSSF model signing CLI (not ours) accepts the directory's signature."""
    cli = Path(sys.executable).parent / "model_signing"
    signature = directory / layout.OMS_SIGNATURE_NAME
    command = [str(cli), "verify", "key", str(directory), "--signature", str(signature)]
    result = subprocess.run(
        [*command, "--public_key", str(public)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "succeeded" in result.stdout + result.stderr, result.stderr


@pytest.fixture(scope="module")
def run1(
    workspace: DemoWorkspace, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """run-1: KB and Mistral trained, signed and certified in a local store."""
    root = tmp_path_factory.mktemp("carry-run1")
    env = _env(
        workspace,
        str(root / "artifacts"),
        root / "work",
        "run-1",
        KB,
        MISTRAL,
        ONESEEK_SIGNING_KEY_FILE=str(keys[0]),
    )
    trained, carried, _ = _train(env)
    assert trained == {KB, MISTRAL} and not carried
    return root / "artifacts"


@pytest.fixture
def artifacts(run1: Path, tmp_path: Path) -> Path:
    """A private copy of the store holding run-1 (each test adds its own runs to it)."""
    return Path(shutil.copytree(run1, tmp_path / "artifacts"))


def test_adding_a_model_trains_only_that_model(
    workspace: DemoWorkspace, keys: tuple[Path, Path], artifacts: Path, tmp_path: Path
) -> None:
    env = _env(
        workspace,
        str(artifacts),
        tmp_path / "work",
        "run-2",
        KB,
        MISTRAL,
        QWEN,
        ONESEEK_SIGNING_KEY_FILE=str(keys[0]),
    )
    trained, carried, logged = _train(env)
    assert trained == {QWEN}
    assert carried == {KB: "run-1", MISTRAL: "run-1"}
    plan = next(e for e in logged if e["event"] == "carry_over_plan")
    assert plan["sources"] == {KB: ["run-1"], MISTRAL: ["run-1"], QWEN: []}

    # The carried adapters, weights and telemetry are run-1's bytes, at the same paths.
    first, second = _manifest(artifacts, "run-1"), _manifest(artifacts, "run-2")
    for key in (KB, MISTRAL):
        carried_files = _model_files(second, key)
        assert carried_files == _model_files(first, key)
        assert f"lora_adapters/{key}-adapter/adapter_model.safetensors" in carried_files
    # The new run stands on its own: our verify and the upstream OMS verifier.
    _verify(str(artifacts), "run-2", keys[1])
    run = artifacts / layout.run_prefix("run-2")
    for directory in (run, *(run / "lora_adapters" / f"{k}-adapter" for k in (KB, QWEN))):
        _upstream_verify(directory, keys[1])
    assert (artifacts / layout.CURRENT_KEY).read_text().strip() == "oneseek-certified/run-2"

    # Provenance names run-1 per carried model, everywhere an auditor looks.
    source_sha = hashlib.sha256(
        (artifacts / layout.run_prefix("run-1") / layout.MANIFEST_NAME).read_bytes()
    ).hexdigest()
    results = json.loads((run / layout.RESULTS_NAME).read_text())["trained_models"]
    assert results[QWEN]["carried_from"] is None
    for key in (KB, MISTRAL):
        origin = results[key]["carried_from"]
        assert (origin["run_id"], origin["trained_in"]) == ("run-1", "run-1")
        assert origin["manifest_sha256"] == source_sha
    manifest = json.loads((run / layout.MANIFEST_NAME).read_text())
    assert sorted(manifest["carried_over"]) == [KB, MISTRAL]
    ledger = json.loads((run / layout.LEDGER_NAME).read_text())["entries"]
    by_event = {(e["event"], e["data"].get("model")) for e in ledger}
    assert {("model_carried_over", KB), ("model_carried_over", MISTRAL)} <= by_event
    assert ("model_trained", QWEN) in by_event and ("model_trained", KB) not in by_event
    report = (run / "report.html").read_text()
    assert report.count("carried over from run run-1") == 2
    assert report.count("trained in this run") == 1


def test_indexed_job_each_pod_decides_for_its_model(
    workspace: DemoWorkspace, artifacts: Path, tmp_path: Path
) -> None:
    """Indexed Job: index 0 carries KB over from run-1, index 1 trains Qwen; one certifies."""
    base = _env(workspace, str(artifacts), tmp_path / "work", "run-2", KB, QWEN)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "oneseek_job.cli", "train"],
            env={
                **base,
                "JOB_COMPLETION_INDEX": str(i),
                "ONESEEK_WORK_DIR": str(tmp_path / f"w{i}"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    logged = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        logged.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    carried = [{e["model"] for e in log if e["event"] == "model_carried_over"} for log in logged]
    trained = [{e["model"] for e in log if e["event"] == "model_done"} for log in logged]
    assert (carried, trained) == ([{KB}, set()], [set(), {QWEN}])
    assert sum(e["event"] == "committed" for log in logged for e in log) == 1
    results = json.loads((artifacts / layout.run_prefix("run-2") / layout.RESULTS_NAME).read_text())
    assert results["trained_models"][KB]["carried_from"]["run_id"] == "run-1"
    assert results["trained_models"][QWEN]["carried_from"] is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"ONESEEK_LORA_DROPOUT": "0.1"}, id="hyper-parameter"),
        pytest.param({"ONESEEK_CARRY_OVER": "false"}, id="carry-over-off"),
        pytest.param({"DATASET": "smaller"}, id="dataset"),
    ],
)
def test_other_inputs_carry_nothing(
    workspace: DemoWorkspace,
    keys: tuple[Path, Path],
    artifacts: Path,
    tmp_path: Path,
    change: dict[str, str],
) -> None:
    if change.get("DATASET") == "smaller":
        lines = workspace.dataset.read_text(encoding="utf-8").splitlines(keepends=True)
        dataset = tmp_path / workspace.dataset.name
        dataset.write_text("".join(lines[:-1]), encoding="utf-8")
        change = {"DATASET": str(dataset)}
    env = _env(
        workspace,
        str(artifacts),
        tmp_path / "work",
        "run-2",
        KB,
        ONESEEK_SIGNING_KEY_FILE=str(keys[0]),
        **change,
    )
    trained, carried, logged = _train(env)
    assert trained == {KB} and not carried
    plan = next(e for e in logged if e["event"] == "carry_over_plan")
    assert plan.get("sources", {}).get(KB, []) == []
    assert plan["enabled"] is (change.get("ONESEEK_CARRY_OVER") != "false")


def test_changed_base_weights_retrain_only_that_model(
    workspace: DemoWorkspace, keys: tuple[Path, Path], artifacts: Path, tmp_path: Path
) -> None:
    models = Path(shutil.copytree(workspace.models_dir, tmp_path / "models", symlinks=True))
    weights = models / "oneseek-7b-zero" / "base_models" / KB / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: still loads, another model
    weights.write_bytes(bytes(data))
    env = _env(
        workspace,
        str(artifacts),
        tmp_path / "work",
        "run-2",
        KB,
        MISTRAL,
        MODELS_DIR=str(models),
        ONESEEK_SIGNING_KEY_FILE=str(keys[0]),
    )
    trained, carried, _ = _train(env)
    assert trained == {KB}
    assert carried == {MISTRAL: "run-1"}
    _verify(str(artifacts), "run-2", keys[1])


def test_v1_runs_and_other_signers_are_no_sources(
    artifacts: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """In-process (no training): the source rules that need no new run to show."""
    store = LocalStore(artifacts)
    runs = carry.committed_runs(store, exclude="run-2")
    assert [s.run_id for s in runs] == ["run-1"]
    source = runs[0]
    inputs = source.manifest.inputs
    assert isinstance(inputs, RunInputs)
    digests = (source.manifest.model_inputs or {})[KB]
    # Adding models to the list leaves the per-model fingerprint alone.
    wider = inputs.model_copy(update={"models": [*inputs.models, QWEN]})
    assert carry.matching_sources(runs, KB, digests, wider) == runs
    own = load_private_key(keys[0])
    verified = carry.check_source(
        store, source, KB, version="1.0", signing_key=own, work_dir=tmp_path
    )
    assert verified.origin.run_id == "run-1" and verified.entry.certified
    # Another signing key: this run would sign what it did not certify.
    other, _ = generate_keypair(tmp_path / "other", name="other")
    with pytest.raises(carry.CarryRefused, match="not signed by this run's key"):
        carry.check_source(
            store, source, KB, version="1.0", signing_key=load_private_key(other), work_dir=tmp_path
        )
    # A certified file swapped for a symlink to the very same bytes outside the store: the
    # store never follows it, so the source is refused rather than read outside.
    victim = artifacts / layout.run_prefix("run-1") / f"lora_adapters/{KB}-adapter"
    victim /= "adapter_model.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    with pytest.raises(carry.CarryRefused, match="symlink"):
        carry.check_source(store, source, KB, version="1.0", signing_key=own, work_dir=tmp_path)
    victim.unlink()
    shutil.copyfile(outside, victim)
    # An adapter its run did not certify (no better than its base) is not carried, even
    # from a run signed by our key (here re-signed after editing its verdict).
    run = artifacts / layout.run_prefix("run-1")
    path = run / layout.MANIFEST_NAME
    results = json.loads((run / layout.RESULTS_NAME).read_bytes())
    results["trained_models"][KB]["certified"] = False
    data = json.dumps(results).encode()
    (run / layout.RESULTS_NAME).write_bytes(data)
    manifest = Manifest.model_validate_json(path.read_bytes())
    files = {f.path: FileDigest(size=f.size, sha256=f.sha256) for f in manifest.files}
    files[layout.RESULTS_NAME] = FileDigest(size=len(data), sha256=sha256_bytes(data))
    forged = rundocs.build_manifest(
        "run-1",
        files,
        signing_key=own,
        started_at=manifest.started_at,
        inputs=manifest.inputs,
        model_inputs=manifest.model_inputs,
    )
    path.write_bytes(forged)
    (run / layout.SIGNATURE_NAME).write_bytes(provenance.sign(forged, own))
    (source,) = carry.committed_runs(store, exclude="run-2")
    with pytest.raises(carry.CarryRefused, match="not certified"):
        carry.check_source(store, source, KB, version="1.0", signing_key=own, work_dir=tmp_path)
    # A MANIFEST without inputs (v1, or before run identity) is never a source.
    document = json.loads(path.read_bytes())
    document.update(inputs=None, model_inputs=None)
    path.write_text(json.dumps(document))
    assert carry.committed_runs(store, exclude="run-2") == []


def test_tampered_source_on_s3_is_retrained_and_the_rest_carried(
    workspace: DemoWorkspace,
    keys: tuple[Path, Path],
    run1: Path,
    seaweed: SeaweedServer,
    fresh_bucket: str,
    tmp_path: Path,
) -> None:
    """On SeaweedFS: a source object rewritten after certification, its sha256 metadata
    left as it was (metadata must not be trusted), is not carried; the model is retrained
    with a warning, the other is copied server-side, and the run verifies."""
    prefix = f"carry-{tmp_path.name}"
    store = make_s3_store(seaweed, fresh_bucket, prefix)
    local = LocalStore(run1)
    for key in local.list_keys(layout.run_prefix("run-1")):  # run-1 as `aws s3 sync` puts it
        store.put_bytes(key, local.get_bytes(key))
    store.close()
    client = seaweed.client()
    victim = f"{prefix}/{layout.run_prefix('run-1')}lora_adapters/{KB}-adapter/"
    victim += "adapter_model.safetensors"
    head = client.head_object(Bucket=fresh_bucket, Key=victim)
    body = bytearray(client.get_object(Bucket=fresh_bucket, Key=victim)["Body"].read())
    body[-1] ^= 1
    client.put_object(Bucket=fresh_bucket, Key=victim, Body=bytes(body), Metadata=head["Metadata"])

    s3 = {
        "S3_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweed.admin.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.admin.secret_key,
        "AWS_REGION": seaweed.region,
    }
    uri = f"s3://{fresh_bucket}/{prefix}"
    env = _env(
        workspace,
        uri,
        tmp_path / "work",
        "run-2",
        KB,
        MISTRAL,
        ONESEEK_SIGNING_KEY_FILE=str(keys[0]),
        **s3,
    )
    trained, carried, logged = _train(env)
    assert trained == {KB}
    assert carried == {MISTRAL: "run-1"}
    refused = [e for e in logged if e["event"] == "carry_over_refused"]
    assert [(e["model"], e["from_run"], e["level"]) for e in refused] == [(KB, "run-1", "warning")]
    assert "adapter_model.safetensors" in refused[0]["reason"]
    _verify(uri, "run-2", keys[1], **s3)
