"""A group that restarts with another number of processes resumes the same run.

The schedule is checked as arithmetic for any group size (Hypothesis): every step reads the
same blocks whatever the world size and micro-batch, and the ranks' slices cover them
exactly once. Then on real gloo processes on CPU, each started with exactly the environment
the launcher gives its workers (``Group.worker_env``): two processes train until one gets
SIGTERM and both exit 75 with a checkpoint, one process resumes and is preempted again, two
processes resume and finish, and the adapter equals an uninterrupted single-process run
within rtol=1e-4, atol=1e-5 (float summation order of the gradient all-reduce). Where the
math does not allow it (a step has fewer blocks than the new group has processes) the
workers refuse with exit 2 and the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED, Preempted
from oneseek_job.launch import Group
from oneseek_job.signals import STOP
from oneseek_job.training import train_model
from oneseek_job.training.schedule import BlockOrder, make_plan
from tests import _tiny
from tests.servers import free_port
from tests.test_training import make_records

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
SEQ_LEN = 64
# Three blocks per step: two processes split them 1 + 2, so their micro-batch counts differ
# (each reduces its gradient once, with its last backward).
BATCH = 3 * SEQ_LEN

# --------------------------------------------------------------------------- arithmetic


@settings(max_examples=60, deadline=None)
@given(
    n_blocks=st.integers(1, 40),
    batch_blocks=st.integers(1, 12),
    micro_batch=st.integers(1, 4),
    world=st.integers(1, 8),
    epochs=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_steps_read_the_same_blocks_for_any_group(
    n_blocks: int, batch_blocks: int, micro_batch: int, world: int, epochs: int, seed: int
) -> None:
    train = TrainSettings(
        seq_len=16, batch_tokens=16 * batch_blocks, micro_batch_size=micro_batch, epochs=epochs
    )
    alone = make_plan(n_blocks, 16, 1, train.model_copy(update={"micro_batch_size": 1}))
    plan = make_plan(n_blocks, 16, world, train)
    if batch_blocks < world:
        # Fewer blocks than processes: each process reads one (and a resize is refused).
        assert plan.step_blocks == world
        return
    assert (plan.step_blocks, plan.total_steps, plan.warmup_steps, plan.epochs) == (
        alone.step_blocks,
        alone.total_steps,
        alone.warmup_steps,
        alone.epochs,
    )
    order, reference = BlockOrder(plan, seed), BlockOrder(alone, seed)
    stream: list[int] = []
    for step in range(plan.total_steps):
        blocks = reference.step_indices(step)
        assert order.step_indices(step) == blocks
        stream.extend(blocks)
        ranks = [order.rank_micro_batches(step, rank) for rank in range(world)]
        # Rank by rank, micro-batch by micro-batch: the step's blocks, each once, in order.
        assert [b for rank in ranks for micro in rank for b in micro] == blocks
        assert all(1 <= len(micro) <= micro_batch for rank in ranks for micro in rank)
        sizes = [sum(len(micro) for micro in rank) for rank in ranks]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    # Every full epoch reads every block exactly once.
    for epoch in range(min(epochs, len(stream) // n_blocks)):
        assert sorted(stream[epoch * n_blocks : (epoch + 1) * n_blocks]) == list(range(n_blocks))


# --------------------------------------------------------------------------- gloo processes

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.test_resize import train_once
    from oneseek_job.errors import JobError
    from oneseek_job.signals import install_sigterm_handler

    install_sigterm_handler()  # what cli.main() does at process start
    out, batch_tokens = Path(sys.argv[1]), int(sys.argv[2])

    def slow(event):  # rank 0 only: a window for the test's SIGTERM from step 3 on
        if event["phase"] == "train" and event["step"] >= 3:
            (out / "ready").write_text(str(event["step"]))
            time.sleep(0.5)

    try:
        train_once(Path({model!r}), out, batch_tokens, on_progress=slow)
    except JobError as error:
        print(f"error: {{error}}", file=sys.stderr)
        sys.exit(error.exit_code)
    """
)


def train_once(model: Path, out: Path, batch_tokens: int, **kw: Any) -> Any:
    """One model, 10 steps of ``batch_tokens`` tokens (blocks of 64), no dropout: what every
    process of every group size trains."""
    return train_model(
        key="tiny",
        model_path=model,
        records=make_records(),
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        train=TrainSettings(
            seq_len=SEQ_LEN,
            batch_tokens=batch_tokens,
            max_steps=STEPS,
            learning_rate=3e-3,
            warmup_ratio=0.25,
            log_every=1,
            checkpoint_every=1000,
            seed=5,
        ),
        adapter_dir=out / "adapter",
        weights_path=out / "tiny.pth",
        checkpoint_dir=out / "ckpt",
        device="cpu",
        **kw,
    )


