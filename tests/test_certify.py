"""The commit protocol against every store (local, SeaweedFS, moto): immutability, run
identity, racing trainers and certifiers, crash convergence, CURRENT ordering, probes, and
OpenSSF model signatures checked by the upstream verifier.

The races drive the publish layer (staging, done markers, certification) of tiny fake
adapters from threads, so many trials stay cheap; test_races_cli.py races the real CLI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import certify, layout, provenance, verify
from oneseek_job.errors import ConfigError, IntegrityError, RunConflictError
from oneseek_job.storage import LocalStore, S3Store, Store, check_writable
from tests import publish_fakes
from tests._reliability import TinyWorkspace, cli, job_env
from tests.fixtures_s3 import S3Server, make_s3_store
from tests.publish_fakes import (
    KEYS,
    VERSION,
    adapter_files,
    certify_with,
    inputs,
    result_for,
    train,
)
from tests.servers import fault_proxy

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def snapshot(store: Store, run_id: str) -> dict[str, str]:
    return {i.key: i.sha256 for i in store.list(layout.run_prefix(run_id))}


def check_ok(store: Store, run_id: str, public: Path | None) -> verify.VerifyReport:
    key = provenance.load_public_key(public) if public else None
    report = verify.verify_run(store, run_id, public_key=key, allow_unsigned=public is None)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    return report


def open_kind(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "local":
        return LocalStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("moto" if kind == "moto" else "seaweed")
    if kind == "seaweedfs":
        request.getfixturevalue("fresh_bucket")
    return make_s3_store(server, "oneseek-tests")


@pytest.fixture(params=["local", "seaweedfs", "moto"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store = open_kind(request.param, request, tmp_path)
    yield store
    if isinstance(store, S3Store):
        store.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return [provenance.generate_keypair(root, name=f"k{i}") for i in range(3)]


def fresh(store: Store) -> Store:
    """Another client of the same store (a second process has its own)."""
    if isinstance(store, S3Store):
        return S3Store(store.bucket, store.prefix, store.client, part_size=store.part_size)
    assert isinstance(store, LocalStore)
    return LocalStore(store.root)


# ----------------------------------------------------------------------------- immutability


def test_committed_run_is_never_written_again(
    any_store: Store, tmp_path: Path, keys: list[tuple[Path, Path]]
) -> None:
    train(any_store, "run-imm", tmp_path, seed=1)
    certify_with(any_store, "run-imm", keys[0][0])
    before = snapshot(any_store, "run-imm")
    assert not list(any_store.list(layout.staging_prefix("run-imm")))
    # A late trainer with other bytes, and a certifier with another key: both refused, and
    # not one object under the run prefix changes.
    with pytest.raises(RunConflictError, match="other inputs"):
        train(any_store, "run-imm", tmp_path, seed=2)
    # An old-style trainer that skips the identity check and stages other bytes is refused
    # at its done marker (the committed MANIFEST names other bytes for the model).
    files = certify.stage_files(any_store, "run-imm", adapter_files(tmp_path, KEYS[0], 3))
    with pytest.raises(RunConflictError, match="other bytes"):
        certify.mark_done(any_store, result_for(KEYS[0], 3, files, 0), "run-imm")
    # A certifier with another key: refused, the run is kept as it is.
    with pytest.raises(RunConflictError, match="already certified by signer"):
        certify.certify_run(
            any_store,
            "run-imm",
            version=VERSION,
            language="sv",
            allow_regression=False,
            image_digest=None,
            signing_key_file=keys[1][0],
            expected=None,
        )
    assert snapshot(any_store, "run-imm") == before
    check_ok(any_store, "run-imm", keys[0][1])


# Trials per store, sized for CI on a 2-core VM: a moto trial (a Python server, every upload
# read back) costs ~10x a local one. On S3 these thread races keep the tight 0–0.3 s window
# that processes cannot hit reliably; tests/test_races_cli.py races real `oneseek-job`
# processes on both servers. 20 + 3 + 2 = 25 races of each kind per test run.
TRIALS = {"local": 20, "seaweedfs": 3, "moto": 2}


@pytest.mark.parametrize("trial_set", ["trainers", "certifiers"])
@pytest.mark.parametrize("kind", list(TRIALS))
def test_races_never_leave_a_run_that_fails_verify(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    keys: list[tuple[Path, Path]],
    trial_set: str,
) -> None:
    """Races per store: two trainers of one RUN_ID (the second 0–0.3 s later; identical
    seeds in even trials, different in odd ones), or three certifiers with different keys."""
    any_store = open_kind(kind, request, tmp_path)
    rng = random.Random(12)
    for trial in range(TRIALS[kind]):
        run_id = f"run-race-{trial_set}-{trial}"
        outcomes: dict[int, BaseException | None] = {}

        delay = rng.uniform(0, 0.3)

        def racer(
            i: int,
            run_id: str = run_id,
            outcomes: dict[int, BaseException | None] = outcomes,
            trial: int = trial,
            delay: float = delay,
        ) -> None:
            store = fresh(any_store)
            try:
                if trial_set == "trainers":
                    time.sleep(delay if i else 0)
                    seed = 1 if trial % 2 == 0 else 1 + i
                    train(store, run_id, tmp_path, seed=seed)
                    certify_with(store, run_id, keys[0][0])
                else:
                    certify_with(store, run_id, keys[i][0])
                outcomes[i] = None
            except RunConflictError as conflict:
                outcomes[i] = conflict

        if trial_set == "certifiers":
            train(any_store, run_id, tmp_path, seed=1)
        racers = 2 if trial_set == "trainers" else 3
        threads = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(outcomes) == racers, outcomes  # nobody died of anything but a conflict
        manifest = certify.read_manifest(any_store, run_id)
        assert manifest is not None
        winner = next(
            i
            for i, (_, public) in enumerate(keys)
            if manifest.signer_fingerprint
            == provenance.public_key_fingerprint(provenance.load_public_key(public))
        )
        check_ok(any_store, run_id, keys[winner][1])
        assert certify.read_current(any_store) is not None
        assert not list(any_store.list(layout.staging_prefix(run_id)))
        conflicts = [i for i, error in outcomes.items() if error is not None]
        if trial_set == "trainers" and trial % 2 == 0:
            assert conflicts == []  # identical content: the loser exits 0
        else:
            assert len(conflicts) == racers - 1  # every loser is told why (exit 2)
            for i in conflicts:
                reason = str(outcomes[i])
                assert any(
                    words in reason
                    for words in ("use a new RUN_ID", "other content", "already certified by")
                ), reason


# ----------------------------------------------------------------------------- identity


def test_run_id_is_bound_to_its_inputs(any_store: Store, tmp_path: Path) -> None:
    assert certify.claim_run(any_store, "run-id", inputs(seed=1)) is None
    assert certify.claim_run(any_store, "run-id", inputs(seed=1)) is None  # a retry: fine
    with pytest.raises(RunConflictError) as refused:
        certify.claim_run(any_store, "run-id", inputs(seed=7, models=KEYS[:1]))
    message = str(refused.value)
    assert "hyperparameters.train.seed: 1 → 7" in message and "models" in message
    train(any_store, "run-id", tmp_path, seed=1)
    certify_with(any_store, "run-id", None)
    manifest = certify.claim_run(any_store, "run-id", inputs(seed=1))
    assert manifest is not None and manifest.inputs == inputs(seed=1)
    with pytest.raises(RunConflictError, match="dataset_sha256"):
        certify.claim_run(
            any_store, "run-id", inputs(seed=1).model_copy(update={"dataset_sha256": "e" * 64})
        )
    with pytest.raises(RunConflictError, match=r"config\.json"):
        certify.check_model_inputs("run-id", manifest, KEYS[0], {"config.json": "0" * 64})


def test_model_fingerprint_is_per_model_and_ignores_the_model_list() -> None:
    shared = inputs(seed=1).model_dump()
    one = provenance.model_fingerprint("a", {"w": "1" * 64}, shared)
    assert one == provenance.model_fingerprint(
        "a", {"w": "1" * 64}, {**shared, "models": ["a", "b", "c"]}
    )
    assert one != provenance.model_fingerprint("a", {"w": "2" * 64}, shared)
    assert one != provenance.model_fingerprint("a", {"w": "1" * 64}, inputs(seed=2).model_dump())


# ----------------------------------------------------------------------------- crash + retry

# Every kind of step boundary of oneseek_job/faultpoints.py, at its first occurrence and where
# the state differs, its last. For one run of the publisher below (2 models, 6 model files,
# one of them multipart; 6 documents + 3 OMS signatures + the MANIFEST signature staged; 15
# files + MANIFEST.json.sig created under the run; 9 promotion copies; 4 stale files of the
# older run pruned). A step that is not reached fails the test (no SIGKILL, exit 0).
CRASH_STEPS = [
    "claimed",  # identity bound, nothing staged
    "partial#1",  # S3: a multipart upload with a part sent; local: a temp file not renamed
    "staged#1",  # first model file stored while the others are in flight
    "staged#3",  # the first model's files all staged, no done marker
    "done#1",  # between the models
    "done#2",  # every model done, nobody certified
    "staged#7",  # the first run document staged
    "staged#16",  # the MANIFEST signature staged: everything but the commit
    "committed",  # MANIFEST.json exists, nothing materialized
    "materialized#1",
    "materialized#16",  # MANIFEST.json.sig, the last file under the run
    "promoted#1",
    "promoted#9",  # every copy made, the older run's files still at the latest paths
    "pruned#1",
    "before_current",
    "current",  # CURRENT set, the staging area still there
    "unstaged#1",  # the staging area half removed
]

STORE_KINDS = ["local", "seaweedfs", "moto"]


def test_crash_steps_cover_every_fault_point() -> None:
    """Each fault point the code reaches is a known step, and each step is killed at."""
    from oneseek_job import faultpoints

    sources = [REPO / "oneseek_job" / name for name in ("certify.py", "job.py", "storage.py")]
    reached = {
        step
        for source in sources
        for step in re.findall(r'faultpoints\.reached\("(\w+)"\)', source.read_text())
    }
    assert reached == set(faultpoints.STEPS)
    assert {step.split("#")[0] for step in CRASH_STEPS} == set(faultpoints.STEPS)


def _copy_promoted_state(source: Store, target: Store, run_id: str) -> None:
    """What a newer run's promotion sees of a promoted ``run_id`` in ``source``, copied byte
    for byte into the empty ``target`` (same server): its MANIFEST.json (CURRENT ordering),
    its files at the latest paths, and CURRENT. Its other files are never read by a newer
    run's publish, so they are not copied."""
    keys = [
        layout.run_prefix(run_id) + layout.MANIFEST_NAME,
        layout.CURRENT_KEY,
        *source.list_keys(layout.LATEST_DIR + "/"),
    ]
    if isinstance(source, LocalStore):
        assert isinstance(target, LocalStore)
        for key in keys:
            (target.root / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.root / key, target.root / key)
        return
    assert isinstance(source, S3Store) and isinstance(target, S3Store)
    for key in keys:
        source.client.copy_object(  # keeps metadata (our sha256) and content
            Bucket=target.bucket,
            Key=target.prefix + key,
            CopySource={"Bucket": source.bucket, "Key": source.prefix + key},
        )


