"""The job, step by step: resolve → train each model → upload → mark done → certify → promote.

One code path for every way the Job runs: a single pod trains all models in order; an
Indexed Job pod trains only the model at its index. Each finished model leaves a done
marker in the store; whoever sees every marker certifies the run, and the conditional put
of MANIFEST.json makes exactly one of them win (both would write identical bytes anyway,
since every run file is derived from the markers alone).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from oneseek_job import layout
from oneseek_job.carry import (
    CarryRefused,
    Source,
    check_source,
    committed_runs,
    copy_to_staging,
    could_give,
    matching_sources,
)
from oneseek_job.certify import (
    certify_run,
    check_model_inputs,
    claim_run,
    finish_run,
    mark_done,
    missing_models,
    stage_files,
)
from oneseek_job.config import JobSettings
from oneseek_job.digests import sha256_file
from oneseek_job.discovery import Resolution
from oneseek_job.documents import ModelResult, ResolvedName, RunInputs, live_metrics
from oneseek_job.errors import EXIT_PREEMPTED, JobError
from oneseek_job.logs import bind, get_logger
from oneseek_job.preflight import run_preflight
from oneseek_job.provenance import (
    hash_model_inputs,
    hash_model_inputs_async,
    load_private_key,
    load_public_key,
)
from oneseek_job.storage import Store, store_from_settings
from oneseek_job.telemetry import FanOut, MetricsSink, model_files
from oneseek_job.verify import VerifyReport, resolve_run_id, verify_run

if TYPE_CHECKING:
    from collections.abc import Mapping

    from oneseek_job.data import Record
    from oneseek_job.provenance import SigningKey
    from oneseek_job.run_report import RunView

__all__ = ["Reporter", "certify_job", "report_job", "train_job", "verify_job"]

log = get_logger(__name__)
# Remote live_metrics.json is rewritten at most this often (S3 PUTs cost and throttle).
LIVE_UPLOAD_INTERVAL_S = 60.0
# Names this process in its done markers (which attempt's bytes a model has).
_ATTEMPT = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class Reporter(Protocol):
    """Where the job reports milestones besides the log (Kubernetes Events, or nothing)."""

    def started(self, run_id: str, models: list[str]) -> None: ...
    def model_trained(self, key: str, metrics: dict[str, Any]) -> None: ...
    def certified(self, run_id: str, uri: str) -> None: ...
    def failed(self, reason: str) -> None: ...


class _NoReporter:
    def started(self, run_id: str, models: list[str]) -> None:
        pass

    def model_trained(self, key: str, metrics: dict[str, Any]) -> None:
        pass

    def certified(self, run_id: str, uri: str) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def train_job(
    settings: JobSettings,
    reporter: Reporter | None = None,
    telemetry: MetricsSink | None = None,
) -> None:
    """Train every selected model of the run, then certify it when all models are done.

    ``telemetry`` (opened and closed by the caller) receives every progress report, phase
    and result; the per-model files it writes under ``settings.telemetry_dir`` (TensorBoard
    events, progress history) are published, listed and signed with each model.

    Raises:
        ConfigError, InputError, ResolutionError: before any training starts.
        Preempted: SIGTERM arrived; the checkpoint is saved and a retry resumes.
        JobError: a model failed; the other models' artifacts are kept.
    """
    reporter = reporter or _NoReporter()
    telemetry = telemetry or FanOut([])
    # 1. Every input checked before the first GPU second (preflight.CHECKS, cheapest first).
    pre = run_preflight(settings)
    assert pre.store is not None and settings.dataset is not None
    resolutions, selected, records, store = pre.resolutions, pre.selected, pre.records, pre.store
    _setting, index = settings.model_selector
    log.info(
        "mode",
        tag="mode",
        models=[r.key for r in selected],
        of=len(resolutions),
        indexed=index is not None,
        loose=[m for r in resolutions for m in r.non_exact()],
    )
    dataset = _hash_dataset(settings.dataset)
    # The RUN_ID is bound to its inputs: other inputs exit 2 before any training; a
    # committed run with the same inputs is only finished (promotion, CURRENT, cleanup).
    inputs = run_inputs(settings, resolutions, dataset)
    committed = claim_run(store, settings.run_id, inputs)
    if committed is not None:
        for resolution in selected:
            check_model_inputs(
                settings.run_id, committed, resolution.key, hash_model_inputs(resolution.model.path)
            )
        log.info("already_certified", tag="certified", run_id=settings.run_id)
        finish_run(store, settings.run_id)
        _remove_checkpoints(settings)
        return
    reporter.started(settings.run_id, [r.key for r in selected])
    sources = _carry_plan(settings, store, selected, inputs)

    # 2. One model at a time (carried over from an earlier run where one matches); a
    #    failure keeps the others' artifacts and markers.
    failures: list[JobError] = []
    live = _LiveMetrics(
        path=settings.work_dir / settings.run_id / "live_metrics.json",
        store=store,
        store_key=layout.live_key(settings.run_id, "all" if index is None else f"index-{index}"),
        keys=[r.key for r in selected],
    )
    for resolution in selected:
        telemetry.phase(resolution.key, "queued")
    for resolution in selected:
        bind(model=resolution.key)
        try:
            position = resolutions.index(resolution)
            with _model_lease(settings, resolution.key):
                if _already_done(store, settings.run_id, resolution.key):
                    continue
                carried = _carry_over(
                    settings,
                    store,
                    resolution,
                    position,
                    dataset,
                    sources.get(resolution.key, []),
                    telemetry,
                )
                if not carried:
                    _train_and_upload(
                        settings,
                        store,
                        resolution,
                        position,
                        records,
                        dataset,
                        reporter,
                        live,
                        telemetry,
                    )
        except JobError as error:
            if error.exit_code == EXIT_PREEMPTED:  # stop now, the retry resumes
                raise
            telemetry.phase(resolution.key, "failed")
            failures.append(_model_failed(reporter, resolution.key, error))
        except Exception as error:  # one broken model must not cost the others their run
            telemetry.phase(resolution.key, "failed")
            wrapped = JobError(f"{resolution.key}: {type(error).__name__}: {error}")
            failures.append(_model_failed(reporter, resolution.key, wrapped))
        finally:
            bind(model=None)
    if failures:
        if len(selected) == 1:
            raise failures[0]
        raise type(failures[0])(
            f"{len(failures)} of {len(selected)} model(s) failed, the others are uploaded; "
            f"first failure: {failures[0]}"
        )

    # 3. Certify once every model of the run (all indices) has its done marker.
    from oneseek_job.training import is_main_process

    if not is_main_process():
        return
    missing = missing_models(store, settings.run_id, [r.key for r in resolutions])
    if missing:
        log.info("waiting_for_models", tag="mode", missing=missing)
        return
    _certify(settings, store, reporter, expected=[r.key for r in resolutions], telemetry=telemetry)


def _model_lease(settings: JobSettings, key: str) -> AbstractContextManager[object]:
    """One writer per (run, model): a pod of a replacing Job waits for the old one's lease.

    Only the main process takes it; the other ranks of its torchrun group follow it.
    """
    from oneseek_job.lease import hold_lease
    from oneseek_job.training import is_main_process

    if not is_main_process():
        return nullcontext()
    return hold_lease(
        settings.checkpoint_root / settings.run_id / key, what=f"{settings.run_id}/{key}"
    )


def _remove_checkpoints(settings: JobSettings) -> None:
    """A certified run never resumes: its checkpoints would only fill the volume over runs."""
    run_dir = settings.checkpoint_root / settings.run_id
    if run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("checkpoints_removed", tag="certified", run_id=settings.run_id, path=str(run_dir))


def _model_failed(reporter: Reporter, key: str, error: JobError) -> JobError:
    log.error("model_failed", tag="training", model=key, error=str(error))
    reporter.failed(f"{key}: {error}")
    return error


@dataclass
class _LiveMetrics:
    """live_metrics.json of the models this process trains: rewritten locally on every
    report, uploaded to the run's hidden ``.live/`` area at most every minute."""

    path: Path
    store: Store
    store_key: str
    keys: list[str]
    model: str = ""
    val_losses: dict[str, float | None] = field(default_factory=dict)
    last_upload: float = 0.0

    def __call__(self, progress: dict[str, Any]) -> None:
        if progress.get("val_loss") is not None:
            self.val_losses[self.model] = progress["val_loss"]
        data = live_metrics(
            epoch=progress.get("epoch"),
            total_epochs=progress.get("total_epochs"),
            step=progress.get("step"),
            total_steps=progress.get("total_steps"),
            val_losses={key: self.val_losses.get(key) for key in self.keys},
            weights={key: 1.0 / len(self.keys) for key in self.keys},
            total_loss=progress.get("loss"),
            timestamp=_now(),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)
        if time.monotonic() - self.last_upload >= LIVE_UPLOAD_INTERVAL_S:
            self.last_upload = time.monotonic()
            try:
                self.store.put_bytes(self.store_key, data)
            except JobError as error:  # progress is best effort; training goes on
                log.warning("live_metrics_upload_failed", error=str(error))


