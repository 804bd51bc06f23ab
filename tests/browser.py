"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

Used to check that the run report renders offline and that nothing on the page tries to
reach the network: every request the page makes is recorded from the protocol's own
``Network.requestWillBeSent`` events (fired before CSP or the network can block anything),
so a test sees even requests that fail.

Run as a script to take the README's screenshot::

    python -m tests.browser REPORT.html docs/img/run-report.png
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Browser", "PageResult", "find_chromium", "load_page"]

# The flags of the issue: no sandbox (root in CI), no GPU, and nothing of Chromium's own that
# talks to the network (component updates, sync, QUIC, background services, first-run).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    """The Chromium binary, or None (``apt-get install chromium``; ``make test`` does it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageResult:
    """What loading one page produced."""

    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    console: list[dict[str, Any]] = field(default_factory=list)  # console + log entries
    evaluated: Any = None  # the value of the probe expression
    screenshot: bytes = b""  # PNG of the full page


class Browser:
    """One Chromium process with a fresh profile; ``load`` opens pages in its first tab."""

    def __init__(self, *, width: int = 1280, height: int = 900) -> None:
        binary = find_chromium()
        if binary is None:
            raise RuntimeError("chromium not found: apt-get install -y chromium")
        self._profile = Path(tempfile.mkdtemp(prefix="oneseek-chromium-"))
        self._log = (self._profile / "chromium.log").open("wb")
        self._proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._ws: Any = None
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        try:
            self._connect()
        except Exception:
            self.close()
            raise

    def _connect(self, timeout: float = 60.0) -> None:
        import urllib.request

        import websocket

        # With port 0 Chromium picks a free port and writes it to DevToolsActivePort.
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not active.exists() or not active.read_text().strip():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self._profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium did not start:\n{tail}")
            time.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("chromium has no page target")
            time.sleep(0.1)
        self._ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events meanwhile are kept)."""
        self._next_id += 1
        wanted = self._next_id
        self._ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            if "method" in message:
                self._events.append(message)

    def _wait_event(self, method: str, timeout: float) -> None:
        if any(e["method"] == method for e in self._events):
            return
        self._ws.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if "method" in message:
                self._events.append(message)
                if message["method"] == method:
                    return
        raise TimeoutError(method)

    def _drain(self, seconds: float) -> None:
        """Collect events for a while (late requests from timers or lazy loads)."""
        import websocket

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._ws.settimeout(left)
            try:
                message = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if "method" in message:
                self._events.append(message)

    def load(self, url: str, probe: str = "null", *, settle: float = 1.0) -> PageResult:
        """Open ``url``, wait for load and ``settle`` seconds more, evaluate ``probe``
        (a JS expression returning JSON-able data), take a full-page screenshot."""
        self._events.clear()
        for domain in ("Network", "Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired", timeout=30)
        self._drain(settle)
        value = self.send("Runtime.evaluate", expression=probe, returnByValue=True)
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        self._drain(0.2)
        result = PageResult(
            evaluated=value.get("result", {}).get("value"),
            screenshot=base64.b64decode(shot["data"]),
        )
        for event in self._events:
            params = event.get("params", {})
            if event["method"] == "Network.requestWillBeSent":
                result.requests.append(params["request"]["url"])
            elif event["method"] == "Runtime.consoleAPICalled":
                result.console.append({"level": params.get("type"), "args": params.get("args")})
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                result.console.append({"level": entry.get("level"), "text": entry.get("text")})
        return result

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_page(path: Path, probe: str = "null") -> PageResult:
    """Load one local file in a fresh browser."""
    with Browser() as browser:
        return browser.load(path.resolve().as_uri(), probe)


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    page = load_page(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(page.screenshot)
    print(f"{target}: {len(page.screenshot)} bytes, requests: {page.requests}")