def start_workers(model: Path, out: Path, batch_tokens: int, world: int) -> list[Any]:
    """``world`` workers of one node, with the environment the launcher gives them."""
    script = out.parent / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), model=str(model)))
    group = Group(1, world, 0, "127.0.0.1", free_port())
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(out), str(batch_tokens)],
            cwd=ROOT,
            env={**_base_env(), **group.worker_env(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "PYTHONPATH", "LANG", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep} | {"OMP_NUM_THREADS": "1"}


def finish(workers: list[Any], timeout: float = 300) -> list[tuple[int, str]]:
    results = []
    for proc in workers:
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        results.append((proc.returncode, out))
    return results


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny.build_model(tmp_path_factory.mktemp("resize") / "tiny-llama", architecture="llama")


def step_of(checkpoint_dir: Path) -> int:
    """The newest checkpoint's step."""
    return max(int(p.name.removeprefix("step-")) for p in checkpoint_dir.glob("step-*"))


@pytest.mark.timeout(900)
def test_two_processes_then_one_then_two_reach_the_uninterrupted_adapter(
    tiny_model: Path, tmp_path: Path
) -> None:
    uninterrupted = tmp_path / "alone"
    train_once(tiny_model, uninterrupted, BATCH)
    reference = torch.load(uninterrupted / "tiny.pth", weights_only=True)

    # Two processes until SIGTERM: both exit 75, rank 0 saved the checkpoint.
    out = tmp_path / "group"
    out.mkdir()
    workers = start_workers(tiny_model, out, BATCH, world=2)
    deadline = time.monotonic() + 300
    while not (out / "ready").exists():
        assert all(w.poll() is None for w in workers), finish(workers)
        assert time.monotonic() < deadline, "the group never reached step 3"
        time.sleep(0.05)
    workers[1].send_signal(signal.SIGTERM)  # the kubelet stops the pod of rank 1
    results = finish(workers)
    assert [code for code, _ in results] == [EXIT_PREEMPTED] * 2, results
    first = step_of(out / "ckpt")
    assert 3 <= first <= STEPS - 3, first

    # The group comes back as one process (another nodesPerModel or gpu.count) and is
    # preempted again two steps later.
    def stop_two_steps_on(event: dict[str, Any]) -> None:
        if event["step"] == first + 2:
            STOP.set()

    try:
        with pytest.raises(Preempted):
            train_once(tiny_model, out, BATCH, on_progress=stop_two_steps_on)
    finally:
        STOP.clear()
    assert step_of(out / "ckpt") == first + 2
    assert not (out / "tiny.pth").exists()

    # Two processes again finish the run.
    results = finish(start_workers(tiny_model, out, BATCH, world=2))
    assert [code for code, _ in results] == [0, 0], results
    resumed = torch.load(out / "tiny.pth", weights_only=True)
    assert resumed.keys() == reference.keys() and reference
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-4, atol=1e-5)
        assert not torch.equal(reference[name], torch.zeros_like(reference[name])), name


@pytest.mark.timeout(600)
def test_a_group_larger_than_a_step_is_refused_with_the_reason(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "one-block"
    out.mkdir()

    def stop_at_two(event: dict[str, Any]) -> None:
        if event["step"] == 2:
            STOP.set()

    # One process, one block of 64 tokens per step: preempted with a checkpoint.
    try:
        with pytest.raises(Preempted):
            train_once(tiny_model, out, SEQ_LEN, on_progress=stop_at_two)
    finally:
        STOP.clear()
    assert [p.name for p in (out / "ckpt").glob("step-*")] == ["step-00000002"]

    # Two processes cannot share one block per step: both refuse, nothing is lost.
    results = finish(start_workers(tiny_model, out, SEQ_LEN, world=2))
    assert [code for code, _ in results] == [EXIT_BAD_INPUT] * 2, results
    for _, text in results:
        (line,) = [x for x in text.splitlines() if x.startswith("error: ")]
        assert "1 block(s) of 64 tokens per step, fewer than the 2 processes" in line
        assert "resume with at most 1 process(es)" in line
    assert [p.name for p in (out / "ckpt").glob("step-*")] == ["step-00000002"]