def _already_done(store: Store, run_id: str, key: str) -> bool:
    """A retry skips the models whose done marker is there (trained or carried over)."""
    if store.head(layout.done_marker_key(run_id, key)) is None:
        return False
    log.info("model_already_done", tag="training", model=key)
    return True


def _carry_plan(
    settings: JobSettings, store: Store, selected: list[Resolution], inputs: RunInputs
) -> dict[str, list[Source]]:
    """For each selected model, the earlier certified runs with its fingerprint, newest first.

    Base model files are hashed here only for models some run could give (same key and
    run-wide inputs); the others are hashed while they train, as before.
    """
    if not settings.carry_over:
        log.info("carry_over_plan", tag="mode", enabled=False)
        return {}
    runs = committed_runs(store, exclude=settings.run_id)
    plan: dict[str, list[Source]] = {}
    for resolution in selected:
        if could_give(runs, resolution.key, inputs):
            digests = hash_model_inputs(resolution.model.path)
            plan[resolution.key] = matching_sources(runs, resolution.key, digests, inputs)
    log.info(
        "carry_over_plan",
        tag="mode",
        enabled=True,
        runs=len(runs),
        sources={r.key: [s.run_id for s in plan.get(r.key, [])][:3] for r in selected},
    )
    return plan


def _carry_over(
    settings: JobSettings,
    store: Store,
    resolution: Resolution,
    position: int,
    dataset: _Dataset,
    sources: list[Source],
    telemetry: MetricsSink,
) -> bool:
    """Carry the model over from the first source that passes every check; False: train it.

    Every rank checks the source (read-only, the same bytes: the same verdict); rank 0
    copies the files into staging and writes the done marker. After a source passed, a
    failing copy is a model failure (the retry checks again), never a fallback to training
    that the other ranks would not join.
    """
    if not sources:
        return False
    from oneseek_job.training import is_main_process

    key = resolution.key
    signing_key = load_private_key(settings.signing_key_file) if settings.signing_key_file else None
    scratch = settings.work_dir / settings.run_id / "carry"
    for source in sources:
        try:
            verified = check_source(
                store,
                source,
                key,
                version=settings.model_version,
                signing_key=signing_key,
                work_dir=scratch,
            )
        except CarryRefused as refused:
            log.warning(
                "carry_over_refused",
                tag="training",
                model=key,
                from_run=source.run_id,
                reason=str(refused),
            )
            continue
        if not is_main_process():
            return True
        started = _now()
        files = copy_to_staging(store, settings.run_id, verified, scratch)
        entry, origin = verified.entry, verified.origin
        result = ModelResult(
            **_attempt_fields(settings, resolution, position, dataset, started),
            base_val_loss=entry.base_val_loss,
            final_val_loss=entry.final_val_loss,
            final_train_loss=entry.final_train_loss,
            improved=entry.improved,
            certified=entry.certified,
            steps=entry.steps,
            epochs=entry.epochs,
            samples=entry.samples,
            train_tokens=entry.train_tokens,
            duration_seconds=entry.duration_seconds,
            files=files,
            base_model_digests=dict((source.manifest.model_inputs or {})[key]),
            carried_from=origin,
        )
        mark_done(store, result, settings.run_id)
        log.info(
            "model_carried_over",
            tag="upload",
            model=key,
            from_run=origin.run_id,
            trained_in=origin.trained_in,
            manifest_sha256=origin.manifest_sha256,
            files=len(files),
            final_val_loss=entry.final_val_loss,
        )
        telemetry.phase(key, "done")
        return True
    return False


