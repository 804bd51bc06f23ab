"""The ``oneseek-job`` command line: train, discover, certify, verify, keygen, demo, version.

Only this module reads ``os.environ`` (through :func:`config.load_settings`). Heavy
libraries (torch, transformers, peft, boto3, kubernetes) are imported inside the commands
that need them, so ``--help``, ``discover`` and ``verify`` start fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, cast

import typer

from oneseek_job import __version__
from oneseek_job.errors import (
    EXIT_FAILED,
    EXIT_PREEMPTED,
    ConfigError,
    JobError,
    VerificationError,
)
from oneseek_job.signals import install_sigterm_handler

if TYPE_CHECKING:
    from oneseek_job.config import JobSettings
    from oneseek_job.kube import KubeContext
    from oneseek_job.telemetry import MetricsSink
    from oneseek_job.verify import VerifyReport

__all__ = ["app", "main"]

app = typer.Typer(
    name="oneseek-job",
    help=(
        "Train one LoRA adapter per base model and publish it with verifiable provenance.\n\n"
        "Typical use (what the Kubernetes Job runs):\n\n"
        "\b\n"
        "  BASE_MODELS='KB-Llama-3.1-8B-Swedish' MODELS_DIR=/models DATASET=/data/qa.jsonl \\\n"
        "  ARTIFACTS_URI=s3://oneseek/prod oneseek-job train"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Shared option types: the env var names are DESIGN.md's; CLI values override them.
BaseModelsOpt = Annotated[
    str | None,
    typer.Option("--base-models", help="Comma-separated model names [env: BASE_MODELS]."),
]
ModelsDirOpt = Annotated[
    Path | None, typer.Option("--models-dir", help="Models volume root [env: MODELS_DIR].")
]
DatasetOpt = Annotated[
    Path | None, typer.Option("--dataset", help="JSONL file or directory [env: DATASET].")
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option("--artifacts-uri", help="s3://bucket/prefix or a directory [env: ARTIFACTS_URI]."),
]
RunIdOpt = Annotated[
    str | None, typer.Option("--run-id", help="Run id, stable across retries [env: RUN_ID].")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
CreateBucketOpt = Annotated[
    bool, typer.Option("--create-bucket", help="Create the S3 bucket if it does not exist.")
]


def _setup_logging(*, to_stderr: bool = False) -> None:
    from oneseek_job.config import check_logging_env
    from oneseek_job.logs import configure_logging

    level, forced = check_logging_env(
        os.environ.get("ONESEEK_LOG_LEVEL"), os.environ.get("ONESEEK_LOG_FORMAT")
    )
    configure_logging(json=forced, level=level, stream=sys.stderr if to_stderr else sys.stdout)


def _console_progress() -> list[MetricsSink]:
    """On a terminal (and console logs): rich progress lines instead of per-step log lines.

    Log lines then go through whatever ``sys.stdout`` is at the moment, which rich points
    above the progress lines while they are drawn. Off a terminal: nothing (JSON lines).
    """
    from oneseek_job.config import check_logging_env
    from oneseek_job.logs import configure_logging

    level, forced = check_logging_env(
        os.environ.get("ONESEEK_LOG_LEVEL"), os.environ.get("ONESEEK_LOG_FORMAT")
    )
    if forced is True or not sys.stdout.isatty():
        return []
    from oneseek_job.progress import ConsoleProgress, LiveStdout, is_progress_event

    stream = cast("TextIO", LiveStdout())  # write/flush/isatty is all structlog uses
    configure_logging(json=False, level=level, stream=stream, drop=is_progress_event)
    return [ConsoleProgress()]


def _settings(**overrides: Any) -> JobSettings:
    from oneseek_job.config import load_settings
    from oneseek_job.logs import bind, register_secret

    settings = load_settings(**overrides)
    for secret in (settings.aws_access_key_id, settings.aws_secret_access_key):
        if secret is not None:
            register_secret(secret.get_secret_value())
    register_secret(os.environ.get("AWS_SESSION_TOKEN"))
    bind(run_id=settings.run_id, job_index=settings.job_completion_index)
    return settings


@app.command()
def train(
    base_models: BaseModelsOpt = None,
    models_dir: ModelsDirOpt = None,
    dataset: DatasetOpt = None,
    artifacts_uri: ArtifactsOpt = None,
    run_id: RunIdOpt = None,
    model_version: Annotated[
        str | None, typer.Option(help="Version in artifact names [env: MODEL_VERSION].")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Resumable state [env: CHECKPOINT_DIR].")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Scratch space [env: ONESEEK_WORK_DIR].")
    ] = None,
    configmap: Annotated[
        str | None,
        typer.Option(help="In a cluster: read BASE_MODELS from this ConfigMap of the namespace."),
    ] = None,
    allow_regression: Annotated[
        bool, typer.Option(help="Certify adapters that do not beat their base on validation.")
    ] = False,
    skip_bad_records: Annotated[
        bool, typer.Option(help="Skip malformed dataset records instead of failing.")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Accept base models with pickle-only weights (.bin).")
    ] = False,
    create_bucket: CreateBucketOpt = False,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank [env: ONESEEK_LORA_R].")] = None,
    lora_alpha: Annotated[
        float | None, typer.Option(help="LoRA alpha [env: ONESEEK_LORA_ALPHA].")
    ] = None,
    lora_dropout: Annotated[
        float | None, typer.Option(help="LoRA dropout [env: ONESEEK_LORA_DROPOUT].")
    ] = None,
    target_modules: Annotated[
        str | None,
        typer.Option(help="Comma-separated modules; default by architecture."),
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate [env: ONESEEK_LEARNING_RATE].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs [env: ONESEEK_EPOCHS].")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps (0 = epochs).")
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option(help="Packed block length [env: ONESEEK_SEQ_LEN].")
    ] = None,
    batch_tokens: Annotated[
        int | None, typer.Option(help="Tokens per optimizer step [env: ONESEEK_BATCH_TOKENS].")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [env: ONESEEK_SEED].")] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Trade compute for memory (non-reentrant).")
    ] = False,
) -> None:
    """Resolve BASE_MODELS, train one LoRA adapter per model, upload and certify the run.

    Checks every input before the first GPU second (settings, signing key, dataset, every
    requested model, writable locations, S3 reachability); a bad input exits 2 or 3.

    Examples:

    \b
      oneseek-job train --base-models KB-Llama-3.1-8B-Swedish --models-dir /models
      JOB_COMPLETION_INDEX=1 RUN_ID=run-abc oneseek-job train   # one model of an Indexed Job

    In a multi-node group (PET_NNODES / PET_NPROC_PER_NODE > 1, as JobSet pods and Kubeflow
    TrainJobs get them) it starts this node's workers itself and exits with their code.
    """
    _setup_logging()
    from oneseek_job.launch import maybe_launch

    group_code = maybe_launch(sys.argv[1:])
    if group_code is not None:
        raise typer.Exit(group_code)
    overrides: dict[str, Any] = {
        "base_models": base_models,
        "models_dir": models_dir,
        "dataset": dataset,
        "artifacts_uri": artifacts_uri,
        "run_id": run_id,
        "model_version": model_version,
        "checkpoint_dir": checkpoint_dir,
        "work_dir": work_dir,
        "allow_pickle": allow_pickle or None,
        "create_bucket": create_bucket or None,
        "lora": {
            "r": lora_r,
            "alpha": lora_alpha,
            "dropout": lora_dropout,
            "target_modules": target_modules,
        },
        "train": {
            "learning_rate": learning_rate,
            "epochs": epochs,
            "max_steps": max_steps,
            "seq_len": seq_len,
            "batch_tokens": batch_tokens,
            "seed": seed,
            "gradient_checkpointing": gradient_checkpointing or None,
            "allow_regression": allow_regression or None,
            "skip_bad_records": skip_bad_records or None,
        },
    }
    if configmap and os.environ.get("JOB_COMPLETION_INDEX", "").strip():
        # Each pod of an Indexed Job would read the live ConfigMap at its own start (and
        # again on every retry), so two indices could see two different lists.
        raise ConfigError(
            f"--configmap {configmap} is refused in an Indexed Job (JOB_COMPLETION_INDEX is "
            "set): pods could read different lists; pass BASE_MODELS from an immutable "
            "snapshot (the chart's baseModels) or run one pod (mode=sequential)"
        )
    if configmap:
        overrides["base_models"] = (
            base_models if base_models else _base_models_from_configmap(configmap)
        )
    _run_training(_settings(**overrides))


def _run_training(settings: JobSettings) -> None:
    """train_job with Kubernetes Events/annotations when in a Job (a no-op reporter outside)."""
    from oneseek_job.job import train_job
    from oneseek_job.kube import JobReporter, KubeContext
    from oneseek_job.telemetry import FanOut, open_telemetry

    context = KubeContext.from_environment(os.environ)
    settings = _with_running_image_digest(settings, context)
    reporter = JobReporter(context)
    # Under torchrun only global rank 0 reports: one MLflow run, one event file, one port.
    telemetry = (
        open_telemetry(
            settings.telemetry_dir,
            run_id=settings.run_id,
            tensorboard=settings.tensorboard,
            metrics_port=settings.metrics_port,
            mlflow_tracking_uri=settings.mlflow_tracking_uri,
            extra=_console_progress(),
        )
        if os.environ.get("RANK", "0") == "0"
        else FanOut([])
    )
    try:
        train_job(settings, reporter, telemetry)
    except JobError as error:
        if error.exit_code != EXIT_PREEMPTED:
            reporter.failed(str(error))
        raise
    finally:
        telemetry.close()
        reporter.close()


def _with_running_image_digest(settings: JobSettings, context: KubeContext) -> JobSettings:
    """Record the digest the kubelet actually pulled (the pod's status) in the provenance.

    It wins over ONESEEK_IMAGE_DIGEST, which only says what the chart was told; outside a
    cluster, or when the pod cannot tell, the configured value stays.
    """
    from oneseek_job.kube import pod_image_digest
    from oneseek_job.logs import get_logger

    running = pod_image_digest(context)
    if running is None or running == settings.image_digest:
        return settings
    if settings.image_digest is not None:
        get_logger(__name__).warning(
            "image_digest_differs",
            configured=settings.image_digest,
            running=running,
            recorded=running,
        )
    return settings.model_copy(update={"image_digest": running})


def _base_models_from_configmap(name: str) -> str:
    from oneseek_job import kube

    context = kube.KubeContext.from_environment(os.environ)
    return ",".join(kube.read_base_models_from_configmap(context, name))


@app.command()
def discover(
    base_models: BaseModelsOpt = None,
    models_dir: ModelsDirOpt = None,
    allow_pickle: Annotated[bool, typer.Option(help="Accept pickle-only weights.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: list every model on the volume and how each BASE_MODELS name resolves.

    Exits 3 when a requested name is ambiguous or unknown, 2 on bad input.

    Names matched only loosely (separator-free, or a run of whole tokens of one key) are
    flagged in the resolution table and logged as warnings.

    Examples:

    \b
      oneseek-job discover --models-dir ./demo/models --base-models KB-Llama-3.1-8B-Swedish
      MODELS_DIR=/models oneseek-job discover --json | jq '.models[].key'
    """
    _setup_logging(to_stderr=True)
    settings = _settings(
        base_models=base_models, models_dir=models_dir, allow_pickle=allow_pickle or None
    )
    from oneseek_job.discovery import discover as scan
    from oneseek_job.discovery import resolve_base_models
    from oneseek_job.report import discovery_json, print_discovery

    report = scan(settings.models_dir, allow_pickle=settings.allow_pickle)
    resolutions, failure = [], None
    if settings.base_models:
        try:
            resolutions = resolve_base_models(settings.base_models, report)
        except JobError as error:
            failure = error
    if as_json:
        typer.echo(json.dumps(discovery_json(report, resolutions, failure), indent=2))
    else:
        print_discovery(report, resolutions, failure)
    if failure is not None:
        raise failure


@app.command()
def certify(
    run_id: Annotated[str, typer.Option("--run-id", help="The run to certify.")],
    artifacts_uri: ArtifactsOpt = None,
    create_bucket: CreateBucketOpt = False,
) -> None:
    """Certify a run whose models are all uploaded (idempotent; exactly one certifier wins).

    Example:

    \b
      oneseek-job certify --run-id run-20251123-001234 --artifacts-uri s3://oneseek/prod
    """
    _setup_logging()
    settings = _settings(
        run_id=run_id, artifacts_uri=artifacts_uri, create_bucket=create_bucket or None
    )
    from oneseek_job.job import certify_job

    certify_job(settings)


@app.command()
def verify(
    artifacts_uri: Annotated[
        str | None, typer.Argument(help="s3://bucket/prefix or a directory [env: ARTIFACTS_URI].")
    ] = None,
    run_id: RunIdOpt = None,
    current: Annotated[bool, typer.Option(help="Verify the run CURRENT points at.")] = False,
    public_key: Annotated[
        Path | None, typer.Option(help="Expected signer's public key (PEM).")
    ] = None,
    allow_unsigned: Annotated[bool, typer.Option(help="Accept a run without signature.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash every file of a run and check manifest, signature, ledger, DNA and in-toto.

    Exits 0 only when every check holds; 2 when any check fails (tampered, incomplete,
    unsigned without --allow-unsigned: re-running cannot change the verdict); 1 only when
    the store itself fails (transient).

    Examples:

    \b
      oneseek-job verify ./demo/artifacts --current --public-key oneseek.pub
      oneseek-job verify s3://oneseek/prod --run-id run-20251123-001234 --json
    """
    _setup_logging(to_stderr=True)
    # --current wins over a RUN_ID in the environment: it is the explicit question.
    settings = _settings(artifacts_uri=artifacts_uri, run_id=None if current else run_id)
    from oneseek_job.job import verify_job

    report = verify_job(
        settings,
        run_id=run_id,
        current=current or run_id is None,
        public_key_file=public_key,
        allow_unsigned=allow_unsigned,
    )
    _print_verdict(report, as_json=as_json)
    if not report.ok:
        failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
        raise VerificationError(f"run {report.run_id} does not verify: " + "; ".join(failed))


def _print_verdict(report: VerifyReport, *, as_json: bool) -> None:
    if as_json:
        document = {
            "run_id": report.run_id,
            "ok": report.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"verify {report.run_id}: {'OK' if report.ok else 'FAILED'}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in report.checks:
        table.add_row(check.name, "ok" if check.ok else "FAIL", check.detail)
    Console(width=None if sys.stdout.isatty() else 220).print(table)


@app.command()
def report(
    artifacts_uri: Annotated[
        str | None, typer.Argument(help="s3://bucket/prefix or a directory [env: ARTIFACTS_URI].")
    ] = None,
    run_id: RunIdOpt = None,
    current: Annotated[bool, typer.Option(help="Report on the run CURRENT points at.")] = False,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    public_key: Annotated[
        Path | None, typer.Option(help="Expected signer's public key (PEM) for the check.")
    ] = None,
) -> None:
    """Render a certified run's HTML report, with a fresh verification, into one file.

    The page is self-contained (inline SVG charts, no scripts or network requests): open it
    in any browser, attach it to a review. Reads the run only; never imports torch.

    Examples:

      oneseek-job report ./demo/artifacts --current --out report.html

      oneseek-job report s3://oneseek/prod --run-id run-20251123-001234 --out run.html
    """
    _setup_logging(to_stderr=True)
    settings = _settings(artifacts_uri=artifacts_uri, run_id=None if current else run_id)
    from oneseek_job.job import report_job

    view = report_job(
        settings,
        run_id=run_id,
        current=current or run_id is None,
        public_key_file=public_key,
    )
    from oneseek_job.run_report import render_html

    out.write_text(render_html(view), encoding="utf-8")
    passed = view.verification is not None and all(c.ok for c in view.verification)
    typer.echo(
        f"{out}: run {view.run_id}, {len(view.models)} model(s), "
        f"verification {'passed' if passed else 'FAILED'}"
    )


@app.command()
def keygen(
    out_dir: Annotated[Path, typer.Option(help="Directory for the key pair.")] = Path(),
    name: Annotated[str, typer.Option(help="File name stem.")] = "oneseek-signing",
) -> None:
    """Write an ECDSA P-256 key pair for signing runs (<name>.key private 0600, <name>.pub).

    The key signs MANIFEST.json and the OpenSSF model signatures (model.sig) of every
    adapter and run directory; `model_signing verify key DIR --signature DIR/model.sig
    --public_key <name>.pub` checks those.

    Example (then store the private key as a Kubernetes Secret):

    \b
      oneseek-job keygen --out-dir keys
      kubectl create secret generic oneseek-job-signing-key \\
        --from-file=signing-key.pem=keys/oneseek-signing.key
    """
    _setup_logging(to_stderr=True)
    from oneseek_job.provenance import generate_keypair

    private, public = generate_keypair(out_dir, name=name)
    typer.echo(f"private key: {private}\npublic key:  {public}")


@app.command()
def demo(
    root: Annotated[Path, typer.Option(help="Where to build the demo workspace.")] = Path("demo"),
    seed: Annotated[int, typer.Option(help="Seed for models and data.")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if the workspace exists.")] = False,
    run: Annotated[
        bool, typer.Option("--run", help="Then train all demo models into <root>/artifacts.")
    ] = False,
) -> None:
    """Build the embedded demo workspace (tiny models + Swedish dataset), optionally train on it.

    Examples:

    \b
      oneseek-job demo                 # build ./demo
      oneseek-job demo --run           # build, then train every demo model on CPU
    """
    _setup_logging()
    from oneseek_job.demo import build_demo

    workspace = build_demo(root, seed=seed, force=force)
    typer.echo(f"demo workspace: {workspace.root}")
    if not run:
        typer.echo(f"run it with: set -a; . {workspace.root}/demo.env; set +a; oneseek-job train")
        return
    import shlex

    for line in workspace.env_file.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            os.environ.setdefault(name.strip(), " ".join(shlex.split(value)))
    # The demo run is signed, so `verify --public-key` has something to check.
    key_dir = workspace.root / "keys"
    if not (key_dir / "oneseek-signing.key").exists():
        from oneseek_job.provenance import generate_keypair

        generate_keypair(key_dir, name="oneseek-signing")
    os.environ.setdefault("ONESEEK_SIGNING_KEY_FILE", str(key_dir / "oneseek-signing.key"))
    settings = _settings()
    _run_training(settings)
    from oneseek_job.layout import REPORT_NAME, TENSORBOARD_DIR, run_prefix

    run_dir = f"{settings.artifacts_uri.rstrip('/')}/{run_prefix(settings.run_id)}"
    typer.echo(f"run report:  {run_dir}{REPORT_NAME}")
    typer.echo(f"tensorboard: tensorboard --logdir {run_dir}{TENSORBOARD_DIR}")


@app.command()
def version() -> None:
    """Print the version of oneseek-job and of the libraries it trains with."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    typer.echo(f"oneseek-job {__version__}")
    for package in ("torch", "transformers", "peft", "boto3"):
        try:
            typer.echo(f"  {package} {package_version(package)}")
        except PackageNotFoundError:
            typer.echo(f"  {package} not installed")


def main() -> None:
    """Console entry point: run the app, map domain errors to one line and their exit code."""
    # First thing: as a container's PID 1 the process has no default SIGTERM action, so a
    # SIGTERM before training starts was dropped; now it is recorded and training (or its
    # first step) stops with a checkpoint and exit 75.
    install_sigterm_handler()
    crash_at = os.environ.get("ONESEEK_CRASH_AT")  # test hook: SIGKILL at a publish step
    if crash_at:
        from oneseek_job import faultpoints

        faultpoints.arm(crash_at)
    try:
        app()  # standalone: usage errors exit 2 with click's message, --help exits 0
    except JobError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:  # the last line of defence: one line, exit 1, no traceback
        _fail(f"unexpected {type(error).__name__}: {error}", EXIT_FAILED)


def _fail(message: str, code: int) -> None:
    from oneseek_job.logs import redact_text
    from oneseek_job.report import terminal_safe

    if os.environ.get("ONESEEK_DEBUG"):
        # Exceptions can carry request details; the traceback passes the redactor too.
        sys.stderr.write(redact_text(traceback.format_exc()))
    # Names from the volume or the ConfigMap may hold escape sequences: shown, never obeyed.
    line = terminal_safe(redact_text(" ".join(message.split())))
    typer.echo(f"error: {line}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
