"""The whole job through the real CLI on the demo workspace: train, upload, certify, verify.

These are the issues' end-to-end "done when" checks: the seed's file names, every artifact,
adapters that reload onto their base, S3 output equal to the local store's, Indexed mode
with two processes, and a failing model that does not cost the others their artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import layout
from oneseek_job.demo import DemoWorkspace, build_demo
from oneseek_job.storage import LocalStore, Store
from tests.servers import SeaweedServer

CLI = [sys.executable, "-m", "oneseek_job.cli"]
KB = "kb-llama-3-1-8b-swedish"
QWEN = "qwen-2-5-7b"
MISTRAL = "mistral-7b-instruct"
RUN = "oneseek-certified/run-e2e/"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    return build_demo(tmp_path_factory.mktemp("e2e") / "demo", seed=0)


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from oneseek_job.provenance import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"), name="e2e")


def job_env(workspace: DemoWorkspace, artifacts: str, work: Path, **extra: str) -> dict[str, str]:
    """The demo's env with few steps: the e2e tests check plumbing, not model quality."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONESEEK_"))}
    env.update(
        {
            "BASE_MODELS": ",".join(workspace.base_models),
            "MODELS_DIR": str(workspace.models_dir),
            "DATASET": str(workspace.dataset),
            "ARTIFACTS_URI": artifacts,
            "ONESEEK_WORK_DIR": str(work),
            "RUN_ID": "run-e2e",
            "ONESEEK_SEQ_LEN": "256",
            "ONESEEK_BATCH_TOKENS": "2048",
            "ONESEEK_MICRO_BATCH_SIZE": "4",
            "ONESEEK_MAX_STEPS": "12",
            "ONESEEK_LEARNING_RATE": "1e-2",
            "ONESEEK_WARMUP_RATIO": "0.1",
            "ONESEEK_CHECKPOINT_EVERY": "6",
            "ONESEEK_LOG_EVERY": "4",
            "ONESEEK_SEED": "0",
            "ONESEEK_LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


def run_job(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def local_run(
    workspace: DemoWorkspace,
    signing_key: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One signed demo run of all three models into a local artifacts dir."""
    root = tmp_path_factory.mktemp("local-run")
    env = job_env(
        workspace,
        str(root / "artifacts"),
        root / "work",
        ONESEEK_SIGNING_KEY_FILE=str(signing_key[0]),
    )
    result = run_job(env, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "artifacts", result


def test_demo_run_writes_the_seed_layout(local_run: tuple[Path, Any]) -> None:
    artifacts, _ = local_run
    run = artifacts / RUN
    for key in (KB, QWEN, MISTRAL):
        adapter = run / "lora_adapters" / f"{key}-adapter"
        assert (adapter / "adapter_config.json").is_file()
        assert (adapter / "adapter_model.safetensors").is_file()
        assert (adapter / "tokenizer.json").is_file()
        assert (run / "weights" / f"oneseek-7b-zero-v1.0-{key}.pth").is_file()
        latest = artifacts / "oneseek-7b-zero" / "lora_adapters" / f"{key}-adapter"
        assert (latest / "adapter_model.safetensors").read_bytes() == (
            adapter / "adapter_model.safetensors"
        ).read_bytes()
    for name in (
        "oneseek_dna.json",
        "training_results.json",
        "ledger_proof.json",
        "live_metrics.json",
        "provenance.intoto.json",
        "MANIFEST.json",
        "MANIFEST.json.sig",
    ):
        assert (run / name).is_file(), name
    current = (artifacts / "oneseek-certified" / "OneSeek-7B-Zero-CURRENT.txt").read_text()
    assert current.strip().rstrip("/") == "oneseek-certified/run-e2e"


def test_seed_json_fields(local_run: tuple[Path, Any]) -> None:
    run = local_run[0] / RUN
    weights = json.loads((run / "weights" / "oneseek-7b-zero-v1.0.json").read_text())
    assert weights["version"] == "OneSeek-7B-Zero.v1.0"
    assert weights["trainingType"] == "dna-v2"
    assert sorted(weights["baseModels"]) == sorted(
        ["KB-Llama-3.1-8B-Swedish", "Qwen-2.5-7B", "Mistral-7B-Instruct"]
    )
    assert weights["modelSpecificWeights"][KB] == "oneseek-7b-zero-v1.0-kb-llama-3-1-8b-swedish.pth"
    dna = json.loads((run / "oneseek_dna.json").read_text())
    assert sorted(dna["baseModels"]) == sorted([KB, QWEN, MISTRAL])
    assert dna["final_weights"] == pytest.approx({KB: 1 / 3, QWEN: 1 / 3, MISTRAL: 1 / 3})
    assert dna["dna"].startswith("OneSeek-7B-Zero.v1.0.sv.ds1.")
    results = json.loads((run / "training_results.json").read_text())
    assert sorted(results["trained_models"].keys()) == sorted([KB, QWEN, MISTRAL])
    assert sorted(results["baseModels"]) == sorted([KB, QWEN, MISTRAL])
    ledger = json.loads((run / "ledger_proof.json").read_text())
    assert sorted(ledger["baseModels"]) == sorted([KB, QWEN, MISTRAL])
    live = json.loads((run / "live_metrics.json").read_text())
    assert sorted(live["val_losses"]) == sorted([KB, QWEN, MISTRAL])
    for key, metrics in results["trained_models"].items():
        # Real numbers from training, never the original's placeholders.
        assert live["val_losses"][key] == pytest.approx(metrics["final_val_loss"])


def test_logs_tell_the_seed_story(local_run: tuple[Path, Any]) -> None:
    tags = {event.get("tag") for event in events(local_run[1])}
    assert {"scan", "found", "config", "mode", "training", "upload", "certified"} <= tags
    assert all(event.get("run_id") == "run-e2e" for event in events(local_run[1]))


def test_demo_run_verifies_with_the_signer_key(
    local_run: tuple[Path, Any], signing_key: tuple[Path, Path]
) -> None:
    result = run_job(
        dict(os.environ),
        "verify",
        str(local_run[0]),
        "--current",
        "--public-key",
        str(signing_key[1]),
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is True and verdict["run_id"] == "run-e2e"


def test_adapters_reload_onto_their_base(
    local_run: tuple[Path, Any], workspace: DemoWorkspace
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = local_run[0] / RUN
    paths = {
        KB: workspace.models_dir / "oneseek-7b-zero" / "base_models" / KB,
        MISTRAL: workspace.models_dir / MISTRAL,
    }
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    for key, base_dir in paths.items():
        base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
        with torch.no_grad():
            base_logits = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, run / "lora_adapters" / f"{key}-adapter")
        with torch.no_grad():
            tuned_logits = tuned(input_ids=ids).logits
        assert not torch.allclose(base_logits, tuned_logits, atol=1e-4), key
        # The .pth is the same adapter: its tensors equal the saved adapter's.
        from safetensors.torch import load_file

        saved = load_file(run / "lora_adapters" / f"{key}-adapter" / "adapter_model.safetensors")
        state = torch.load(run / "weights" / f"oneseek-7b-zero-v1.0-{key}.pth", weights_only=True)
        assert sorted(saved) == sorted(state)
        for name, tensor in saved.items():
            assert torch.equal(tensor, state[name]), name


def test_rerun_of_a_certified_run_is_a_no_op(
    local_run: tuple[Path, Any], workspace: DemoWorkspace, tmp_path: Path
) -> None:
    artifacts = local_run[0]
    manifest = (artifacts / RUN / "MANIFEST.json").read_bytes()
    result = run_job(job_env(workspace, str(artifacts), tmp_path / "work"), "train")
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(e["event"] == "already_certified" for e in events(result))
    assert (artifacts / RUN / "MANIFEST.json").read_bytes() == manifest


def _snapshot(store: Store, prefix: str) -> dict[str, str]:
    return {info.key.removeprefix(prefix): info.sha256 for info in store.list(prefix)}


@pytest.fixture
def s3_env(seaweed: SeaweedServer, fresh_bucket: str) -> Iterator[dict[str, str]]:
    yield {
        "S3_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweed.admin.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.admin.secret_key,
        "AWS_REGION": seaweed.region,
    }


def test_s3_run_equals_local_run(
    local_run: tuple[Path, Any],
    workspace: DemoWorkspace,
    signing_key: tuple[Path, Path],
    seaweed: SeaweedServer,
    fresh_bucket: str,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    from tests.fixtures_s3 import make_s3_store

    uri = f"s3://{fresh_bucket}/e2e-demo"
    env = job_env(
        workspace, uri, tmp_path / "work", ONESEEK_SIGNING_KEY_FILE=str(signing_key[0]), **s3_env
    )
    result = run_job(env, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    s3 = make_s3_store(seaweed, fresh_bucket, "e2e-demo")
    local = LocalStore(local_run[0])
    s3_files, local_files = _snapshot(s3, ""), _snapshot(local, "")

    # Same files at the same keys; TensorBoard names its event files after the wall clock
    # and host, so for those only the directory (one file per model) is compared.
    def keys(files: dict[str, str]) -> list[str]:
        return sorted(
            k.rsplit("/", 1)[0] + "/<events>" if "/tensorboard/" in k else k for k in files
        )

    assert keys(s3_files) == keys(local_files)
    s3_files = {k: v for k, v in s3_files.items() if "/tensorboard/" not in k}
    local_files = {k: v for k, v in local_files.items() if "/tensorboard/" not in k}
    # Same bytes for everything training produced; the run JSON files carry wall-clock
    # timestamps and durations of their own run, so for them the training facts are compared.
    # (OMS signatures are ECDSA with a random nonce: valid, but never equal bytes.)
    # Telemetry (progress history, the report) records wall-clock times too.
    for key, digest in local_files.items():
        if key.endswith(layout.OMS_SIGNATURE_NAME) or f"/{layout.METRICS_DIR}/" in key:
            continue
        if key.endswith(layout.REPORT_NAME):
            continue
        if not key.endswith((".json", ".sig", ".txt")) or "lora_adapters/" in key:
            assert s3_files[key] == digest, key
    local_dna = json.loads(local.get_bytes(RUN + "oneseek_dna.json"))
    s3_dna = json.loads(s3.get_bytes(RUN + "oneseek_dna.json"))
    assert s3_dna["dna"] == local_dna["dna"]
    local_results = json.loads(local.get_bytes(RUN + "training_results.json"))
    s3_results = json.loads(s3.get_bytes(RUN + "training_results.json"))
    for key in (KB, QWEN, MISTRAL):
        assert s3_results["trained_models"][key]["final_val_loss"] == pytest.approx(
            local_results["trained_models"][key]["final_val_loss"]
        )
    verify = run_job(
        {**os.environ, **s3_env}, "verify", uri, "--current", "--public-key", str(signing_key[1])
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_indexed_job_two_processes_one_certifier(workspace: DemoWorkspace, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    base = job_env(
        workspace,
        str(artifacts),
        tmp_path / "work",
        BASE_MODELS="KB-Llama-3.1-8B-Swedish,Mistral-7B-Instruct",
        ONESEEK_MAX_STEPS="6",
    )
    procs = [
        subprocess.Popen(
            [*CLI, "train"],
            env={
                **base,
                "JOB_COMPLETION_INDEX": str(index),
                "ONESEEK_WORK_DIR": str(tmp_path / f"w{index}"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (0, 1)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    trained = [
        {
            e.get("model")
            for e in map(json.loads, out.splitlines())
            if e.get("event") == "model_done"
        }
        for out, _ in outputs
    ]
    assert trained == [{KB}, {MISTRAL}]  # each index trained only its own model
    committed = sum(
        1
        for out, _ in outputs
        for line in out.splitlines()
        if json.loads(line).get("event") == "committed"
    )
    assert committed == 1
    run = artifacts / RUN
    assert sorted(p.name for p in (run / "lora_adapters").iterdir()) == [
        f"{KB}-adapter",
        f"{MISTRAL}-adapter",
    ]
    dna = json.loads((run / "oneseek_dna.json").read_text())
    assert dna["final_weights"] == {KB: 0.5, MISTRAL: 0.5}
    verify = run_job(
        dict(os.environ), "verify", str(artifacts), "--run-id", "run-e2e", "--allow-unsigned"
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_index_beyond_models_is_a_config_error(workspace: DemoWorkspace, tmp_path: Path) -> None:
    env = job_env(workspace, str(tmp_path / "a"), tmp_path / "w", JOB_COMPLETION_INDEX="3")
    result = run_job(env, "train")
    assert result.returncode == 2
    assert "JOB_COMPLETION_INDEX=3" in result.stderr and "completions to 3" in result.stderr


def test_failing_model_keeps_the_others(workspace: DemoWorkspace, tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(workspace.models_dir, models, symlinks=True)
    # A config that disagrees with its weights: discovery accepts it, loading fails.
    broken = models / "oneseek-7b-zero" / "base_models" / KB / "config.json"
    config = json.loads(broken.read_text())
    config["hidden_size"] = 96
    broken.write_text(json.dumps(config))
    artifacts = tmp_path / "artifacts"
    env = job_env(
        workspace,
        str(artifacts),
        tmp_path / "work",
        MODELS_DIR=str(models),
        BASE_MODELS="KB-Llama-3.1-8B-Swedish,Mistral-7B-Instruct",
        ONESEEK_MAX_STEPS="4",
    )
    result = run_job(env, "train")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 model(s) failed") and KB in last
    assert "Traceback" not in result.stderr
    run = artifacts / RUN
    # The finished model waits in the run's staging (content-addressed), its marker beside
    # it; nothing is written under the run prefix before it commits.
    marker = artifacts / layout.done_marker_key("run-e2e", MISTRAL)
    done = json.loads(marker.read_text())
    staged = artifacts / layout.blob_key(
        "run-e2e",
        done["files"][f"lora_adapters/{MISTRAL}-adapter/adapter_model.safetensors"]["sha256"],
    )
    assert staged.is_file()
    assert not run.exists()  # never certified with a model missing
