"""The publish side of a `train` process with tiny fake adapters, for the commit-protocol tests.

No pytest here: the crash tests run :func:`attempt` in a fresh process per publish attempt
(forked from a multiprocessing forkserver that has imported this module once, so each attempt
skips the ~1 s of imports) and the process SIGKILLs itself at a fault point.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

from oneseek_job import certify, faultpoints, layout
from oneseek_job.documents import FileDigest, ModelResult, RunInputs
from oneseek_job.storage import LocalStore, S3Store, Store, open_store

__all__ = [
    "BIG_FILE_SIZE",
    "KEYS",
    "PART_SIZE",
    "VERSION",
    "adapter_files",
    "attempt",
    "certify_with",
    "inputs",
    "main",
    "result_for",
    "train",
]

VERSION = "1.0"
KEYS = ("kb-llama-3-1-8b-swedish", "qwen-2-5-7b")
# S3's smallest part (5 MiB, every part but the last): a file a bit larger goes up in two
# parts, so a kill can leave an unfinished multipart upload with a part on the server.
PART_SIZE = 5 * 1024 * 1024
BIG_FILE_SIZE = PART_SIZE + 64 * 1024


def inputs(seed: int = 1, models: tuple[str, ...] = KEYS) -> RunInputs:
    return RunInputs(
        models=list(models),
        dataset_sha256="d" * 64,
        hyperparameters={"lora": {"r": 8}, "train": {"seed": seed, "lr": 2e-4}},
        version=VERSION,
        language="sv",
    )


def adapter_files(tmp: Path, key: str, seed: int, *, big: bool = False) -> Path:
    """A model's output tree whose bytes depend only on (key, seed): like deterministic
    training, where another seed stands in for GPU nondeterminism. ``big``: the weights
    file is :data:`BIG_FILE_SIZE` bytes (a multipart upload on S3)."""
    rng = random.Random(f"{key}/{seed}")
    root = tmp / f"out-{key}-{seed}-{os.urandom(4).hex()}"  # each process its own dir
    adapter = root / "lora_adapters" / layout.adapter_dir_name(key)
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_model.safetensors").write_bytes(rng.randbytes(3000))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "seed": seed}))
    weights = root / "weights"
    weights.mkdir(exist_ok=True)
    size = BIG_FILE_SIZE if big else 1500
    (weights / layout.weights_file_name(VERSION, key)).write_bytes(rng.randbytes(size))
    return root


def result_for(
    key: str,
    seed: int,
    files: dict[str, FileDigest],
    position: int,
    started: str = "2025-11-23T00:00:00+00:00",
) -> ModelResult:
    return ModelResult(
        key=key,
        position=position,
        display_name=key,
        model_path=f"/models/{key}",
        architecture="LlamaForCausalLM",
        base_val_loss=3.0,
        final_val_loss=2.5,
        final_train_loss=2.25,
        improved=True,
        certified=True,
        steps=4,
        epochs=1,
        samples=8,
        train_tokens=512,
        duration_seconds=1.0,
        started_at=started,
        finished_at="2025-11-23T00:10:00+00:00",
        files=files,
        base_model_digests={"config.json": hashlib.sha256(key.encode()).hexdigest()},
        dataset_sha256="d" * 64,
        dataset_files=["civic.jsonl"],
        hyperparameters={"lora": {"r": 8}, "train": {"seed": seed}},
    )


def train(
    store: Store,
    run_id: str,
    tmp: Path,
    seed: int,
    keys: tuple[str, ...] = KEYS,
    started: str = "2025-11-23T00:00:00+00:00",
    *,
    big: bool = False,
) -> None:
    """What one `train` process does on the publish side (job.py): claim (a committed run
    is only finished), stage, mark done. ``big``: the first model's weights go up in parts."""
    if certify.claim_run(store, run_id, inputs(seed, keys)) is not None:
        certify.finish_run(store, run_id)
        return
    for position, key in enumerate(keys):
        tree = adapter_files(tmp, key, seed, big=big and position == 0)
        files = certify.stage_files(store, run_id, tree)
        certify.mark_done(store, result_for(key, seed, files, position, started), run_id)


def certify_with(store: Store, run_id: str, key_file: Path | None) -> certify.Certified:
    return certify.certify_run(
        store,
        run_id,
        version=VERSION,
        language="sv",
        allow_regression=False,
        image_digest=None,
        signing_key_file=key_file,
        expected=None,
    )


def main(argv: list[str]) -> None:
    """``KIND WHERE RUN_ID TMP KEY_FILE CRASH [KEY_ID SECRET]``: train (with a multipart
    file) and certify one run, SIGKILLed at fault point CRASH ('' = never).

    KIND ``local`` (WHERE a directory) or ``s3`` (WHERE ``endpoint|bucket/prefix``).
    """
    kind, where, run_id, tmp, key_file, crash = argv[:6]
    if crash:
        faultpoints.arm(crash)
    store: Store
    if kind == "local":
        store = LocalStore(Path(where))
    else:
        endpoint, location = where.split("|")
        store = open_store(
            f"s3://{location}",
            endpoint_url=endpoint,
            access_key_id=argv[6],
            secret_access_key=argv[7],
            part_size=PART_SIZE,
            multipart_threshold=PART_SIZE,
        )
    try:
        train(store, run_id, Path(tmp), seed=1, big=True)
        certify_with(store, run_id, Path(key_file))
    finally:
        if isinstance(store, S3Store):
            store.close()
    print("PUBLISHED", flush=True)


def attempt(argv: list[str], log_file: str) -> None:
    """:func:`main` with stdout and stderr going to ``log_file`` (a forked process's entry)."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
