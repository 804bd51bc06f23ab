"""Run-time guards for real clusters, through the real ``oneseek-job`` CLI in a subprocess.

Each case is a mistake the chart or the kustomize base can no longer make on its own but an
edited manifest, a drifted ConfigMap or a wrong node still can: the job must stop before any
GPU time is spent, with one ``error:`` line and the exit code its podFailurePolicy expects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from oneseek_job.errors import EXIT_BAD_INPUT, EXIT_JOB_SHAPE
from tests.bad_inputs.cases import Workspace
from tests.test_bad_inputs import clean_env, cli_command

pytestmark = pytest.mark.timeout(120)


def run(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *(args or ("train",))],
        env=clean_env(ws.root / "home", ws.env),
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=100,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path)


@pytest.mark.parametrize(("count", "names"), [(2, "good-model"), (1, "good-model,other")])
def test_model_count_drift_fails_the_job(ws: Workspace, count: int, names: str) -> None:
    """completions (ONESEEK_MODEL_COUNT) and BASE_MODELS disagree: exit 4, FailJob."""
    ws.env.update({"BASE_MODELS": names, "ONESEEK_MODEL_COUNT": str(count)})
    result = run(ws)
    assert result.returncode == EXIT_JOB_SHAPE
    line = error_line(result)
    listed = len(names.split(","))
    assert f"made for {count} model(s)" in line and f"lists {listed}" in line


def test_matching_count_passes_the_check(ws: Workspace) -> None:
    # The count holds; the run goes on and stops later on the hand-made model's fake
    # tokenizer (exit 2), never with 4.
    ws.env.update({"ONESEEK_MODEL_COUNT": "1", "JOB_COMPLETION_INDEX": "0"})
    assert run(ws).returncode not in (EXIT_JOB_SHAPE, 0)


@pytest.mark.parametrize("names", ["good-model,Good_Model", "Good-Model,GOOD.MODEL,good-model"])
def test_aliases_of_one_model_are_refused(ws: Workspace, names: str) -> None:
    """Two spellings of one model would shift every later index onto the wrong model."""
    ws.env.update({"BASE_MODELS": names})
    result = run(ws)
    assert result.returncode == EXIT_BAD_INPUT
    line = error_line(result)
    assert "more than once" in line and "good-model" in line


def test_live_configmap_is_refused_in_an_indexed_job(ws: Workspace) -> None:
    ws.env.update({"JOB_COMPLETION_INDEX": "0"})
    result = run(ws, "train", "--configmap", "admin-models")
    assert result.returncode == EXIT_BAD_INPUT
    assert "--configmap admin-models is refused in an Indexed Job" in error_line(result)


def test_missing_credentials_secret_is_named(ws: Workspace) -> None:
    """The pod's Secret refs are optional: the pod starts and pre-flight names the Secret."""
    ws.env.update({"ONESEEK_CREDENTIALS_SECRET": "oneseek-job-s3", "AWS_ACCESS_KEY_ID": "AKIA1"})
    result = run(ws)
    assert result.returncode == EXIT_BAD_INPUT
    line = error_line(result)
    assert "Secret oneseek-job-s3" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert "AKIA1" not in result.stdout + result.stderr  # a present credential never leaks


def test_missing_signing_key_secret_is_named(ws: Workspace) -> None:
    # What an optional Secret volume without its Secret looks like: an empty mount dir.
    mount = ws.root / "signing"
    mount.mkdir()
    ws.env.update({"ONESEEK_SIGNING_KEY_FILE": str(mount / "signing-key.pem")})
    result = run(ws)
    assert result.returncode == EXIT_BAD_INPUT
    line = error_line(result)
    assert "ONESEEK_SIGNING_KEY_FILE" in line and "Secret is missing" in line


def test_gpu_requested_but_cuda_missing_exits_2(ws: Workspace) -> None:
    """No silent CPU fallback: with a GPU requested, pre-flight requires CUDA with that many
    devices and names the driver and CUDA versions (on this CPU machine CUDA is absent; on
    a GPU machine one more GPU than there are is requested)."""
    import torch

    wanted = torch.cuda.device_count() + 1 if torch.cuda.is_available() else 1
    ws.env.update({"ONESEEK_GPU_COUNT": str(wanted)})
    result = run(ws)
    assert result.returncode == EXIT_BAD_INPUT
    line = error_line(result)
    assert f"ONESEEK_GPU_COUNT={wanted}" in line
    assert "NVIDIA driver" in line and "built for CUDA" in line and "R580" in line


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
            "535.104.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n",
            "580.65.06",
        ),
    ],
)
def test_driver_version_from_proc(tmp_path: Path, text: str, version: str) -> None:
    from oneseek_job.preflight import nvidia_driver_version

    proc = tmp_path / "version"
    proc.write_text(text)
    assert nvidia_driver_version(proc) == version
    assert nvidia_driver_version(tmp_path / "absent").startswith(("unknown", "5", "6"))


def test_unwritable_checkpoint_dir_is_found_at_preflight(tmp_path: Path) -> None:
    """NFS-like volumes ignore fsGroup: a checkpoint dir the job's user cannot write fails
    the write probe (exit 2, naming the UID), not the first checkpoint hours later."""
    # pytest's tmp_path sits under a 0700 directory the unprivileged user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="oneseek-probe-"))
    checkpoints, work = base / "checkpoints", base / "work"
    checkpoints.mkdir()
    work.mkdir()
    for path in (base, work):
        path.chmod(0o777)
    checkpoints.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores mode bits: probe as an unprivileged user
        setpriv = shutil.which("setpriv")
        assert setpriv, "util-linux setpriv is needed to drop root for this test"
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    code = (
        "from oneseek_job import config, preflight\n"
        f"s = config.load_settings(work_dir={str(work)!r}, checkpoint_dir={str(checkpoints)!r})\n"
        "try:\n"
        "    preflight.check_locations(preflight.Preflight(s))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e.exit_code, e)\n"
    )
    result = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        env=clean_env(tmp_path / "home", {}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shutil.rmtree(base)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ConfigError 2 CHECKPOINT_DIR"), result.stdout
    assert "UID" in result.stdout and "fsGroup" in result.stdout


def test_model_index_is_apart_from_the_node_rank(ws: Workspace) -> None:
    """In a multi-node group JOB_COMPLETION_INDEX is the node rank; ONESEEK_MODEL_INDEX
    names the model. Without it, the completion index picks the model (one pod per model)."""
    from oneseek_job import config, preflight
    from tests.modelfiles import write_model_dir

    write_model_dir(ws.models / "second-model", model_name="Second-Model")
    names = "good-model,second-model"

    def selected(**env: str) -> list[str]:
        settings = config.load_settings(
            base_models=names, models_dir=ws.models, **{k: v for k, v in env.items()}
        )
        ctx = preflight.Preflight(settings)
        preflight.check_models(ctx)
        return [r.key for r in ctx.selected]

    assert selected(job_completion_index=1) == ["second-model"]
    # Node rank 0 and node rank 1 of the group for model 1 train the same model.
    assert selected(job_completion_index=0, model_index=1) == ["second-model"]
    assert selected(job_completion_index=1, model_index=1) == ["second-model"]
    assert selected() == ["good-model", "second-model"]
    ws.env.update({"BASE_MODELS": names, "JOB_COMPLETION_INDEX": "0", "ONESEEK_MODEL_INDEX": "2"})
    result = run(ws)
    assert result.returncode == EXIT_BAD_INPUT
    assert "ONESEEK_MODEL_INDEX=2 but BASE_MODELS resolves to 2 model(s)" in error_line(result)