def _train_and_upload(
    settings: JobSettings,
    store: Store,
    resolution: Resolution,
    position: int,
    records: list[Record],
    dataset: _Dataset,
    reporter: Reporter,
    live: _LiveMetrics,
    telemetry: MetricsSink,
) -> None:
    from oneseek_job.training import is_main_process, train_model

    key, model = resolution.key, resolution.model
    log.info("training", tag="training", model=key, display_name=model.display_name)
    digests = hash_model_inputs_async(model.path)  # overlaps with model loading
    staging = settings.work_dir / settings.run_id / "staging" / key
    adapter_dir = staging / "lora_adapters" / layout.adapter_dir_name(key)
    weights_path = staging / "weights" / layout.weights_file_name(settings.model_version, key)
    started = _now()
    live.model = key
    telemetry.model_started(key, _hyperparameters(settings))
    telemetry.phase(key, "training")

    def on_progress(event: dict[str, Any]) -> None:
        live(event)
        telemetry.progress(key, event)

    outcome = train_model(
        key=key,
        model_path=model.path,
        records=records,
        lora=settings.lora,
        train=settings.train,
        adapter_dir=adapter_dir,
        weights_path=weights_path,
        checkpoint_dir=settings.checkpoint_root / settings.run_id / key,
        allow_pickle=settings.allow_pickle,
        on_progress=on_progress,
    )
    if not is_main_process():
        return
    telemetry.model_finished(key, _telemetry_summary(outcome))
    telemetry.phase(key, "uploading")
    _stage_telemetry(settings, key, staging)
    certified = outcome.improved or settings.train.allow_regression
    if not outcome.improved:
        log.warning(
            "adapter_not_better_than_base",
            tag="training",
            model=key,
            base_val_loss=outcome.base_val_loss,
            final_val_loss=outcome.final_val_loss,
            certified=certified,
        )
    # Staged by content, outside the run prefix: nothing under a run is written before it
    # commits, and the done marker (a conditional put) decides whose bytes the model has.
    files = stage_files(store, settings.run_id, staging)
    result = ModelResult(
        **_attempt_fields(settings, resolution, position, dataset, started),
        base_val_loss=outcome.base_val_loss,
        final_val_loss=outcome.final_val_loss,
        final_train_loss=outcome.final_train_loss,
        improved=outcome.improved,
        certified=certified,
        steps=outcome.steps,
        epochs=outcome.epochs,
        samples=outcome.samples,
        train_tokens=outcome.train_tokens,
        duration_seconds=round(outcome.duration_seconds, 3),
        files=files,
        base_model_digests=digests.result(),
    )
    mark_done(store, result, settings.run_id)
    log.info(
        "model_done",
        tag="upload",
        model=key,
        files=len(files),
        base_val_loss=outcome.base_val_loss,
        final_val_loss=outcome.final_val_loss,
        certified=certified,
    )
    telemetry.phase(key, "done")
    reporter.model_trained(key, {"final_val_loss": outcome.final_val_loss, "certified": certified})


