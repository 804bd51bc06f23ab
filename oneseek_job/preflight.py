"""Pre-flight: every check that bad input can fail, before the first GPU second.

``train`` runs :data:`CHECKS` in order, cheapest first, and only then loads a model. Each
check is a named function that reads the :class:`Preflight` context, adds what it found
(the resolved models, the records, the opened store, the signing key) and raises a
:class:`~oneseek_job.errors.JobError` whose exit code says whether a retry can help
(2 / 3: never; 1: network and other transient trouble). On any bad input the whole phase
ends within :data:`PREFLIGHT_BUDGET_S`: the slow parts have their own bounds (S3
reachability :data:`S3_BUDGET_S`, chat templates :data:`TEMPLATE_BUDGET_S`).

To add a check, write ``def check_x(ctx: Preflight) -> None`` and insert
``Check("x", check_x)`` into :data:`CHECKS` where its cost belongs.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from oneseek_job.errors import (
    EXIT_FAILED,
    ConfigError,
    InputError,
    JobError,
    JobShapeError,
    TransientError,
    exit_code_for_os_error,
)
from oneseek_job.logs import get_logger

if TYPE_CHECKING:
    from oneseek_job.config import JobSettings
    from oneseek_job.data import Record
    from oneseek_job.discovery import DiscoveryReport, Resolution
    from oneseek_job.storage import Store

__all__ = [
    "CHECKS",
    "MAX_ARTIFACT_NAME_BYTES",
    "PREFLIGHT_BUDGET_S",
    "S3_BUDGET_S",
    "TEMPLATE_BUDGET_S",
    "Check",
    "Preflight",
    "run_preflight",
    "select_models",
]

log = get_logger(__name__)

# The promise to the operator: a bad input fails the phase within this many seconds.
PREFLIGHT_BUDGET_S = 60.0
# Opening the artifact store (DNS, TCP connect, ListObjectsV2 with the client's own
# connect 10 s / read 120 s timeouts and retries) must answer within this total.
S3_BUDGET_S = 30.0
# Chat templates run in a forked child with this much wall time per model, …
TEMPLATE_BUDGET_S = 10.0
# … this much extra address space, and this largest rendered record.
TEMPLATE_MEMORY_BYTES = 2 << 30
TEMPLATE_MAX_OUTPUT = 8_000_000
# File-name components (ext4, XFS, most CSI volumes) and S3 keys have hard limits.
MAX_ARTIFACT_NAME_BYTES = 255
MAX_S3_KEY_BYTES = 1024
SIGNING_KEY_LIMIT = 64 * 1024


@dataclass
class Preflight:
    """What the checks established; the job's steps take their inputs from here."""

    settings: JobSettings
    report: DiscoveryReport | None = None
    resolutions: list[Resolution] = field(default_factory=list)
    selected: list[Resolution] = field(default_factory=list)  # the models this pod trains
    records: list[Record] = field(default_factory=list)
    store: Store | None = None
    signing_key: Any = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One named pre-flight check."""

    name: str
    run: Callable[[Preflight], None]


def run_preflight(settings: JobSettings, checks: Sequence[Check] | None = None) -> Preflight:
    """Run every check in order; the first failure ends the phase with its error.

    Raises:
        JobError: the first failed check's error (ConfigError, InputError, ResolutionError
            for bad input; TransientError / StorageError when a retry can help).
    """
    ctx = Preflight(settings=settings)
    started = time.monotonic()
    for check in CHECKS if checks is None else checks:
        began = time.monotonic()
        check.run(ctx)
        ctx.timings[check.name] = round(time.monotonic() - began, 3)
    log.info(
        "preflight_passed",
        tag="config",
        seconds=round(time.monotonic() - started, 3),
        checks=ctx.timings,
    )
    return ctx


# ----------------------------------------------------------------------------- settings


def check_required(ctx: Preflight) -> None:
    """The settings ``train`` cannot do without."""
    if not ctx.settings.base_models:
        raise ConfigError("BASE_MODELS is empty: set it to comma-separated model names")
    if ctx.settings.dataset is None:
        raise ConfigError("DATASET is not set: point it at a JSONL file or directory")


def _local_artifacts(uri: str) -> Path | None:
    if "://" not in uri:
        return Path(uri).expanduser()
    if uri.split("://", 1)[0].lower() == "file":
        return Path(urlsplit(uri).path)
    return None


def check_paths(ctx: Preflight) -> None:
    """No two locations nest in a way that breaks a run; none is a file where a dir belongs.

    MODELS_DIR is read-only input; the work dir, CHECKPOINT_DIR and a local ARTIFACTS_URI
    are written. A checkpoint inside the certified area would end up in the run (and fail
    its own verify), artifacts inside the work dir are scratch that a pod loses, anything
    written under MODELS_DIR could be scanned as a model. The default CHECKPOINT_DIR
    (``<work dir>/checkpoints``) is the one nesting allowed.
    """
    settings = ctx.settings
    places: dict[str, Path] = {
        "MODELS_DIR": settings.models_dir,
        "ONESEEK_WORK_DIR": settings.work_dir,
        "CHECKPOINT_DIR": settings.checkpoint_root,
    }
    artifacts = _local_artifacts(settings.artifacts_uri)
    if artifacts is not None:
        places["ARTIFACTS_URI"] = artifacts
    resolved = {name: path.resolve() for name, path in places.items()}
    allowed = {("CHECKPOINT_DIR", "ONESEEK_WORK_DIR")}  # (inner, outer)
    for inner, inner_path in resolved.items():
        for outer, outer_path in resolved.items():
            if inner == outer or (inner, outer) in allowed:
                continue
            if inner_path == outer_path or outer_path in inner_path.parents:
                relation = "is the same directory as" if inner_path == outer_path else "is inside"
                raise ConfigError(
                    f"{inner} ({places[inner]}) {relation} {outer} ({places[outer]}); "
                    "give each its own location"
                )
    for name in ("ONESEEK_WORK_DIR", "CHECKPOINT_DIR", "ARTIFACTS_URI"):
        path = places.get(name)
        if path is not None and path.exists() and not path.is_dir():
            raise ConfigError(f"{name} {path} exists and is not a directory")


def check_signing_key(ctx: Preflight) -> None:
    """Format, type and permissions of ONESEEK_SIGNING_KEY_FILE, before any training.

    Permissions: a key readable by every user of the container (``o+r``, the default 0644
    of a Secret volume without ``defaultMode``) or writable by anyone but its owner is
    refused; group-readable (the chart's ``defaultMode: 0440`` with ``fsGroup``) is fine.
    """
    path = ctx.settings.signing_key_file
    if path is None:
        log.warning("unsigned_run", tag="config", reason="ONESEEK_SIGNING_KEY_FILE is not set")
        return
    from oneseek_job.safefile import read_regular_file

    _data, mode = read_regular_file(path, what="ONESEEK_SIGNING_KEY_FILE", limit=SIGNING_KEY_LIMIT)
    if mode & 0o022:
        raise ConfigError(
            f"ONESEEK_SIGNING_KEY_FILE {path} is writable by group or others (mode "
            f"{mode:04o}); anyone could swap the key: chmod 0400 or set the Secret volume's "
            "defaultMode: 0440"
        )
    if mode & 0o004:
        raise ConfigError(
            f"ONESEEK_SIGNING_KEY_FILE {path} is readable by every user (mode {mode:04o}); "
            "chmod 0400 or set the Secret volume's defaultMode: 0440"
        )
    from oneseek_job.provenance import load_private_key

    ctx.signing_key = load_private_key(path)


# ----------------------------------------------------------------------------- cluster


def check_job_shape(ctx: Preflight) -> None:
    """BASE_MODELS holds as many names as the Job was rendered for (ONESEEK_MODEL_COUNT).

    Otherwise the Job's completions and its list drifted apart: too few indices and the run
    is never certified, too many and the extra index fails a certified run.

    Raises:
        JobShapeError: the counts differ (exit 4: the Job's FailJob rule stops every index).
    """
    settings = ctx.settings
    expected = settings.model_count
    if expected is None or expected == len(settings.base_models):
        return
    raise JobShapeError(
        f"this Job was made for {expected} model(s) (ONESEEK_MODEL_COUNT, the Job's "
        f"completions) but BASE_MODELS lists {len(settings.base_models)}; render the Job "
        "again from one list (helm upgrade, or completions in k8s/base/job.yaml)"
    )


def check_secrets(ctx: Preflight) -> None:
    """The Secrets the pod references are there.

    The chart and the kustomize base reference them as ``optional``, so a missing Secret
    lets the pod start (instead of CreateContainerConfigError until the deadline) and this
    check names it.
    """
    settings = ctx.settings
    secret = settings.credentials_secret
    if secret:
        missing = [
            name
            for name, value in (
                ("AWS_ACCESS_KEY_ID", settings.aws_access_key_id),
                ("AWS_SECRET_ACCESS_KEY", settings.aws_secret_access_key),
            )
            if value is None or not value.get_secret_value()
        ]
        if missing:
            raise ConfigError(
                f"Secret {secret} (ONESEEK_CREDENTIALS_SECRET) is missing or lacks the "
                f"key(s) {' and '.join(missing)} (create it as docs/deploy.md shows, or with "
                'IRSA / workload identity set artifacts.credentialsSecret.name to "")'
            )
    key = settings.signing_key_file
    if key is not None and not os.path.lexists(key):
        raise ConfigError(
            f"ONESEEK_SIGNING_KEY_FILE {key} does not exist: the signing-key Secret is "
            "missing or lacks that key (oneseek-job keygen, then kubectl create secret "
            "generic; docs/deploy.md), or turn signing off"
        )


# The image's torch is PyPI's CUDA 13.0 build (Dockerfile); its floor.
MIN_DRIVER = "R580"
MIN_CAPABILITY = (7, 5)
_DRIVER_PROC = Path("/proc/driver/nvidia/version")
_DRIVER_IN_PROC = re.compile(r"Kernel Module(?: for \S+)?\s+([0-9]+(?:\.[0-9]+)+)")


def nvidia_driver_version(proc: Path = _DRIVER_PROC) -> str:
    """The NVIDIA kernel driver the node runs, or a sentence saying why it is unknown."""
    try:
        match = _DRIVER_IN_PROC.search(proc.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if answer.returncode == 0 and answer.stdout.strip():
            return answer.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown (no NVIDIA driver visible in the container)"


def check_gpu(ctx: Preflight) -> None:
    """With a GPU requested (ONESEEK_GPU_COUNT), CUDA must see that many usable GPUs.

    On a node whose driver is older than the image's CUDA build needs, torch simply reports
    no CUDA; training would then quietly run on the CPU (an 8B model in fp32 runs out of
    memory or crawls to the deadline) while the allocated GPU idles.

    Raises:
        ConfigError: CUDA missing, fewer GPUs than requested, or a GPU below compute
            capability 7.5; the message names the driver and CUDA versions.
    """
    wanted = ctx.settings.gpu_count
    if wanted <= 0:
        return
    import torch

    build = f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (CPU wheel)'}"
    floor = (
        f"the image needs NVIDIA driver {MIN_DRIVER} or newer and compute capability "
        f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+; schedule on such nodes or set "
        "gpu.enabled=false"
    )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"ONESEEK_GPU_COUNT={wanted} but CUDA is not available ({build}, NVIDIA driver "
            f"{nvidia_driver_version()}); {floor}"
        )
    seen = torch.cuda.device_count()
    if seen < wanted:
        raise ConfigError(
            f"ONESEEK_GPU_COUNT={wanted} but CUDA sees {seen} GPU(s) ({build}, NVIDIA driver "
            f"{nvidia_driver_version()}); {floor}"
        )
    for index in range(wanted):
        capability = torch.cuda.get_device_capability(index)
        if capability < MIN_CAPABILITY:
            raise ConfigError(
                f"GPU {index} ({torch.cuda.get_device_name(index)}) has compute capability "
                f"{capability[0]}.{capability[1]} ({build}, NVIDIA driver "
                f"{nvidia_driver_version()}); {floor}"
            )
    log.info(
        "gpu",
        tag="config",
        gpus=[torch.cuda.get_device_name(i) for i in range(wanted)],
        cuda=torch.version.cuda,
        driver=nvidia_driver_version(),
    )


# ----------------------------------------------------------------------------- models


def select_models(
    resolutions: list[Resolution], index: int | None, setting: str = "JOB_COMPLETION_INDEX"
) -> list[Resolution]:
    """All models, or only the one at ``index`` (``JobSettings.model_selector``).

    Args:
        resolutions: every model of the run, in BASE_MODELS order.
        index: the model's position; None selects every model.
        setting: the env var the index came from, for the error message.

    Raises:
        ConfigError: the index is past the last model.
    """
    if index is None:
        return resolutions
    if index >= len(resolutions):
        raise ConfigError(
            f"{setting}={index} but BASE_MODELS resolves to {len(resolutions)} "
            f"model(s): set the Job's completions to {len(resolutions)}"
        )
    return [resolutions[index]]


def check_models(ctx: Preflight) -> None:
    """Scan MODELS_DIR, resolve BASE_MODELS, pick this pod's models, check artifact names."""
    from oneseek_job.discovery import discover, resolve_base_models

    settings = ctx.settings
    ctx.report = discover(settings.models_dir, allow_pickle=settings.allow_pickle)
    log.info(
        "config",
        tag="config",
        base_models=settings.base_models[:20],
        count=len(settings.base_models),
    )
    ctx.resolutions = resolve_base_models(settings.base_models, ctx.report)
    setting, index = settings.model_selector
    ctx.selected = select_models(ctx.resolutions, index, setting)
    for resolution in ctx.resolutions:
        _check_artifact_names(settings, resolution)


def check_model_aliases(ctx: Preflight) -> None:
    """Each model is listed once: discovery merges two spellings of one model into one
    resolution, which would shift every later index of an Indexed Job onto the wrong model
    and leave the last index without one."""
    aliased = [r for r in ctx.resolutions if len(r.requested) > 1]
    if aliased:
        shown = "; ".join(
            f"{', '.join(repr(n) for n in r.requested)} all name {r.key}" for r in aliased[:3]
        )
        raise ConfigError(f"BASE_MODELS lists a model more than once ({shown}): list it once")


def _check_artifact_names(settings: JobSettings, resolution: Resolution) -> None:
    from oneseek_job import layout

    key = resolution.key
    names = [
        layout.adapter_dir_name(key),
        layout.weights_file_name(settings.model_version, key),
    ]
    longest = max(names, key=lambda n: len(n.encode()))
    if len(longest.encode()) > MAX_ARTIFACT_NAME_BYTES:
        raise InputError(
            f"model directory {resolution.model.path.name[:60]!r}… gives the artifact name "
            f"{longest[:60]!r}… of {len(longest.encode())} bytes (file systems allow "
            f"{MAX_ARTIFACT_NAME_BYTES}); rename the model directory to at most "
            f"{MAX_ARTIFACT_NAME_BYTES - (len(longest) - len(key))} characters"
        )
    s3_key = (
        f"{layout.run_prefix(settings.run_id)}lora_adapters/{names[0]}/adapter_model.safetensors"
    )
    if len(s3_key.encode()) > MAX_S3_KEY_BYTES - 200:  # room for an ARTIFACTS_URI prefix
        raise InputError(f"artifact keys for {key[:60]!r}… would exceed S3's 1024-byte limit")


def check_pickle_weights(ctx: Preflight) -> None:
    """With --allow-pickle, every pickle checkpoint must pass the safe (weights_only) loader."""
    pickled = [r for r in ctx.selected if r.model.weight_format == "pickle"]
    if not pickled:
        return
    import pickle

    import torch

    for resolution in pickled:
        path = resolution.model.path
        for file in sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pth", ".pt")):
            try:
                # mmap: tensors are mapped, not read; the unpickler still vets every global.
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as error:
                first = (str(error).splitlines() or [type(error).__name__])[0][:160]
                raise InputError(
                    f"{file} is refused by the safe loader (weights_only): {first}; "
                    "convert the model to safetensors"
                ) from None


# ----------------------------------------------------------------------------- dataset


def check_dataset(ctx: Preflight) -> None:
    """Read and validate every record (see :func:`oneseek_job.data.load_records`)."""
    from oneseek_job.data import load_records

    assert ctx.settings.dataset is not None  # check_required ran first
    ctx.records = load_records(
        ctx.settings.dataset, skip_bad_records=ctx.settings.train.skip_bad_records
    )


# ----------------------------------------------------------------------------- locations


def _os_failure(what: str, path: Path, error: OSError) -> JobError:
    detail = error.strerror or type(error).__name__
    if exit_code_for_os_error(error) == EXIT_FAILED:
        return TransientError(f"{what} {path} failed a write probe ({detail}); retrying")
    hint = "mount a writable volume there"
    if isinstance(error, PermissionError):
        # NFS-like volumes ignore the pod's fsGroup: the export's owner decides.
        hint = (
            f"the job runs as UID {os.getuid()} GID {os.getgid()}, and NFS-like volumes "
            "ignore fsGroup: make the volume writable for them"
        )
    return ConfigError(f"{what} {path} is not a writable directory ({detail}); {hint}")


def _probe_dir(what: str, path: Path) -> None:
    import secrets

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".preflight-{secrets.token_hex(6)}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise _os_failure(what, path, error) from None


def check_locations(ctx: Preflight) -> None:
    """The work dir and CHECKPOINT_DIR can be created and written."""
    _probe_dir("ONESEEK_WORK_DIR", ctx.settings.work_dir)
    _probe_dir("CHECKPOINT_DIR", ctx.settings.checkpoint_root)


def check_store(ctx: Preflight) -> None:
    """Open the artifact store within :data:`S3_BUDGET_S` and check it can be written.

    The client's own timeouts (connect 10 s, read 120 s, 5 attempts) could hold a call for
    minutes against an endpoint that accepts TCP and never answers; the probe runs in a
    daemon thread and the phase gives up when the budget is spent.
    """
    from oneseek_job.storage import check_writable, store_from_settings

    opened: list[Store] = []
    failed: list[BaseException] = []

    def probe() -> None:
        try:
            opened.append(store_from_settings(ctx.settings))
        except BaseException as error:  # handed to the main thread below
            failed.append(error)

    thread = threading.Thread(target=probe, name="preflight-store", daemon=True)
    thread.start()
    thread.join(S3_BUDGET_S)
    if thread.is_alive():
        where = ctx.settings.s3_endpoint_url or "the AWS S3 endpoint"
        raise TransientError(
            f"the artifact store at {where} did not answer within {S3_BUDGET_S:.0f} s; "
            "check S3_ENDPOINT_URL and the network; the run is resumable"
        )
    if failed:
        raise failed[0]
    ctx.store = opened[0]
    check_writable(ctx.store)


# ----------------------------------------------------------------------------- tokenizers


def check_tokenizers(ctx: Preflight) -> None:
    """Load each selected model's config (transformers' own validation) and tokenizer, and
    render its chat template once per record shape.

    Rendering runs in a forked child with a wall-time and memory budget: a template is
    code from the model directory, and a loop or a huge string in it must not hang the job
    or exhaust the pod's memory. Errors the Jinja sandbox raises are bad input (exit 2).
    """
    shapes: dict[tuple[str, ...], Record] = {}
    for record in ctx.records:
        if record.messages is not None:
            shapes.setdefault(tuple(role for role, _ in record.messages), record)
    from transformers import AutoConfig

    from oneseek_job.training import load_tokenizer

    for resolution in ctx.selected:
        path = resolution.model.path
        try:
            AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except Exception as error:  # ValueError or transformers' own validation errors
            detail = " ".join(str(error).split())[:200]
            raise InputError(
                f"{path / 'config.json'} is not a valid model config "
                f"({type(error).__name__}: {detail}); fix it or remove the model from BASE_MODELS"
            ) from None
        try:
            tokenizer = load_tokenizer(path)
        except JobError:
            raise
        except Exception as error:  # a malformed tokenizer.json: KeyError, TypeError, …
            detail = " ".join(str(error).split())[:160]
            raise InputError(
                f"no usable tokenizer in {path} ({type(error).__name__}: {detail}); the model "
                "directory needs a valid tokenizer.json or tokenizer.model"
            ) from None
        if shapes and getattr(tokenizer, "chat_template", None):
            problem = _render_bounded(tokenizer, list(shapes.values()))
            if problem:
                raise InputError(
                    f"chat template of {resolution.key} {problem}; fix chat_template.jinja "
                    "(or tokenizer_config.json) in the model directory"
                )


def _render_bounded(tokenizer: Any, samples: list[Record]) -> str | None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_render_child, args=(tokenizer, samples, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(TEMPLATE_BUDGET_S):
            return f"rendering took longer than {TEMPLATE_BUDGET_S:.0f} s (a runaway loop?)"
        try:
            answer: str | None = receiver.recv()
        except EOFError:
            return "the renderer died (it ran out of memory or crashed)"
        return answer
    finally:
        child.kill()
        child.join()
        receiver.close()


def _render_child(tokenizer: Any, samples: list[Record], sender: Any) -> None:
    from oneseek_job.data import render_record

    _limit_memory(TEMPLATE_MEMORY_BYTES)
    answer: str | None = None
    for record in samples:
        where = f"{Path(record.source).name}:{record.line}"
        try:
            prompt, answer_text, _ = render_record(record, tokenizer)
        except MemoryError:
            answer = f"rendering {where} needs more than {TEMPLATE_MEMORY_BYTES >> 30} GiB"
            break
        except Exception as error:  # the sandbox's SecurityError, TemplateError, raise_exception
            answer = f"fails on {where}: {type(error).__name__}: {str(error)[:160]}"
            break
        size = len(prompt) + len(answer_text)
        if size > TEMPLATE_MAX_OUTPUT:
            answer = f"renders {where} to {size} characters (limit {TEMPLATE_MAX_OUTPUT})"
            break
    sender.send(answer)
    sender.close()


def _limit_memory(extra: int) -> None:
    try:
        with Path("/proc/self/status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    current = int(line.split()[1]) * 1024
                    resource.setrlimit(resource.RLIMIT_AS, (current + extra, current + extra))
                    return
    except (OSError, ValueError):
        return  # no /proc: the time budget still bounds the render


CHECKS: list[Check] = [
    Check("required-settings", check_required),
    Check("job-shape", check_job_shape),
    Check("paths", check_paths),
    Check("secrets", check_secrets),
    Check("signing-key", check_signing_key),
    Check("models", check_models),
    Check("model-aliases", check_model_aliases),
    Check("dataset", check_dataset),
    Check("locations", check_locations),
    Check("gpu", check_gpu),
    Check("artifact-store", check_store),
    Check("pickle-weights", check_pickle_weights),
    Check("tokenizers", check_tokenizers),
]