@pytest.fixture(scope="module")
def store_with_older_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    keys: list[tuple[Path, Path]],
) -> Iterator[Callable[[str], Store]]:
    """A fresh store of a kind holding an older promoted run, with a model the newer runs
    lack (its files must leave the latest paths when a newer run is promoted). The older
    run is published once per kind; each new store gets a copy of its promoted state."""
    templates: dict[str, Store] = {}
    opened: list[Store] = []

    def make(kind: str) -> Store:
        if kind not in templates:
            template = open_kind(kind, request, tmp_path_factory.mktemp(f"older-{kind}"))
            work = tmp_path_factory.mktemp(f"older-{kind}-work")
            older = "2025-11-01T00:00:00+00:00"
            train(template, "run-older", work, seed=1, keys=(*KEYS, "gone-model"), started=older)
            certify_with(template, "run-older", keys[0][0])
            templates[kind] = template
            opened.append(template)
        store = open_kind(kind, request, tmp_path_factory.mktemp(f"crash-{kind}"))
        opened.append(store)
        _copy_promoted_state(templates[kind], store, "run-older")
        assert certify.read_current(store) == "run-older"
        return store

    yield make
    for store in opened:
        if isinstance(store, S3Store):
            store.close()


@pytest.fixture(scope="module")
def publisher_processes() -> Any:
    """Processes forked from a forkserver that imported tests.publish_fakes once: each
    publish attempt is a fresh process (its own S3 clients, probes and fault point counter)
    without paying the imports again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.publish_fakes"])
    return context


def _unfinished_uploads(store: S3Store) -> list[dict[str, Any]]:
    listed = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return list(listed.get("Uploads", []))


def _assert_converged(store: Store, run_id: str, public: Path) -> None:
    """Committed, verifies, promoted with CURRENT, nothing of the older run or of the
    interrupted attempts left behind."""
    check_ok(store, run_id, public)
    assert certify.read_current(store) == run_id  # newer than run-older
    latest = store.list_keys(layout.LATEST_DIR + "/")
    assert latest and not any("gone-model" in k for k in latest)  # no stale file of run-older
    assert not store.list_keys(layout.staging_prefix(run_id))
    if isinstance(store, S3Store):
        assert not _unfinished_uploads(store)
    else:
        assert isinstance(store, LocalStore)
        assert not [p for p in store.root.rglob("*") if ".oneseek-tmp-" in p.name]


@pytest.mark.parametrize("crash", CRASH_STEPS)
@pytest.mark.parametrize("kind", STORE_KINDS)
def test_kill_9_at_every_step_then_retry_converges(
    kind: str,
    crash: str,
    store_with_older_run: Callable[[str], Store],
    publisher_processes: Any,
    tmp_path: Path,
    keys: list[tuple[Path, Path]],
) -> None:
    """A publisher process (tests/publish_fakes.py) SIGKILLs itself at the step, then a new
    one with the same RUN_ID: the run ends committed, verified, promoted, CURRENT set, clean."""
    store = store_with_older_run(kind)
    run_id = "run-crash-" + crash.replace("#", "-")
    if isinstance(store, LocalStore):
        args = ["local", str(store.root)]
    else:
        assert isinstance(store, S3Store)
        endpoint = str(store.client.meta.endpoint_url)
        credentials = store.client._request_signer._credentials
        where = f"{endpoint}|{store.bucket}/{store.prefix.rstrip('/')}"
        args = ["s3", where, credentials.access_key, credentials.secret_key]
    attempts = iter(range(2))

    def publish(crash_at: str) -> tuple[int | None, str]:
        """One publish attempt in its own process; its exit code (-9: SIGKILLed) and output."""
        log = tmp_path / f"attempt-{next(attempts)}.log"
        argv = [*args[:2], run_id, str(tmp_path), str(keys[0][0]), crash_at, *args[2:]]
        process = publisher_processes.Process(target=publish_fakes.attempt, args=(argv, str(log)))
        process.start()
        process.join(timeout=180)
        if process.is_alive():
            process.kill()
            process.join()
        return process.exitcode, log.read_text() if log.exists() else ""

    code, output = publish(crash)
    assert code == -9, output[-3000:]
    if crash.startswith("partial"):  # the kill really left a half-written object
        if isinstance(store, S3Store):
            assert _unfinished_uploads(store)
        else:
            assert isinstance(store, LocalStore)
            assert [p for p in store.root.rglob("*") if ".oneseek-tmp-" in p.name]
    code, output = publish("")
    assert code == 0 and "PUBLISHED" in output, output[-3000:]
    _assert_converged(store, run_id, keys[0][1])


# Through the real CLI: `oneseek-job train` on a tiny model, 1 step, SIGKILLed by
# ONESEEK_CRASH_AT mid-upload (SeaweedFS) and right after the commit (moto), then retried.
CLI_KILLS = {"seaweedfs": "staged#2", "moto": "committed"}


@pytest.mark.parametrize("kind", list(CLI_KILLS))
def test_kill_9_of_the_train_cli_then_retry_converges(
    kind: str,
    request: pytest.FixtureRequest,
    tiny_workspace: TinyWorkspace,
    tmp_path: Path,
    keys: list[tuple[Path, Path]],
) -> None:
    store = open_kind(kind, request, tmp_path)
    assert isinstance(store, S3Store)
    server: S3Server = request.getfixturevalue("moto" if kind == "moto" else "seaweed")
    run_id = "run-cli-crash"
    uri = f"s3://{store.bucket}/{store.prefix.rstrip('/')}"
    env = job_env(
        tiny_workspace,
        tmp_path,
        RUN_ID=run_id,
        ONESEEK_MAX_STEPS="1",
        ARTIFACTS_URI=uri,
        S3_ENDPOINT_URL=server.endpoint_url,
        AWS_ACCESS_KEY_ID=server.admin.access_key,
        AWS_SECRET_ACCESS_KEY=server.admin.secret_key,
        AWS_REGION=server.region,
        ONESEEK_SIGNING_KEY_FILE=str(keys[0][0]),
    )
    killed = cli(["train"], {**env, "ONESEEK_CRASH_AT": CLI_KILLS[kind]})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert certify.read_current(store) is None
    retried = cli(["train"], env)
    assert retried.returncode == 0, retried.stderr[-2000:]
    checked = cli(["verify", uri, "--current", "--public-key", str(keys[0][1]), "--json"], env)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert certify.read_current(store) == run_id
    assert not store.list_keys(layout.staging_prefix(run_id))
    assert not _unfinished_uploads(store)
    store.close()


def test_current_never_moves_backwards(any_store: Store, tmp_path: Path) -> None:
    # run-b started later than run-a (its markers' started_at), but certifies first.
    train(any_store, "run-b", tmp_path, seed=1)
    certify_with(any_store, "run-b", None)
    assert certify.read_current(any_store) == "run-b"
    certify.claim_run(any_store, "run-a", inputs(seed=1))
    for position, key in enumerate(KEYS):
        files = certify.stage_files(any_store, "run-a", adapter_files(tmp_path, key, 5))
        older = result_for(key, 5, files, position).model_copy(
            update={"started_at": "2025-11-22T00:00:00+00:00"}
        )
        certify.mark_done(any_store, older, "run-a")
    certify_with(any_store, "run-a", None)
    assert certify.read_current(any_store) == "run-b"  # the older run does not take CURRENT
    check_ok(any_store, "run-a", None)  # but it is committed and verifies


# ----------------------------------------------------------------------------- probes / proxy


def test_server_ignoring_if_none_match_is_refused_unless_opted_out(
    moto: S3Server, tmp_path: Path
) -> None:
    with fault_proxy(moto.endpoint_url) as proxy:
        proxy.set_mode("drop_inm")
        store = make_s3_store(moto, "oneseek-tests", endpoint_url=proxy.url)
        assert not store.capabilities.conditional_put
        with pytest.raises(ConfigError, match="ONESEEK_ALLOW_UNCONDITIONAL_WRITES"):
            check_writable(store)
        with pytest.raises(ConfigError, match="ignores If-None-Match"):
            store.put_bytes("x/manifest.json", b"{}", if_none_match=True)
        store.allow_unconditional_writes = True
        check_writable(store)
        train(store, "run-optout", tmp_path, seed=1)
        certify_with(store, "run-optout", None)
        check_ok(store, "run-optout", None)
        store.close()


def test_stalled_commit_response_is_retried_and_still_converges(
    any_store: Store, tmp_path: Path, keys: list[tuple[Path, Path]], request: pytest.FixtureRequest
) -> None:
    if not isinstance(any_store, S3Store):
        pytest.skip("a network fault: S3 only")
    train(any_store, "run-stall", tmp_path, seed=1)
    endpoint = str(any_store.client.meta.endpoint_url)
    server = request.getfixturevalue("moto" if "moto" in repr(any_store.client) else "seaweed")
    with fault_proxy(endpoint) as proxy:
        via = make_s3_store(
            server,
            any_store.bucket,
            any_store.prefix.rstrip("/"),
            endpoint_url=proxy.url,
            max_attempts=3,
        )
        _ = via.capabilities  # probe before the fault
        proxy.set_mode("stall", budget=0.5, count=1)  # the first conditional put's answer
        certify_with(via, "run-stall", keys[0][0])
        assert proxy.held.is_set()
        via.close()
    check_ok(any_store, "run-stall", keys[0][1])


# ----------------------------------------------------------------------------- symlinks


def test_promotion_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / layout.LATEST_DIR).mkdir(parents=True)
    (store.root / layout.LATEST_DIR / "lora_adapters").symlink_to(outside)
    train(store, "run-sym", tmp_path, seed=1)
    with pytest.raises(IntegrityError, match="symlink"):
        certify_with(store, "run-sym", None)
    assert list(outside.iterdir()) == []  # nothing written outside ARTIFACTS_URI
    check_ok(store, "run-sym", None)  # committed and materialized before promotion stopped


def test_verify_never_follows_symlinks(tmp_path: Path, keys: list[tuple[Path, Path]]) -> None:
    store = LocalStore(tmp_path / "store")
    train(store, "run-v", tmp_path, seed=1)
    certify_with(store, "run-v", keys[0][0])
    run = store.root / layout.run_prefix("run-v")
    # A certified file replaced by a symlink to an identical copy outside the run.
    target = run / "weights" / layout.weights_file_name(VERSION, KEYS[0])
    copy = tmp_path / "copy.pth"
    copy.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(copy)
    # And an unlisted symlink to a system file.
    (run / "passwd").symlink_to("/etc/passwd")
    report = verify.verify_run(store, "run-v", public_key=provenance.load_public_key(keys[0][1]))
    assert not report.ok
    failing = {(c.name, c.detail) for c in report.checks if not c.ok}
    assert any(name == "files" and "weights/" in detail for name, detail in failing), failing
    assert not any("passwd" in detail and name == "files" for name, detail in failing)


# ----------------------------------------------------------------------------- OMS upstream


def _download(store: LocalStore, prefix: str, dest: Path) -> Path:
    for info in store.list(prefix):
        target = dest / info.key.removeprefix(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get_bytes(info.key))
    return dest


def _upstream_verify(directory: Path, public: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "model_signing"
    return subprocess.run(
        [
            str(cli),
            "verify",
            "key",
            str(directory),
            "--signature",
            str(directory / layout.OMS_SIGNATURE_NAME),
            "--public_key",
            str(public),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upstream_model_signing_accepts_run_and_adapters_and_rejects_changes(
    tmp_path: Path, keys: list[tuple[Path, Path]]
) -> None:
    store = LocalStore(tmp_path / "store")
    train(store, "run-oms", tmp_path, seed=1)
    certify_with(store, "run-oms", keys[0][0])
    run = _download(store, layout.run_prefix("run-oms"), tmp_path / "dl")
    public = keys[0][1]
    directories = [run] + [run / "lora_adapters" / layout.adapter_dir_name(k) for k in KEYS]
    for directory in directories:
        ok = _upstream_verify(directory, public)
        assert ok.returncode == 0 and "succeeded" in ok.stdout + ok.stderr, ok.stderr[-800:]
    other = _upstream_verify(run, keys[1][1])  # another key
    assert "succeeded" not in other.stdout + other.stderr
    adapter = directories[1]
    for change in ("edit", "add", "remove"):
        victim = adapter / "adapter_model.safetensors"
        saved = victim.read_bytes()
        if change == "edit":
            victim.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        elif change == "add":
            (adapter / "extra.bin").write_bytes(b"x")
        else:
            victim.unlink()
        for directory in (adapter, run):
            failed = _upstream_verify(directory, public)
            assert "succeeded" not in failed.stdout + failed.stderr, (change, directory)
        victim.write_bytes(saved)
        (adapter / "extra.bin").unlink(missing_ok=True)
    assert _upstream_verify(run, public).returncode == 0


def test_legacy_ed25519_v1_run_still_verifies(tmp_path: Path) -> None:
    """A run committed by the pre-staging protocol: files in place, v1 MANIFEST, ed25519."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    store = LocalStore(tmp_path / "store")
    train(store, "run-new", tmp_path, seed=1)
    certify_with(store, "run-new", None)
    legacy = Ed25519PrivateKey.generate()
    prefix_new, prefix_old = layout.run_prefix("run-new"), layout.run_prefix("run-old")
    manifest = json.loads(store.get_bytes(prefix_new + layout.MANIFEST_NAME))
    for entry in manifest["files"]:
        store.put_bytes(prefix_old + entry["path"], store.get_bytes(prefix_new + entry["path"]))
    v1 = {
        "format": "oneseek-manifest/v1",
        "run_id": "run-old",
        "signed": True,
        "signer_fingerprint": provenance.public_key_fingerprint(legacy),
        "file_count": manifest["file_count"],
        "total_size": manifest["total_size"],
        "files": manifest["files"],
    }
    data = provenance.canonical_json(v1)
    store.put_bytes(prefix_old + layout.MANIFEST_NAME, data)
    store.put_bytes(prefix_old + layout.SIGNATURE_NAME, provenance.sign(data, legacy))
    report = verify.verify_run(store, "run-old", public_key=legacy.public_key())
    by_name = {c.name: c for c in report.checks}
    assert by_name["signature"].ok and "ed25519" in by_name["signature"].detail
    assert by_name["oms"].ok and "v1" in by_name["oms"].detail
    assert by_name["files"].ok


def test_verify_cli_exits_2_with_a_failed_row_for_a_tampered_run(
    tmp_path: Path, keys: list[tuple[Path, Path]]
) -> None:
    store = LocalStore(tmp_path / "store")
    train(store, "run-cli", tmp_path, seed=1)
    certify_with(store, "run-cli", keys[0][0])
    command = [sys.executable, "-m", "oneseek_job.cli", "verify", str(store.root)]
    args = ["--run-id", "run-cli", "--public-key", str(keys[0][1]), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120)
    assert clean.returncode == 0, clean.stdout[-1500:] + clean.stderr[-1500:]
    pth = store.root / layout.run_prefix("run-cli") / "weights"
    victim = pth / layout.weights_file_name(VERSION, KEYS[0])
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    tampered = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert tampered.returncode == 2  # a verdict, not "retry"
    rows = json.loads(tampered.stdout)["checks"]
    assert any(
        not row["ok"] and row["name"] == "files" and "weights/" in row["detail"] for row in rows
    )
    assert tampered.stderr.strip().splitlines()[-1].startswith("error: run run-cli does not")
    assert "Traceback" not in tampered.stderr
