"""A multi-node group on loopback: two "nodes" x one process, as a JobSet's pods get it.

Each node is a real ``oneseek-job train`` process with exactly the ``PET_*`` environment
JobSet's PyTorch example and Kubeflow Trainer's torch runtime give a pod; the launcher in
``oneseek_job.launch`` starts its worker, the workers form a gloo group over 127.0.0.1 and
train one model together. Held to: the same adapter as one process (within float summation
order), SIGTERM to one node gives exit 75 on both, and the restarted group finishes the run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oneseek_job import demo
from oneseek_job.errors import EXIT_JOB_SHAPE, EXIT_PREEMPTED, ConfigError
from oneseek_job.launch import Group, group_exit_code, group_from_env
from tests.bad_inputs.cases import Workspace
from tests.servers import free_port
from tests.test_bad_inputs import clean_env, cli_command

# Same global batch either way: 2 blocks of 64 tokens per optimizer step.
TRAIN = {
    "ONESEEK_SEQ_LEN": "64",
    "ONESEEK_BATCH_TOKENS": "128",
    "ONESEEK_LEARNING_RATE": "0.003",
    "ONESEEK_SEED": "5",
    "ONESEEK_LORA_R": "8",
    "ONESEEK_LORA_ALPHA": "16",
    "ONESEEK_LORA_DROPOUT": "0",
    "ONESEEK_ALLOW_REGRESSION": "true",
    "ONESEEK_LOG_EVERY": "1",
    "ONESEEK_CHECKPOINT_EVERY": "2",
}
ADAPTER = "lora_adapters/good-model-adapter/adapter_model.safetensors"


def test_exit_code_of_a_group() -> None:
    assert group_exit_code([0, 0]) == 0
    assert group_exit_code([75, 75]) == 75
    # A verdict wins over the preemption the launcher caused to stop the other workers.
    assert group_exit_code([2, 75]) == 2
    assert group_exit_code([75, 3, 75]) == 3
    assert group_exit_code([0, 4]) == 4
    assert group_exit_code([137, 75]) == 75
    assert group_exit_code([0, 137]) == 1


def test_group_from_pet_environment() -> None:
    assert group_from_env({}) is None  # trains alone
    assert group_from_env({"PET_NNODES": "1", "PET_NPROC_PER_NODE": "1"}) is None
    # A worker (LOCAL_RANK set by us or torchrun) never launches again.
    assert group_from_env({"PET_NNODES": "2", "LOCAL_RANK": "0"}) is None
    env = {
        "PET_NNODES": "4",
        "PET_NPROC_PER_NODE": "8",
        "PET_NODE_RANK": "3",
        "PET_MASTER_ADDR": "oneseek-m0-0-0.oneseek",
        "PET_MASTER_PORT": "29400",
    }
    group = group_from_env(env)
    assert group == Group(4, 8, 3, "oneseek-m0-0-0.oneseek", 29400)
    worker = group.worker_env(5)
    assert (worker["RANK"], worker["LOCAL_RANK"], worker["WORLD_SIZE"]) == ("29", "5", "32")
    assert (worker["GROUP_RANK"], worker["LOCAL_WORLD_SIZE"]) == ("3", "8")
    for broken, why in (
        ({**env, "PET_NODE_RANK": "4"}, "PET_NODE_RANK=4 but the group has 4"),
        ({**env, "PET_NNODES": "1:4"}, "no elastic ranges"),
        ({**env, "PET_MASTER_ADDR": ""}, "PET_MASTER_ADDR is required"),
        ({k: v for k, v in env.items() if k != "PET_NODE_RANK"}, "PET_NODE_RANK is required"),
    ):
        with pytest.raises(ConfigError, match=why):
            group_from_env(broken)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("group-model") / "tiny-llama"
    return demo.build_tiny_model(target, architecture="llama", display_name="Tiny-Llama", seed=0)


def _workspace(root: Path, model: Path, run_id: str, steps: int) -> Workspace:
    ws = Workspace.create(root)
    ws.real_model = model
    ws.use_real_model()
    ws.env.update(TRAIN)
    ws.env.update(
        {
            "ONESEEK_MAX_STEPS": str(steps),
            "RUN_ID": run_id,
            "CHECKPOINT_DIR": str(root / "checkpoints"),  # the shared checkpoints volume
        }
    )
    return ws


class Node:
    """One "pod" of the group: ``oneseek-job train`` with its PET_* variables."""

    def __init__(self, ws: Workspace, rank: int, nnodes: int, port: int) -> None:
        env = {
            **ws.env,
            "ONESEEK_WORK_DIR": str(ws.root / f"work-node{rank}"),  # each pod's own emptyDir
            "PET_NNODES": str(nnodes),
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
        }
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*cli_command(), "train"],
            env=clean_env(ws.root / f"home{rank}", env),
            cwd=ws.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def wait(self, timeout: float = 400) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        return code

    def tail(self) -> str:
        return "".join(self.lines[-40:])


def _run_group(ws: Workspace, nnodes: int = 2) -> list[Node]:
    port = free_port()
    return [Node(ws, rank, nnodes, port) for rank in range(nnodes)]


def _adapter(ws: Workspace, run_id: str) -> dict[str, torch.Tensor]:
    return load_file(ws.root / "artifacts" / "oneseek-certified" / run_id / ADAPTER)


@pytest.mark.timeout(900)
def test_two_nodes_train_the_single_process_adapter(tmp_path: Path, tiny_model: Path) -> None:
    single = _workspace(tmp_path / "single", tiny_model, "run-single", steps=6)
    alone = subprocess.run(
        [*cli_command(), "train"],
        env=clean_env(single.root / "home", single.env),
        cwd=single.root,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]

    grouped = _workspace(tmp_path / "group", tiny_model, "run-group", steps=6)
    nodes = _run_group(grouped)
    codes = [node.wait() for node in nodes]
    assert codes == [0, 0], "\n".join(node.tail() for node in nodes)
    # Each node ran one worker of a world of two; rank 0 alone uploaded and certified.
    assert [n.events("group_finished")[0]["worker_exit_codes"] for n in nodes] == [[0], [0]]
    assert nodes[0].events("certified") and not nodes[1].events("certified")
    a, b = _adapter(single, "run-single"), _adapter(grouped, "run-group")
    assert a.keys() == b.keys() and a
    for name in a:
        # Equal up to float summation order (the gradient all-reduce).
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(900)
def test_sigterm_to_one_node_stops_both_with_75_and_the_group_resumes(
    tmp_path: Path, tiny_model: Path
) -> None:
    ws = _workspace(tmp_path, tiny_model, "run-preempted", steps=12)
    nodes = _run_group(ws)
    deadline = time.monotonic() + 400
    while not [e for e in nodes[0].events("training") if int(str(e.get("step", 0))) >= 3]:
        assert all(n.proc.poll() is None for n in nodes), "\n".join(n.tail() for n in nodes)
        assert time.monotonic() < deadline, "training never reached step 3"
        time.sleep(0.1)
    nodes[1].proc.send_signal(signal.SIGTERM)  # the kubelet stops one pod of the group
    codes = [node.wait() for node in nodes]
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], "\n".join(n.tail() for n in nodes)
    saved = nodes[0].events("checkpoint_saved")
    assert saved, nodes[0].tail()

    # JobSet restarts the whole group: it resumes from the shared checkpoint and finishes.
    again = _run_group(ws)
    codes = [node.wait() for node in again]
    assert codes == [0, 0], "\n".join(n.tail() for n in again)
    resumed = again[0].events("resuming")
    assert resumed and resumed[0]["step"] == saved[-1]["step"]
    assert (
        ws.root / "artifacts" / "oneseek-certified" / "run-preempted" / "MANIFEST.json"
    ).is_file()


def test_a_verdict_of_the_workers_is_the_group_exit_code(tmp_path: Path) -> None:
    """A verdict (here exit 4, the Job made for another model count) comes out of the group
    as itself, not as torchrun's 1: podFailurePolicy and JobSet's rules key on it."""
    ws = Workspace.create(tmp_path)
    env = {**ws.env, "ONESEEK_MODEL_COUNT": "3", "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2"}
    result = subprocess.run(
        [*cli_command(), "train"],
        env=clean_env(tmp_path / "home", env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == EXIT_JOB_SHAPE, result.stdout[-2000:] + result.stderr[-2000:]
    finished = [json.loads(x) for x in result.stdout.splitlines() if '"group_finished"' in x]
    # The first worker's verdict; the other one exits with it or, stopped by the launcher
    # first, with SIGTERM's code (143 before training, 75 during it).
    codes = finished[0]["worker_exit_codes"]
    assert EXIT_JOB_SHAPE in codes and set(codes) <= {EXIT_JOB_SHAPE, EXIT_PREEMPTED, 143}
