"""Helpers shared by the fault and secrets tests: a tiny real workspace and CLI subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseek_job import demo

__all__ = [
    "TINY_ENV",
    "Proc",
    "TinyWorkspace",
    "build_tiny_workspace",
    "cli",
    "events",
    "job_env",
    "start_cli",
]

# Small and fast on 2 CPU cores, yet many steps (a SIGTERM must land mid-training).
TINY_ENV = {
    "ONESEEK_SEQ_LEN": "64",
    "ONESEEK_BATCH_TOKENS": "128",
    "ONESEEK_MICRO_BATCH_SIZE": "2",
    "ONESEEK_LORA_R": "4",
    "ONESEEK_LEARNING_RATE": "5e-3",
    "ONESEEK_WARMUP_RATIO": "0.1",
    "ONESEEK_LOG_EVERY": "1",
    "ONESEEK_ALLOW_REGRESSION": "true",
    "ONESEEK_SEED": "7",
    "ONESEEK_LOG_FORMAT": "json",
    "HF_HUB_OFFLINE": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class TinyWorkspace:
    """One real tiny model (demo builder) and the demo's Swedish dataset."""

    root: Path
    models: Path
    dataset: Path
    display_name: str = "KB-Llama-3.1-8B-Swedish"
    key: str = "kb-llama-3-1-8b-swedish"


def build_tiny_workspace(root: Path) -> TinyWorkspace:
    models = root / "models"
    demo.build_tiny_model(
        models / "oneseek-7b-zero" / "base_models" / "kb-llama-3-1-8b-swedish",
        architecture="llama",
        display_name="KB-Llama-3.1-8B-Swedish",
        seed=0,
    )
    dataset = root / "data" / "civic_qa_sv.jsonl"
    dataset.parent.mkdir(parents=True)
    with dataset.open("w", encoding="utf-8") as out:
        # A slice of the demo data: evaluation before and after training stays cheap.
        for record in demo.load_demo_records(seed=0)[:120]:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return TinyWorkspace(root=root, models=models, dataset=dataset)


def job_env(ws: TinyWorkspace, run_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for one job: the workspace, a work dir, tiny settings."""
    home = run_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        **TINY_ENV,
        "BASE_MODELS": ws.display_name,
        "MODELS_DIR": str(ws.models),
        "DATASET": str(ws.dataset),
        "ARTIFACTS_URI": str(run_dir / "artifacts"),
        "ONESEEK_WORK_DIR": str(run_dir / "work"),
    }
    env.update(extra)
    return env


def _command() -> list[str]:
    script = Path(sys.executable).parent / "oneseek-job"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "oneseek_job.cli"]


def cli(
    args: list[str], env: dict[str, str], *, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``oneseek-job ARGS`` to completion."""
    return subprocess.run(
        [*_command(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Proc:
    """A running ``oneseek-job`` whose stdout is read event by event."""

    popen: subprocess.Popen[str]
    lines: list[str]

    def wait_for(self, predicate: Any) -> dict[str, Any] | None:
        """Read stdout until an event satisfies ``predicate``; None if the process ended."""
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            event = _parse(line)
            if event is not None and predicate(event):
                return event
        return None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.popen.send_signal(signum)

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        out, err = self.popen.communicate(timeout=timeout)
        self.lines.extend(out.splitlines(keepends=True))
        return self.popen.returncode, "".join(self.lines), err


def start_cli(args: list[str], env: dict[str, str], **popen: Any) -> Proc:
    process = subprocess.Popen(
        [*_command(), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        **popen,
    )
    return Proc(process, [])


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """Every JSON log event in ``text`` (optionally only those called ``name``)."""
    found = [e for e in map(_parse, text.splitlines()) if e is not None]
    return [e for e in found if name is None or e.get("event") == name]