def _attempt_fields(
    settings: JobSettings,
    resolution: Resolution,
    position: int,
    dataset: _Dataset,
    started: str,
) -> dict[str, Any]:
    """What a done marker says about this attempt, whether it trained or carried the model."""
    model = resolution.model
    return {
        "key": resolution.key,
        "position": position,
        "display_name": model.display_name,
        "model_path": str(model.path),
        "architecture": model.architecture or model.model_type,
        "started_at": started,
        "finished_at": _now(),
        "dataset_sha256": dataset.sha256,
        "dataset_files": dataset.names,
        "hyperparameters": _hyperparameters(settings),
        "host": socket.gethostname(),
        "image_digest": settings.image_digest,
        "resolution": [ResolvedName(**name) for name in resolution.spellings()],
        "attempt": _ATTEMPT,
    }


def _telemetry_summary(outcome: Any) -> dict[str, Any]:
    """A model's final numbers for the telemetry sinks (and the report's history file)."""
    return {
        "base_val_loss": outcome.base_val_loss,
        "final_val_loss": outcome.final_val_loss,
        "final_train_loss": outcome.final_train_loss,
        "improved": outcome.improved,
        "steps": outcome.steps,
        "train_tokens": outcome.train_tokens,
        "tokens_per_second": outcome.tokens_per_second,
        "duration_seconds": outcome.duration_seconds,
        "hardware": _hardware(),
    }


def _hardware() -> dict[str, Any]:
    """What trained, for the run report's throughput table (torch is loaded by then)."""
    import os

    import torch

    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        "device": "cuda" if cuda else "cpu",
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }


def _stage_telemetry(settings: JobSettings, key: str, staging: Path) -> None:
    """Copy the model's TensorBoard events and history next to its adapter, so they are
    uploaded, listed in MANIFEST and signed with it."""
    import shutil

    for name, source in model_files(settings.telemetry_dir, key).items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


@dataclass(frozen=True)
class _Dataset:
    names: list[str]  # file names, for the DNA's dataset tokens
    sha256: str  # the file's digest, or over sorted (name, digest) lines for a directory


def _hash_dataset(dataset: Path) -> _Dataset:
    from oneseek_job.data import dataset_files

    files = sorted(dataset_files(dataset), key=lambda p: p.name)
    if len(files) == 1:
        return _Dataset([files[0].name], sha256_file(files[0]))
    combined = hashlib.sha256()
    for path in files:
        combined.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return _Dataset([p.name for p in files], combined.hexdigest())


