"""The CLI through a real subprocess: exit codes, one-line errors, lazy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.modelfiles import write_model_dir

CLI = [sys.executable, "-m", "oneseek_job.cli"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BASE_MODELS", "MODELS_DIR", "DATASET", "RUN_ID")
    }
    full_env.update(env or {})
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    base = root / "oneseek-7b-zero" / "base_models"
    write_model_dir(base / "kb-llama-3-1-8b-swedish", name_or_path="KB-Llama-3.1-8B-Swedish")
    write_model_dir(root / "mistral-7b-instruct", model_name="Mistral-7B-Instruct")
    write_model_dir(root / "llama-2-7b")
    return root


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "discover", "certify", "verify", "keygen", "demo", "version"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "discover", "certify", "verify", "keygen", "demo"])
def test_every_command_has_help_with_examples(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "oneseek-job" in result.stdout  # the example lines


def test_discover_json_resolves(models: Path) -> None:
    result = run_cli(
        "discover",
        "--json",
        env={"MODELS_DIR": str(models), "BASE_MODELS": "KB-Llama-3.1-8B-Swedish,mistral"},
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [m["key"] for m in document["models"]] == [
        "kb-llama-3-1-8b-swedish",
        "llama-2-7b",
        "mistral-7b-instruct",
    ]
    assert [(r["key"], r["how"]) for r in document["resolved"]] == [
        ("kb-llama-3-1-8b-swedish", "exact key"),
        ("mistral-7b-instruct", "token run"),
    ]
    assert document["resolved"][1]["loose"] == [
        {"requested": "mistral", "key": "mistral-7b-instruct", "rule": "token run"}
    ]
    assert document["resolved"][0]["exact"] is True


def test_discover_ambiguous_exits_3_one_line(models: Path) -> None:
    result = run_cli("discover", "--models-dir", str(models), "--base-models", "llama")
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: BASE_MODELS: 'llama' is ambiguous")
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_setting_exits_2(models: Path) -> None:
    result = run_cli("discover", env={"MODELS_DIR": str(models), "ONESEEK_EPOCHS": "lots"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ONESEEK_EPOCHS:")
    assert "Traceback" not in result.stderr


def test_missing_models_dir_exits_2(tmp_path: Path) -> None:
    result = run_cli("discover", "--models-dir", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_train_without_base_models_exits_2(models: Path) -> None:
    result = run_cli("train", env={"MODELS_DIR": str(models), "BASE_MODELS": " , "})
    assert result.returncode == 2
    assert "BASE_MODELS is empty" in result.stderr


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("oneseek-job 0.1.0")


@pytest.mark.parametrize(
    "module", ["oneseek_job.cli", "oneseek_job.discovery", "oneseek_job.config"]
)
def test_light_modules_never_import_torch(module: str) -> None:
    heavy = "'torch' in sys.modules or 'boto3' in sys.modules"
    code = f"import sys, {module}; sys.exit(1 if {heavy} else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_discover_does_not_import_torch(models: Path) -> None:
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['oneseek-job', 'discover', '--models-dir', {str(models)!r}, '--json']\n"
        "try:\n    runpy.run_module('oneseek_job.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'discover imported torch'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _example_blocks(command: str) -> list[str]:
    """The lines of the ``\\b`` (verbatim) paragraphs of a command's docstring."""
    from oneseek_job.cli import app

    if command == "":
        doc = app.info.help or ""
    else:
        [info] = [
            c for c in app.registered_commands if c.callback and c.callback.__name__ == command
        ]
        assert info.callback is not None
        doc = info.callback.__doc__ or ""
    lines: list[str] = []
    verbatim = False
    for line in doc.splitlines():
        if line.strip() == "\b":
            verbatim = True
        elif not line.strip():
            verbatim = False
        elif verbatim:
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize(
    "command", ["", "train", "discover", "certify", "verify", "keygen", "demo"]
)
def test_help_prints_examples_as_written(command: str) -> None:
    from typer.testing import CliRunner

    from oneseek_job.cli import app

    examples = _example_blocks(command)
    assert examples, f"{command or 'oneseek-job'} --help has no verbatim example block"
    result = CliRunner().invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    printed = [line.strip() for line in result.output.splitlines()]
    for example in examples:
        assert example in printed, f"{example!r} re-wrapped in:\n{result.output}"


def test_discover_escapes_names_from_the_volume(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model_dir(root / "evil-model", model_name="Evil\x1b[2J\x1b]0;pwned\x07-Model")
    write_model_dir(root / "bad\x1b[31mdir", config={"architectures": "x"})
    result = run_cli("discover", env={"MODELS_DIR": str(root), "BASE_MODELS": "nope\x1b[1m"})
    assert result.returncode == 3
    assert "\x1b" not in result.stdout + result.stderr
    assert "\\x1b[2J" in result.stdout and "bad\\x1b[31mdir" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
