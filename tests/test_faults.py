"""Fault injection on the real CLI: preemption loops, SIGKILL mid-checkpoint, S3 outage, races.

Every test runs ``oneseek-job`` as a subprocess on a tiny real model (the demo's builder) and
checks what an operator relies on: the exit code the Job's podFailurePolicy keys on, that a
retry with the same RUN_ID resumes, and that the final adapter is exactly what an
uninterrupted run produces (CPU training here is deterministic: bit-identical tensors).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oneseek_job import layout
from oneseek_job.digests import sha256_file
from oneseek_job.provenance import generate_keypair
from oneseek_job.storage import LocalStore, Store
from tests import fake_run
from tests._reliability import (
    TinyWorkspace,
    cli,
    events,
    job_env,
    start_cli,
)
from tests.servers import SeaweedServer, fault_proxy

pytestmark = pytest.mark.timeout(300)

TOTAL_STEPS = 18
CHECKPOINT_EVERY = 3
ADAPTER = f"lora_adapters/{layout.adapter_dir_name('kb-llama-3-1-8b-swedish')}"


@pytest.fixture(scope="module")
def tiny_ws(tiny_workspace: TinyWorkspace) -> TinyWorkspace:
    return tiny_workspace


def _env(ws: TinyWorkspace, run_dir: Path, run_id: str, **extra: str) -> dict[str, str]:
    settings = {
        "RUN_ID": run_id,
        "ONESEEK_MAX_STEPS": str(TOTAL_STEPS),
        "ONESEEK_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
    }
    return job_env(ws, run_dir, **{**settings, **extra})


def _adapter(artifacts_dir: Path, run_id: str) -> dict[str, torch.Tensor]:
    path = artifacts_dir / layout.run_prefix(run_id) / ADAPTER / "adapter_model.safetensors"
    return load_file(str(path))


def _assert_same_adapter(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    # Tolerance stated: 0. CPU training with restored RNG, optimizer and data position is
    # deterministic, so a resumed adapter must be bit-identical to the uninterrupted one.
    assert all(torch.equal(got[k], want[k]) for k in want), f"max abs difference {worst:g}"


@pytest.fixture(scope="module")
def reference(
    tiny_ws: TinyWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    """The adapter of an uninterrupted run with the same settings."""
    run_dir = tmp_path_factory.mktemp("faults-reference")
    result = cli(["train"], _env(tiny_ws, run_dir, "run-reference"))
    assert result.returncode == 0, result.stderr[-2000:]
    return _adapter(run_dir / "artifacts", "run-reference")


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    return lines[-1]


def test_preemption_loop_resumes_to_the_uninterrupted_adapter(
    tiny_ws: TinyWorkspace, reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    env = _env(tiny_ws, tmp_path, "run-preempt", ONESEEK_CHECKPOINT_EVERY="1000")
    rng = random.Random(20251125)  # random steps, reproducible failures
    saved: list[int] = []
    for _ in range(3):
        low = (saved[-1] if saved else 0) + 2
        target = rng.randint(low, low + 2)
        proc = start_cli(["train"], env)
        hit = proc.wait_for(
            lambda e, t=target: e.get("event") == "training" and e.get("step", 0) >= t
        )
        assert hit is not None, "training ended before the SIGTERM"
        proc.signal(signal.SIGTERM)
        code, out, err = proc.finish()
        assert code == 75, err[-2000:]
        assert "Traceback" not in out + err
        line = _error_line(err)
        assert "SIGTERM" in line and "RUN_ID" in line
        resumed = events(out, "resuming")
        if saved:  # each retry continues from the checkpoint the previous one saved
            assert [e["step"] for e in resumed] == [saved[-1]]
        else:
            assert resumed == []
        checkpoint = events(out, "checkpoint_saved")[-1]["step"]
        assert checkpoint >= target
        saved.append(checkpoint)
    assert saved == sorted(set(saved)), saved

    final = cli(["train"], env)
    assert final.returncode == 0, final.stderr[-2000:]
    assert [e["step"] for e in events(final.stdout, "resuming")] == [saved[-1]]
    _assert_same_adapter(_adapter(tmp_path / "artifacts", "run-preempt"), reference)


# Runs the real CLI, but safetensors' save_file SIGKILLs the process half-way through writing
# the Nth step checkpoint: the moment a node dies or the OOM killer strikes mid-write.
_KILL_MID_CHECKPOINT = """
import os, signal, sys
import safetensors.torch as st
real_save, seen = st.save_file, [0]
def dying_save(tensors, filename, metadata=None):
    if "/.tmp-step-" in str(filename):
        seen[0] += 1
        if seen[0] == int(os.environ["KILL_AT_CHECKPOINT"]):
            with open(filename, "wb") as out:
                out.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(tensors, filename, metadata)