def _hyperparameters(settings: JobSettings) -> dict[str, Any]:
    return {
        "lora": settings.lora.model_dump(mode="json"),
        "train": settings.train.model_dump(mode="json"),
        "model_version": settings.model_version,
    }


def run_inputs(
    settings: JobSettings, resolutions: list[Resolution], dataset: _Dataset
) -> RunInputs:
    """The run-wide part of the fingerprint a RUN_ID is bound to (base model digests are
    checked per model, by whoever trains or re-runs it)."""
    train = settings.train.model_dump(mode="json")
    for knob in ("log_every", "checkpoint_every"):  # how often, not what is trained
        train.pop(knob, None)
    return RunInputs(
        models=[r.key for r in resolutions],
        dataset_sha256=dataset.sha256,
        hyperparameters={"lora": settings.lora.model_dump(mode="json"), "train": train},
        version=settings.model_version,
        language=settings.language,
    )


def certify_job(settings: JobSettings, reporter: Reporter | None = None) -> None:
    """``oneseek-job certify``: certify a run whose models are all uploaded. Idempotent."""

    store = store_from_settings(settings)
    _certify(settings, store, reporter or _NoReporter(), expected=None)


def _certify(
    settings: JobSettings,
    store: Store,
    reporter: Reporter,
    expected: list[str] | None,
    telemetry: MetricsSink | None = None,
) -> None:
    signing_key = load_private_key(settings.signing_key_file) if settings.signing_key_file else None

    def report(run_files: Mapping[str, bytes], staged: Mapping[str, str]) -> dict[str, bytes]:
        return _render_report(store, settings.run_id, run_files, staged, signing_key)

    certified = certify_run(
        store,
        settings.run_id,
        version=settings.model_version,
        language=settings.language,
        allow_regression=settings.train.allow_regression,
        image_digest=settings.image_digest,
        signing_key_file=settings.signing_key_file,
        expected=expected,
        extra_files=report,
    )
    if not certified.already:
        reporter.certified(certified.run_id, certified.uri)
        if telemetry is not None:
            telemetry.run_certified(
                {
                    "run_id": certified.run_id,
                    "dna": certified.dna,
                    "uri": certified.uri,
                    "status": certified.status,
                }
            )
    _remove_checkpoints(settings)


def _render_report(
    store: Store,
    run_id: str,
    run_files: Mapping[str, bytes],
    staged: Mapping[str, str],
    signing_key: SigningKey | None,
) -> dict[str, bytes]:
    """``{report.html: bytes}``: a pure function of the run files and the staged progress
    histories (``metrics/<key>.jsonl``), so racing certifiers render the same bytes."""
    from oneseek_job.provenance import public_key_fingerprint
    from oneseek_job.run_report import REPORT_NAME, render_html, run_view

    folder = f"{layout.METRICS_DIR}/"
    histories = {
        path[len(folder) :].removesuffix(".jsonl"): store.get_bytes(key).decode(
            "utf-8", errors="replace"
        )
        for path, key in sorted(staged.items())
        if path.startswith(folder) and path.endswith(".jsonl") and "/" not in path[len(folder) :]
    }
    view = run_view(
        run_files,
        histories,
        run_id=run_id,
        signed=signing_key is not None,
        signer=public_key_fingerprint(signing_key) if signing_key is not None else None,
    )
    return {REPORT_NAME: render_html(view).encode("utf-8")}


def report_job(
    settings: JobSettings, *, run_id: str | None, current: bool, public_key_file: Path | None
) -> RunView:
    """``oneseek-job report``: a committed run's report data, with a fresh verification."""
    from oneseek_job.run_report import Check, load_run_view

    store = store_from_settings(settings)
    target = resolve_run_id(store, run_id, current)
    public_key = load_public_key(public_key_file) if public_key_file else None
    verdict = verify_run(store, target, public_key=public_key, allow_unsigned=True)
    return load_run_view(
        store,
        layout.run_prefix(target),
        run_id=target,
        verification=[Check(c.name, c.ok, c.detail) for c in verdict.checks],
    )


def verify_job(
    settings: JobSettings,
    *,
    run_id: str | None,
    current: bool,
    public_key_file: Path | None,
    allow_unsigned: bool,
) -> VerifyReport:
    """``oneseek-job verify``: re-check a published run; the report says which checks hold.

    Printing the verdict and the exit code are the CLI's (``VerifyReport.ok``).
    """
    store = store_from_settings(settings)
    target = resolve_run_id(store, run_id, current)
    public_key = load_public_key(public_key_file) if public_key_file else None
    return verify_run(store, target, public_key=public_key, allow_unsigned=allow_unsigned)
