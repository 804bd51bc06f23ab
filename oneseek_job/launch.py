"""Run one node's share of a multi-node (or multi-GPU) group, keeping the workers' exit codes.

In a JobSet group (or a Kubeflow TrainJob) every pod gets torchrun's settings as ``PET_*``
variables: ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``. ``oneseek-job train`` then starts ``PET_NPROC_PER_NODE`` workers of itself
with the environment torchrun's static rendezvous gives them (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); the
workers form the process group over ``env://`` exactly as under torchrun.

Why not torchrun itself: its agent turns a worker's exit 75 / 2 / 3 into 1, which defeats
the podFailurePolicy and JobSet's failure rules, and on SIGTERM it gives the workers a fixed
30 s before SIGKILL, less than a checkpoint of a large model takes. Here SIGTERM goes to
every worker (they agree to stop, save a checkpoint and exit 75), the launcher waits for
them for as long as the pod's grace period lets it, and exits with the most telling of their
codes: 4, 2, 3 (a verdict: do not retry) before 75 (preempted, resume) before 1. When one
worker fails, the others are stopped the same way: they would otherwise wait in a
collective until the group's timeout. Restarts are the group's job (JobSet
``failurePolicy.maxRestarts``), not the launcher's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from oneseek_job.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_JOB_SHAPE,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_RESOLUTION,
    ConfigError,
)
from oneseek_job.logs import get_logger

__all__ = ["Group", "group_exit_code", "group_from_env", "maybe_launch", "run_group"]

log = get_logger(__name__)

# Most telling first: a verdict that no retry can change, then "preempted, resume".
_PRIORITY = (EXIT_JOB_SHAPE, EXIT_BAD_INPUT, EXIT_RESOLUTION, EXIT_PREEMPTED)
# After a worker failed, how long the others get to stop by themselves before SIGKILL.
STOP_GRACE_S = 120.0


@dataclass(frozen=True)
class Group:
    """This node's place in the group (torchrun's static rendezvous)."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def worker_env(self, local_rank: int) -> dict[str, str]:
        """The variables torchrun sets for one worker."""
        rank = self.node_rank * self.nproc_per_node + local_rank
        return {
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.nproc_per_node),
            "GROUP_RANK": str(self.node_rank),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0",
        }


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name, "").strip()
    if not value:
        if default is None:
            raise ConfigError(f"{name} is required in a multi-node group")
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(
            f"{name}={value!r}: a fixed whole number is needed (no elastic ranges)"
        ) from None
    if number < 0:
        raise ConfigError(f"{name}={value!r} must not be negative")
    return number


def group_from_env(env: Mapping[str, str]) -> Group | None:
    """The group this pod belongs to, or None when it trains alone (or is a worker already).

    Raises:
        ConfigError: PET_* values that cannot describe a group.
    """
    if "LOCAL_RANK" in env:  # a worker (of ours or of torchrun): train, do not launch
        return None
    nnodes = _int(env, "PET_NNODES", 1)
    nproc = _int(env, "PET_NPROC_PER_NODE", 1)
    if nnodes <= 1 and nproc <= 1:
        return None
    if nnodes < 1 or nproc < 1:
        raise ConfigError("PET_NNODES and PET_NPROC_PER_NODE must be at least 1")
    node_rank = _int(env, "PET_NODE_RANK", 0 if nnodes == 1 else None)
    if node_rank >= nnodes:
        raise ConfigError(f"PET_NODE_RANK={node_rank} but the group has {nnodes} node(s)")
    addr = env.get("PET_MASTER_ADDR", "").strip() or ("127.0.0.1" if nnodes == 1 else "")
    if not addr:
        raise ConfigError("PET_MASTER_ADDR is required in a multi-node group")
    port = _int(env, "PET_MASTER_PORT", 29500)
    if not 0 < port < 65536:
        raise ConfigError(f"PET_MASTER_PORT={port} is not a TCP port")
    return Group(nnodes, nproc, node_rank, addr, port)


def group_exit_code(codes: Sequence[int]) -> int:
    """The group's exit code from its workers': a verdict, else preempted, else failed."""
    if all(code == EXIT_OK for code in codes):
        return EXIT_OK
    for wanted in _PRIORITY:
        if wanted in codes:
            return wanted
    return EXIT_FAILED


def run_group(
    group: Group,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stop_grace_s: float = STOP_GRACE_S,
) -> int:
    """Start this node's workers (``oneseek-job <argv>``), wait, return the group's exit code.

    Args:
        group: this node's place in the group.
        argv: the CLI arguments the workers run (``["train", ...]``).
        env: the environment the workers inherit (plus their ranks).
        stop_grace_s: after a worker failed, how long the others get before SIGKILL.
    """
    command = [sys.executable, "-m", "oneseek_job.cli", *argv]
    workers = [
        subprocess.Popen(command, env={**env, **group.worker_env(local)})
        for local in range(group.nproc_per_node)
    ]
    log.info(
        "group_started",
        tag="mode",
        nnodes=group.nnodes,
        node_rank=group.node_rank,
        nproc_per_node=group.nproc_per_node,
        master=f"{group.master_addr}:{group.master_port}",
        pids=[w.pid for w in workers],
    )
    stopping: list[float] = []  # when we asked the workers to stop (SIGTERM)

    def stop(reason: str) -> None:
        if stopping:
            return
        stopping.append(time.monotonic())
        log.warning("group_stopping", tag="mode", reason=reason)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # The kubelet's SIGTERM: pass it on; the workers save a checkpoint and exit 75.
        stop("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while any(w.poll() is None for w in workers):
            failed = [w.returncode for w in workers if w.returncode not in (None, EXIT_OK)]
            if failed:
                stop(f"a worker exited {failed[0]}")
                if time.monotonic() - stopping[0] > stop_grace_s:
                    for worker in workers:
                        if worker.poll() is None:
                            worker.kill()
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    codes = [_code(w.returncode) for w in workers]
    result = group_exit_code(codes)
    log.info("group_finished", tag="mode", worker_exit_codes=codes, exit_code=result)
    return result


def _code(returncode: int | None) -> int:
    # A worker killed by a signal reports -N; the shell convention is 128 + N.
    if returncode is None:
        return EXIT_FAILED
    return 128 - returncode if returncode < 0 else returncode


def maybe_launch(argv: Sequence[str]) -> int | None:
    """``cli.train``'s entry: run the group when this pod is one node of it, else None."""
    group = group_from_env(os.environ)
    if group is None:
        return None
    return run_group(group, argv, dict(os.environ))
