"""Races of real ``oneseek-job`` processes on SeaweedFS and on moto (issue #12, point 2).

(a) ``train`` races: two ``oneseek-job train`` processes (the venv's console script) with one
RUN_ID and one signing key, the second started 0–5 s after the first (seeded offsets), on a
tiny real model trained for one optimizer step. Per trial the second racer differs from the
first in one way, in turn: nothing (same seed: CPU training is deterministic, so the same
bytes), ``ONESEEK_SEED`` (other inputs: refused when it claims the RUN_ID, or against the
committed MANIFEST), or the base model's weights under the same name (same RUN_ID inputs,
other trained bytes: the stand-in for GPU nondeterminism, decided by the done marker).

(b) ``certify`` races: three ``oneseek-job certify --run-id`` processes, each with its own
signing key, over a run whose two models were trained once by real ``train`` processes
(indices 0 and 1 of an Indexed Job under two source RUN_IDs, so neither reaches
certification); their staging areas are copied byte for byte into each trial's run.

Every trial has its own ARTIFACTS_URI prefix, so trials run a few at a time. Verdicts come
from outside the commit code: the ``oneseek-job verify --current`` CLI with the winner's
public key, the upstream ``model_signing`` verifier (the library call its ``verify key``
command makes; in-process, because a CLI start per directory would cost more than the
races), the S3 server's own listings (staging area, open multipart uploads), and each
racer's own trained files (left in its work dir) compared with what MANIFEST committed.

``ONESEEK_RACE_TRIALS`` sets the trials per server and race kind (default sized for CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import certify, demo, layout, provenance
from oneseek_job.documents import FileDigest, Manifest
from oneseek_job.errors import RunConflictError
from oneseek_job.storage import LocalStore
from tests import fake_run
from tests._reliability import TinyWorkspace, build_tiny_workspace, cli, events, job_env, start_cli
from tests.fixtures_s3 import S3Server, make_s3_store

# Trials per server. A train race costs ~28 CPU-seconds (two job processes, each mostly
# torch/transformers start-up), a certify race ~10: CI (2 cores, a 30-minute budget for the
# whole suite) runs a few of each; the 20 per server are run with
# ONESEEK_RACE_TRIALS=20 (docs/operations.md gives the outcome of that run).
_ASKED = os.environ.get("ONESEEK_RACE_TRIALS")
TRAIN_TRIALS = int(_ASKED or 3)  # one of each variant
CERTIFY_TRIALS = int(_ASKED or 6)
pytestmark = pytest.mark.timeout(300 + 90 * max(TRAIN_TRIALS, CERTIFY_TRIALS))
PARALLEL = 3  # trials at once: 6 training processes fill 2 cores while offsets sleep
MAX_OFFSET_S = 5.0
BUCKET = "oneseek-tests"
KB = "kb-llama-3-1-8b-swedish"
QWEN = "qwen-2-5-7b"
VARIANTS = ("same-seed", "other-seed", "other-weights")
# A racer that refuses with exit 2 says what to do about it.
CONFLICT_WORDS = ("use a new RUN_ID", "already certified by signer", "certified first by another")

_upstream_lock = threading.Lock()


# ----------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Workspace:
    tiny: TinyWorkspace  # KB (seed-0 weights) and Qwen, the demo's dataset slice
    other_models: Path  # the same KB model name with other (seed-1) weights
    keys: list[tuple[Path, Path]]  # three ECDSA P-256 key pairs (private, public)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("races-cli")
    tiny = build_tiny_workspace(root / "ws")
    base = tiny.models / "oneseek-7b-zero" / "base_models"
    tokenizer = base / KB
    demo.build_tiny_model(
        base / QWEN, architecture="qwen2", display_name="Qwen-2.5-7B", tokenizer_dir=tokenizer
    )
    other = root / "other-models"
    demo.build_tiny_model(
        other / "oneseek-7b-zero" / "base_models" / KB,
        architecture="llama",
        display_name=tiny.display_name,
        tokenizer_dir=tokenizer,
        seed=1,
    )
    keys = [provenance.generate_keypair(root / "keys", name=f"k{i}") for i in range(3)]
    return Workspace(tiny=tiny, other_models=other, keys=keys)


def _server(kind: str, request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue("moto" if kind == "moto" else "seaweed")
    if kind == "seaweedfs":
        request.getfixturevalue("fresh_bucket")
    return server


def _s3_env(server: S3Server) -> dict[str, str]:
    return {
        "S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.admin.access_key,
        "AWS_SECRET_ACCESS_KEY": server.admin.secret_key,
        "AWS_REGION": server.region,
    }


def _train_env(
    ws: Workspace, server: S3Server, workdir: Path, uri: str, run_id: str, **extra: str
) -> dict[str, str]:
    return job_env(
        ws.tiny,
        workdir,
        RUN_ID=run_id,
        ARTIFACTS_URI=uri,
        ONESEEK_MAX_STEPS="1",
        ONESEEK_TENSORBOARD="false",
        ONESEEK_SIGNING_KEY_FILE=str(ws.keys[0][0]),
        **_s3_env(server),
        **extra,
    )


@pytest.fixture(scope="module")
def certify_source(
    ws: Workspace, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    """The staging area of a two-model run whose models are trained but not certified:
    run-relative staging key → bytes.

    Two real ``train`` processes, indices 0 and 1 of ``BASE_MODELS=KB,Qwen`` under two RUN_IDs:
    each trains its model, stages it, writes its done marker and waits for the other model
    (``waiting_for_models``), so neither certifies. Their staging areas merge into one run
    (the identity is the same; the markers and blobs are each index's own).
    """
    server = _server("seaweedfs", request)
    root = tmp_path_factory.mktemp("certify-source")
    uri = f"s3://{BUCKET}/races-cli/source"
    names = f"{ws.tiny.display_name},Qwen-2.5-7B"
    racers = [
        start_cli(
            ["train"],
            _train_env(
                ws,
                server,
                root / f"i{i}",
                uri,
                f"run-source-{i}",
                BASE_MODELS=names,
                ONESEEK_MODEL_INDEX=str(i),
            ),
        )
        for i in range(2)
    ]
    client = server.client()
    merged: dict[str, bytes] = {}
    for i, racer in enumerate(racers):
        code, out, err = racer.finish(timeout=600)
        assert code == 0 and events(out, "waiting_for_models"), err[-2000:]
        assert not events(out, "committed")
        staging = f"races-cli/source/{layout.staging_prefix(f'run-source-{i}')}"
        for key in _list(client, staging):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            merged[key.removeprefix(staging)] = body
    assert {f"done/{KB}.json", f"done/{QWEN}.json", "identity.json"} <= set(merged)
    return merged


# ----------------------------------------------------------------------------- helpers


def _list(client: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Racer:
    name: str
    start_delay: float
    code: int = -1
    out: str = ""
    err: str = ""
    fingerprint: str = ""  # of its signing key
    trained: dict[str, str] | None = None  # its own adapter/weights files (path → sha256)

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    def describe(self) -> str:
        last = (self.error_lines() or ["(no error line)"])[-1]
        return f"{self.name}+{self.start_delay:.2f}s→{self.code} {last[:160]}"


def _race(racers: list[Racer], args: list[list[str]], envs: list[dict[str, str]]) -> None:
    """Start each racer's ``oneseek-job`` at its delay; wait for all of them."""

    def one(i: int) -> None:
        time.sleep(racers[i].start_delay)
        code, out, err = start_cli(args[i], envs[i]).finish(timeout=600)
        racers[i].code, racers[i].out, racers[i].err = code, out, err

    with ThreadPoolExecutor(max_workers=len(racers)) as pool:
        list(pool.map(one, range(len(racers))))


def _upstream_verify(directory: Path, public: Path) -> str | None:
    """None when the upstream OMS verifier accepts ``directory/model.sig``, else why not.

    The same calls ``model_signing verify key DIR --signature DIR/model.sig --public_key P``
    makes (tests/test_certify.py runs that command itself).
    """
    import model_signing

    signature = directory / layout.OMS_SIGNATURE_NAME
    try:
        with _upstream_lock:
            model_signing.verifying.Config().use_elliptic_key_verifier(
                public_key=public
            ).set_hashing_config(
                model_signing.hashing.Config().set_ignored_paths(
                    paths=[signature], ignore_git_paths=True
                )
            ).verify(directory, signature)
    except Exception as error:
        return f"{directory.name}: {type(error).__name__}: {str(error)[:200]}"
    return None


def _check_published(
    server: S3Server,
    prefix: str,
    run_id: str,
    public: Path,
    env: dict[str, str],
    download: Path,
) -> tuple[list[str], Manifest | None]:
    """Problems with the published run (empty when it is all right), and its MANIFEST."""
    problems: list[str] = []
    uri = f"s3://{BUCKET}/{prefix}"
    checked = cli(["verify", uri, "--current", "--public-key", str(public), "--json"], env)
    if checked.returncode != 0:
        failing = [c for c in _json_checks(checked.stdout) if not c.get("ok")]
        problems.append(f"verify --current exit {checked.returncode}: {failing or checked.stderr}")
    client = server.client()
    try:
        pointer = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{layout.CURRENT_KEY}")
        current = layout.run_id_from_pointer(pointer["Body"].read().decode())
    except client.exceptions.NoSuchKey:
        current = None
    if current != run_id:
        problems.append(f"CURRENT names {current!r}")
    left = _list(client, f"{prefix}/{layout.staging_prefix(run_id)}")
    if left:
        problems.append(f"staging left: {[k.rsplit('/', 2)[-2:] for k in left][:4]}")
    uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")
    if uploads:
        problems.append(f"{len(uploads)} multipart upload(s) open")
    run = f"{prefix}/{layout.run_prefix(run_id)}"
    for key in _list(client, run):
        target = download / key.removeprefix(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    manifest_path = download / layout.MANIFEST_NAME
    if not manifest_path.is_file():
        return [*problems, "no MANIFEST.json"], None
    manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    signed_dirs = [download] + [
        download / f.path.rsplit("/", 1)[0]
        for f in manifest.files
        if f.path.startswith("lora_adapters/") and f.path.endswith(layout.OMS_SIGNATURE_NAME)
    ]
    if len(signed_dirs) < 2:
        problems.append("no OMS signature in an adapter directory")
    problems.extend(p for d in signed_dirs if (p := _upstream_verify(d, public)) is not None)
    return problems, manifest


def _json_checks(stdout: str) -> list[dict[str, Any]]:
    try:
        return list(json.loads(stdout)["checks"])
    except (ValueError, KeyError, TypeError):
        return []


def _racer_problems(racer: Racer) -> list[str]:
    """What every racer must hold to: exit 0 or 2, one ``error:`` line with 2, no traceback."""
    problems: list[str] = []
    if "Traceback" in racer.out + racer.err:
        problems.append(f"{racer.name}: a traceback")
    if racer.code not in (0, 2):
        problems.append(f"{racer.name}: exit {racer.code}: {racer.err[-600:]}")
    lines = racer.error_lines()
    if racer.code == 2:
        tail = [line for line in racer.err.splitlines() if line.strip()][-1:]
        if len(lines) != 1 or tail != lines:
            problems.append(f"{racer.name}: not one last error line: {lines or racer.err[-400:]}")
        elif not any(words in lines[0] for words in CONFLICT_WORDS):
            problems.append(f"{racer.name}: unclear error line: {lines[0]}")
    elif lines:
        problems.append(f"{racer.name}: exit {racer.code} with {lines}")
    return problems


def _trained_files(workdir: Path, run_id: str) -> dict[str, str] | None:
    """The adapter and weights files this racer trained (its work dir keeps them), or None
    when it stopped before training."""
    staging = workdir / "work" / run_id / "staging" / KB
    if not staging.is_dir():
        return None
    return {
        path.relative_to(staging).as_posix(): _sha256(path)
        for sub in ("lora_adapters", "weights")
        for path in sorted((staging / sub).rglob("*"))
        if path.is_file()
    }


def _run_trials(
    count: int, trial: Callable[[int], dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    """Every trial, PARALLEL at a time; and what they cost (wall and the children's CPU)."""
    started, cpu = time.monotonic(), _children_cpu()
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(trial, range(count)))
    return results, f"{time.monotonic() - started:.0f}s wall, {_children_cpu() - cpu:.0f} CPU-s"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- (a) train races


@pytest.mark.parametrize("kind", ["seaweedfs", "moto"])
def test_two_train_processes_of_one_run_id_end_with_a_run_that_verifies(
    kind: str, ws: Workspace, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = _server(kind, request)
    rng = random.Random(f"train-races-{kind}")
    plan = [
        (VARIANTS[t % len(VARIANTS)], round(rng.uniform(0, MAX_OFFSET_S), 2))
        for t in range(TRAIN_TRIALS)
    ]
    public = ws.keys[0][1]
    fingerprint = provenance.public_key_fingerprint(provenance.load_public_key(public))

    def trial(t: int) -> dict[str, Any]:
        variant, offset = plan[t]
        run_id = f"run-race-{t:02d}"
        prefix = f"races-cli/{kind}/train-{t:02d}"
        uri = f"s3://{BUCKET}/{prefix}"
        home = tmp_path / f"t{t:02d}"
        racers = [Racer("first", 0.0), Racer("second", offset)]
        second: dict[str, str] = {
            "same-seed": {},
            "other-seed": {"ONESEEK_SEED": "8"},
            "other-weights": {"MODELS_DIR": str(ws.other_models)},
        }[variant]
        envs = [
            _train_env(ws, server, home / "r0", uri, run_id),
            _train_env(ws, server, home / "r1", uri, run_id, **second),
        ]
        _race(racers, [["train"], ["train"]], envs)
        problems = [p for racer in racers for p in _racer_problems(racer)]
        published, manifest = _check_published(
            server, prefix, run_id, public, envs[0], home / "download"
        )
        problems += published
        committed = sum(len(events(r.out, "committed")) for r in racers)
        if committed != 1:
            problems.append(f"{committed} processes committed")
        if manifest is not None and manifest.signer_fingerprint != fingerprint:
            problems.append("MANIFEST signed by another key")
        # Whose bytes did the run commit, and did each racer exit as its own bytes say?
        pinned = {f.path: f.sha256 for f in manifest.files} if manifest else {}
        identical: list[bool | None] = []
        for racer, env in zip(racers, envs, strict=True):
            racer.trained = _trained_files(Path(env["ONESEEK_WORK_DIR"]).parent, run_id)
            same = (
                None
                if racer.trained is None
                else all(pinned.get(p) == sha for p, sha in racer.trained.items())
            )
            identical.append(same)
        winners = [i for i, same in enumerate(identical) if same]
        if not winners:
            problems.append("no racer trained the committed bytes")
        flavours = ["base", "base" if variant == "same-seed" else variant]
        won = flavours[winners[0]] if winners else None
        for i, racer in enumerate(racers):
            expected = 0 if flavours[i] == won else 2
            if racer.code != expected:
                problems.append(f"{racer.name} ({flavours[i]}) exit {racer.code}, want {expected}")
            if identical[i] is not None and identical[i] != (flavours[i] == won):
                problems.append(
                    f"{racer.name}: trained bytes {'equal' if identical[i] else 'differ'}"
                )
        losers = [r for r in racers if r.code == 2]
        return {
            "trial": t,
            "variant": variant,
            "offset": offset,
            "committer": [r.name for r in racers if events(r.out, "committed")],
            "all_exit_0": all(r.code == 0 for r in racers),
            "loser_exit_2": len(losers),
            "loser_trained": sum(1 for r in losers if r.trained is not None),
            "racers": [r.describe() for r in racers],
            "problems": problems,
        }

    results, cost = _run_trials(TRAIN_TRIALS, trial)
    by_variant = Counter(r["variant"] for r in results)
    summary = (
        f"{kind}: {len(results)} train races, {cost} ({dict(by_variant)}); "
        f"identical content, both exit 0: {sum(r['all_exit_0'] for r in results)}; losers "
        f"exit 2: {sum(r['loser_exit_2'] for r in results)} (after training: "
        f"{sum(r['loser_trained'] for r in results)}); committed by the second racer: "
        f"{sum(r['committer'] == ['second'] for r in results)}"
    )
    failed = [r for r in results if r["problems"]]
    print(summary)
    assert not failed, (
        summary
        + "\n"
        + "\n".join(
            f"trial {r['trial']} {r['variant']} +{r['offset']}s: {r['problems']} {r['racers']}"
            for r in failed
        )
    )


# ----------------------------------------------------------------------------- (b) certifiers


@pytest.mark.parametrize("kind", ["seaweedfs", "moto"])
def test_three_certifiers_with_different_keys_never_leave_a_run_that_fails_verify(
    kind: str,
    ws: Workspace,
    certify_source: dict[str, bytes],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    server = _server(kind, request)
    client = server.client()
    copier = make_s3_store(server, BUCKET, f"races-cli/{kind}")
    assert copier.capabilities.conditional_put  # probed once, before the trial threads
    rng = random.Random(f"certify-races-{kind}")
    fingerprints = [
        provenance.public_key_fingerprint(provenance.load_public_key(public))
        for _, public in ws.keys
    ]

    def trial(t: int) -> dict[str, Any]:
        run_id = f"run-certify-{t:02d}"
        prefix = f"races-cli/{kind}/certify-{t:02d}"
        uri = f"s3://{BUCKET}/{prefix}"
        home = tmp_path / f"t{t:02d}"
        # Written the way the job writes them (put_bytes records each object's SHA-256).
        staging = f"certify-{t:02d}/{layout.staging_prefix(run_id)}"
        for relative, body in certify_source.items():
            copier.put_bytes(staging + relative, body)
        racers = [
            Racer(f"key{i}", round(rng.uniform(0, 0.5), 2), fingerprint=fingerprints[i])
            for i in range(3)
        ]
        envs = []
        for i, (private, _) in enumerate(ws.keys):
            env = job_env(ws.tiny, home / f"c{i}", **_s3_env(server))
            env["ONESEEK_SIGNING_KEY_FILE"] = str(private)
            envs.append(env)
        _race(racers, [["certify", "--run-id", run_id, "--artifacts-uri", uri]] * 3, envs)
        problems = [p for racer in racers for p in _racer_problems(racer)]
        manifest_key = f"{prefix}/{layout.run_prefix(run_id)}{layout.MANIFEST_NAME}"
        manifest = Manifest.model_validate_json(
            client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read()
        )
        winner = fingerprints.index(str(manifest.signer_fingerprint))
        published, _ = _check_published(
            server, prefix, run_id, ws.keys[winner][1], envs[0], home / "download"
        )
        problems += published
        if [r.code for r in racers].count(0) != 1 or racers[winner].code != 0:
            problems.append(f"exit codes {[r.code for r in racers]}, key{winner} signed")
        committed = sum(len(events(r.out, "committed")) for r in racers)
        if committed != 1:
            problems.append(f"{committed} processes committed")
        return {
            "trial": t,
            "winner": winner,
            "codes": [r.code for r in racers],
            "racers": [r.describe() for r in racers],
            "problems": problems,
        }

    results, cost = _run_trials(CERTIFY_TRIALS, trial)
    copier.close()
    wins = Counter(f"key{r['winner']}" for r in results)
    summary = (
        f"{kind}: {len(results)} certify races of 3 keys, {cost}; commits by key: "
        f"{dict(sorted(wins.items()))}; losers exit 2: "
        f"{sum(r['codes'].count(2) for r in results)} of {2 * len(results)}"
    )
    failed = [r for r in results if r["problems"]]
    print(summary)
    assert not failed, (
        summary
        + "\n"
        + "\n".join(f"trial {r['trial']}: {r['problems']} {r['racers']}" for r in failed)
    )


# ----------------------------------------------------------------------------- found by the races


def test_a_loser_with_the_same_trained_bytes_but_other_telemetry_is_not_a_conflict(
    tmp_path: Path,
) -> None:
    """Two attempts of one seed train the same adapter, but their metrics/ histories carry
    their own timings: the second attempt exited 2 ("other bytes") until only the trained
    files were compared."""
    store = LocalStore(tmp_path / "store")
    dataset = "d" * 64
    first = fake_run.upload_model(store, "run-t", fake_run.KB, dataset, allow_regression=True)
    history = f"{layout.METRICS_DIR}/{fake_run.KB.key}.jsonl"
    other = FileDigest(size=10, sha256="e" * 64)
    again = first.model_copy(update={"files": {**first.files, history: other}})
    assert certify.mark_done(store, again, "run-t") is False  # the first marker is kept
    adapter = next(p for p in first.files if p.endswith(".safetensors"))
    changed = first.model_copy(update={"files": {**first.files, adapter: other}})
    with pytest.raises(RunConflictError, match="other bytes"):
        certify.mark_done(store, changed, "run-t")


def test_a_loser_finishing_after_the_commit_leaves_nothing_in_staging(tmp_path: Path) -> None:
    """A second attempt that claimed the run before it committed and finished training after
    the certifier removed the staging area: its blobs and done marker used to stay there."""
    run = fake_run.make_run(tmp_path / "store")
    staging = layout.staging_prefix(run.run_id)
    assert not list(run.store.list(staging))
    with pytest.raises(RunConflictError, match="other bytes"):
        fake_run.upload_model(
            run.store, run.run_id, fake_run.KB, run.dataset_sha256, allow_regression=False
        )
    assert not list(run.store.list(staging))
    assert not fake_run.failures(run.verify())