st.save_file = dying_save
from oneseek_job.cli import main
sys.argv = ["oneseek-job", "train"]
main()
"""


def test_sigkill_during_checkpoint_write_keeps_the_previous_ones(
    tiny_ws: TinyWorkspace, reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    env = _env(tiny_ws, tmp_path, "run-sigkill", KILL_AT_CHECKPOINT="3")
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_MID_CHECKPOINT], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt = tmp_path / "work" / "checkpoints" / "run-sigkill" / "kb-llama-3-1-8b-swedish"
    complete = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step-"))
    partial = [p for p in ckpt.iterdir() if p.name.startswith(".tmp-step-00000009")]
    # The checkpoint being written was still under its temp name; the last two are intact.
    assert complete == ["step-00000003", "step-00000006"]
    assert len(partial) == 1 and not (partial[0] / "state.json").exists()
    # Keep a copy to prove the fallback: if the newest were damaged, the older one resumes.
    damaged = tmp_path / "damaged"
    shutil.copytree(ckpt, damaged / "checkpoints" / "run-sigkill" / ckpt.name)

    resumed = cli(["train"], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [e["step"] for e in events(resumed.stdout, "resuming")] == [6]
    assert events(resumed.stdout, "checkpoint_unreadable") == []
    _assert_same_adapter(_adapter(tmp_path / "artifacts", "run-sigkill"), reference)

    newest = damaged / "checkpoints" / "run-sigkill" / ckpt.name / "step-00000006"
    (newest / "adapter.safetensors").write_bytes(b"bit rot")
    fallback_env = {
        **env,
        "CHECKPOINT_DIR": str(damaged / "checkpoints"),
        "ARTIFACTS_URI": str(damaged / "artifacts"),
    }
    fallback = cli(["train"], fallback_env)
    assert fallback.returncode == 0, fallback.stderr[-2000:]
    assert len(events(fallback.stdout, "checkpoint_unreadable")) == 1
    assert [e["step"] for e in events(fallback.stdout, "resuming")] == [3]
    _assert_same_adapter(_adapter(damaged / "artifacts", "run-sigkill"), reference)


def test_s3_outage_during_upload_then_rerun_completes_and_verifies(
    tiny_ws: TinyWorkspace, seaweed: SeaweedServer, fresh_bucket: str, tmp_path: Path
) -> None:
    prefix = "faults/outage"
    uri = f"s3://{fresh_bucket}/{prefix}"
    with fault_proxy(seaweed.endpoint_url) as proxy:
        env = job_env(
            tiny_ws,
            tmp_path,
            RUN_ID="run-outage",
            ONESEEK_MAX_STEPS="4",
            ARTIFACTS_URI=uri,
            S3_ENDPOINT_URL=proxy.url,
            AWS_ACCESS_KEY_ID=seaweed.admin.access_key,
            AWS_SECRET_ACCESS_KEY=seaweed.admin.secret_key,
            AWS_REGION=seaweed.region,
        )
        # The bucket checks and the first small objects get through; the network is cut
        # part-way through the adapter files and stays down for the rest of the run.
        proxy.set_mode("cut", budget=40_000)
        failed = cli(["train"], env)
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "Traceback" not in failed.stdout + failed.stderr
        assert "resumable" in _error_line(failed.stderr)
        client = seaweed.client()
        listed = client.list_objects_v2(Bucket=fresh_bucket, Prefix=prefix).get("Contents", [])
        keys = {o["Key"].removeprefix(prefix + "/") for o in listed}
        manifest = layout.run_prefix("run-outage") + layout.MANIFEST_NAME
        assert manifest not in keys and layout.CURRENT_KEY not in keys

        proxy.set_mode("pass")
        rerun = cli(["train"], env)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        # The retry does not train again: the final adapter waited in CHECKPOINT_DIR.
        assert events(rerun.stdout, "training_already_done")
        assert events(rerun.stdout, "certified")
        check = cli(["verify", uri, "--run-id", "run-outage", "--allow-unsigned", "--json"], env)
        assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


@pytest.mark.parametrize("kind", ["local", "seaweedfs", "moto"])
def test_racing_certifiers_exactly_one_commits(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    run_id = fake_run.RUN_ID
    extra: dict[str, str] = {}
    store: Store
    if kind == "local":
        uri = str(tmp_path / "artifacts")
        store = LocalStore(Path(uri))
    else:
        from tests.fixtures_s3 import S3Server, make_s3_store

        seaweed: S3Server = request.getfixturevalue("moto" if kind == "moto" else "seaweed")
        bucket = "oneseek-tests"
        if kind == "seaweedfs":
            request.getfixturevalue("fresh_bucket")
        store = make_s3_store(seaweed, bucket, f"faults/race-{kind}")
        uri = f"s3://{bucket}/faults/race-{kind}"
        extra = {
            "S3_ENDPOINT_URL": seaweed.endpoint_url,
            "AWS_ACCESS_KEY_ID": seaweed.admin.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.admin.secret_key,
            "AWS_REGION": seaweed.region,
        }
    dataset = tmp_path / fake_run.DATASET_NAME
    dataset.write_text('{"instruction": "Vad gör riksdagen?", "output": "Stiftar lagar."}\n')
    for model in (fake_run.KB, fake_run.QWEN):  # both indices finished, nobody certified yet
        fake_run.upload_model(store, run_id, model, sha256_file(dataset), allow_regression=False)
    private, public = generate_keypair(tmp_path / "keys", name="race")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the code under test, not an install
        "ONESEEK_LOG_FORMAT": "json",
        "ONESEEK_SIGNING_KEY_FILE": str(private),
        "AWS_EC2_METADATA_DISABLED": "true",
        **extra,
    }
    racers = [
        start_cli(["certify", "--run-id", run_id, "--artifacts-uri", uri], env) for _ in range(3)
    ]
    outcomes = [racer.finish(timeout=120) for racer in racers]
    committed = sum(len(events(out, "committed")) for _, out, _ in outcomes)
    assert committed == 1, [o[1][-800:] for o in outcomes]
    for code, out, err in outcomes:
        assert "Traceback" not in out + err
        # Same markers, same key: a loser finds the winner's content equal and finishes it.
        assert code == 0, err[-1000:]
    check = cli(["verify", uri, "--run-id", run_id, "--public-key", str(public), "--json"], env)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
