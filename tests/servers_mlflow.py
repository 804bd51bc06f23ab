"""A real ``mlflow server`` on loopback with a SQLite backend, for the MLflow sink's tests.

Start-up is slow (about 14 s on the 2-core CI machine: SQLite migrations and uvicorn), so
the fixture is session-scoped and starts the server in the background while other setup
runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.servers import free_port

__all__ = ["MlflowServer", "mlflow_server"]


class MlflowServer:
    """``mlflow server --backend-store-uri sqlite:///… -h 127.0.0.1 -p PORT -w 1``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="oneseek-mlflow-"))
        binary = Path(sys.executable).parent / "mlflow"
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "mlflow"]
        self._log = (self.dir / "server.log").open("wb")
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            [
                *command,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.dir / 'mlflow.db'}",
                "--default-artifact-root",
                str(self.dir / "artifacts"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-w",
                "1",
            ],
            # The job runner (8 huey consumer processes) serves GenAI evaluation jobs, not
            # tracking; without it start-up is faster and lighter.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            # mlflow runs uvicorn as a child process: a group of its own lets stop() end both.
            start_new_session=True,
        )
        self.startup_seconds: float | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> MlflowServer:
        """Block until /health answers; raises with the log tail if it never does."""
        if self.startup_seconds is not None:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    self.startup_seconds = time.monotonic() - self.started
                    return self
            except OSError:
                time.sleep(0.3)
        tail = (self.dir / "server.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"mlflow server not ready in {timeout}s:\n{tail}")

    def stop(self) -> None:
        if self._proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """An MLflow tracking server, booting: call ``.wait()`` before using it, so its slow
    start overlaps with the test's other setup."""
    server = MlflowServer()
    try:
        yield server
    finally:
        server.stop()
