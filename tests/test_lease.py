"""The (run, model) lease: one writer at a time, across real processes.

Unit level: separate processes (fork) contend for one lease directory and record when they
held it; no two intervals may overlap, including when they race to take over a stale lease.
Job level: the real ``oneseek-job train`` waits while another writer holds its model's lease,
then trains once it is released, and removes the run's checkpoints after certifying.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from oneseek_job import demo
from oneseek_job.errors import TransientError
from oneseek_job.lease import LEASE_FILE, hold_lease, writer_id
from tests.bad_inputs.cases import Workspace
from tests.test_bad_inputs import clean_env, cli_command

pytestmark = pytest.mark.timeout(240)


def _contend(directory: str, log: str, hold_s: float, stale_s: float) -> None:
    holder = f"proc-{os.getpid()}"
    with hold_lease(Path(directory), what="run/m", holder=holder, wait_s=30, stale_s=stale_s):
        began = time.time()
        time.sleep(hold_s)
        ended = time.time()
    with Path(log).open("a", encoding="utf-8") as out:
        out.write(json.dumps([began, ended, holder]) + "\n")


def _intervals(log: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return sorted((began, ended) for began, ended, _ in rows)


@pytest.mark.parametrize("stale_first", [False, True], ids=["fresh", "stale-takeover-race"])
def test_one_holder_at_a_time_across_processes(tmp_path: Path, stale_first: bool) -> None:
    directory = tmp_path / "ckpt" / "run" / "model"
    directory.mkdir(parents=True)
    if stale_first:
        # A writer that died without letting go: every contender sees it stale at once.
        lease = directory / LEASE_FILE
        lease.write_text(json.dumps({"holder": "dead-pod"}))
        past = time.time() - 3600
        os.utime(lease, (past, past))
    log = tmp_path / "held.jsonl"
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=_contend, args=(str(directory), str(log), 0.3, 60.0))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    spans = _intervals(log)
    assert len(spans) == 4
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert second_start >= first_end, spans
    assert not (directory / LEASE_FILE).exists()  # the last holder let go


def test_a_live_holder_is_never_taken_over(tmp_path: Path) -> None:
    """Heartbeats keep a long holder fresh: a contender gives up instead of stealing."""
    directory = tmp_path / "m"
    with hold_lease(directory, what="run/m", holder="pod-a", stale_s=1.0, heartbeat_s=0.2):
        second = hold_lease(directory, what="run/m", holder="pod-b", wait_s=2.5, stale_s=1.0)
        with pytest.raises(TransientError, match="run/m is being trained by pod-a"), second:
            pytest.fail("two holders at once")
        holder = json.loads((directory / LEASE_FILE).read_text())["holder"]
        assert holder == "pod-a"


def test_a_waiter_gets_the_lease_when_it_is_released(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    context = multiprocessing.get_context("fork")
    log = tmp_path / "held.jsonl"
    first = context.Process(target=_contend, args=(str(directory), str(log), 1.5, 60.0))
    first.start()
    deadline = time.monotonic() + 20
    while not (directory / LEASE_FILE).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    began = time.time()
    with hold_lease(directory, what="run/m", holder="second", wait_s=20):
        got = time.time()
    first.join(20)
    [(_, first_end)] = _intervals(log)
    assert got >= first_end and got - began > 0.5


def test_release_keeps_a_lease_that_is_no_longer_ours(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    with hold_lease(directory, what="run/m", holder="pod-a", heartbeat_s=60) as lease:
        # Taken over meanwhile (we were silent too long): the new holder's file stays.
        lease.path.write_text(json.dumps({"holder": "pod-b"}))
    assert json.loads((directory / LEASE_FILE).read_text())["holder"] == "pod-b"


def test_writer_ids_are_not_pids() -> None:
    """PID is 1 in every container: temp names and lease holders need more than that."""
    import sys

    code = "from oneseek_job.lease import writer_id; print(writer_id())"
    env = {**os.environ}
    ids = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(ids) == 2 and writer_id() not in ids
    assert str(os.getpid()) != writer_id()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("lease-model") / "tiny-llama"
    return demo.build_tiny_model(target, architecture="llama", display_name="Tiny-Llama", seed=0)


def test_train_waits_for_the_lease_then_certifies_and_removes_checkpoints(
    tmp_path: Path, tiny_model: Path
) -> None:
    ws = Workspace.create(tmp_path)
    ws.real_model = tiny_model
    ws.use_real_model()
    checkpoints = tmp_path / "checkpoints"
    ws.env.update({"CHECKPOINT_DIR": str(checkpoints), "RUN_ID": "run-lease"})
    model_dir = checkpoints / "run-lease" / "good-model"
    lines: list[str] = []
    with hold_lease(model_dir, what="run-lease/good-model", holder="old-pod") as held:
        proc = subprocess.Popen(
            [*cli_command(), "train"],
            env=clean_env(tmp_path / "home", ws.env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        # It reaches the lease and waits: no checkpoint is written next to the old writer.
        deadline = time.monotonic() + 150
        while not any('"lease_busy"' in line for line in lines):
            assert proc.poll() is None, "".join(lines[-30:])
            assert time.monotonic() < deadline, "train never reached the lease"
            time.sleep(0.1)
        time.sleep(3)
        assert proc.poll() is None
        assert [p.name for p in model_dir.iterdir() if not p.name.startswith(".clock")] == [
            LEASE_FILE
        ]
        assert json.loads(held.path.read_text())["holder"] == "old-pod"
    proc.wait(timeout=200)
    reader.join(10)
    assert proc.returncode == 0, "".join(lines[-30:])
    events = [json.loads(line) for line in lines if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "lease_acquired" in names and "certified" in names
    # A certified run never resumes: its checkpoints (and the lease) are gone.
    assert "checkpoints_removed" in names
    assert not (checkpoints / "run-lease").exists()
    assert (tmp_path / "artifacts" / "oneseek-certified" / "run-lease" / "MANIFEST.json").is_file()


def test_a_dead_local_holder_is_taken_over_at_once(tmp_path: Path) -> None:
    """A crashed local run (SIGKILL) left its lease: the re-run on this host does not wait
    for it to go stale."""
    directory = tmp_path / "m"
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    directory.mkdir()
    (directory / LEASE_FILE).write_text(
        json.dumps({"holder": "crashed", "host": socket.gethostname(), "pid": child.pid})
    )
    began = time.monotonic()
    with hold_lease(directory, what="run/m", holder="rerun", wait_s=5, stale_s=600):
        assert time.monotonic() - began < 2
    # A live local holder (this very test process, another writer id) is respected.
    (directory / LEASE_FILE).write_text(
        json.dumps({"holder": "alive", "host": socket.gethostname(), "pid": os.getppid()})
    )
    with (
        pytest.raises(TransientError, match="being trained by alive"),
        hold_lease(directory, what="run/m", holder="rerun", wait_s=1, stale_s=600),
    ):
        pytest.fail("took a live holder's lease")


def test_checkpoint_temp_dirs_are_named_per_writer(tmp_path: Path) -> None:
    """Two pods on one checkpoint volume both run as PID 1: a PID-named temp dir would be
    shared. The name carries the writer id, and a failed write leaves nothing behind."""
    from oneseek_job.training.checkpoint import _atomic_dir

    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        (tmp / "state.json").write_text("{}")

    _atomic_dir(tmp_path / "step-00000001", write)
    assert seen == [f".tmp-step-00000001-{writer_id()}"]
    assert (tmp_path / "step-00000001" / "state.json").is_file()

    def broken(tmp: Path) -> None:
        (tmp / "adapter.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        _atomic_dir(tmp_path / "step-00000002", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]
