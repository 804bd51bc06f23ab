"""Run-time guards for real clusters, through the real ``oneseek-job`` CLI in a subprocess.

Each case is a mistake the chart or the kustomize base can no longer make on its own but an
edited manifest, a drifted ConfigMap or a wrong node still can: the job must stop before any
GPU time is spent, with one ``error:`` line and the exit code its podFailurePolicy expects.
"""

from __future__ import annotations

import subprocess
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
