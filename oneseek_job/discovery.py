"""Find base models on the models volume and resolve the admin's BASE_MODELS names to them.

The seed's behaviour, made strict: every candidate directory is either a usable model or
reported with the reason it cannot be used; a requested name resolves to exactly one model
or fails naming the candidates. Never a silent fallback to another model.

No torch here: ``discover`` must start in well under a second.
"""

from __future__ import annotations

import difflib
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneseek_job.errors import ConfigError, InputError, ResolutionError
from oneseek_job.logs import get_logger

__all__ = [
    "BASE_MODELS_SUBDIR",
    "DEFAULT_MODEL_KEY",
    "EXCLUDED_DIRS",
    "MAX_BASE_MODELS",
    "DiscoveryReport",
    "ModelInfo",
    "Resolution",
    "UnusableModel",
    "check_base_models",
    "discover",
    "get_model_display_name",
    "normalize_model_name",
    "remove_separators",
    "resolve_base_models",
]

log = get_logger(__name__)

DEFAULT_MODEL_KEY = "unknown-model"
BASE_MODELS_SUBDIR = Path("oneseek-7b-zero") / "base_models"
# The original's exclusions, plus our own output and housekeeping directories.
EXCLUDED_DIRS = frozenset(
    {
        "oneseek-7b-zero",
        "oneseek-certified",
        "backups",
        "lora_adapters",
        "weights",
        "checkpoints",
        "artifacts",
        "work",
        "lost+found",
        "__pycache__",
    }
)
SAFE_WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pth", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
MAX_NAME_LENGTH = 200
# A Job trains its models one after another: hundreds of names are a broken ConfigMap, not a plan.
MAX_BASE_MODELS = 64
# Problems shown in the one-line error; the rest are counted.
_SHOWN_PROBLEMS = 5
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
# Never part of a model name; "mistral;rm -rf" must not substring-match "mistral".
_SHELL_CHARS = frozenset(";&|`$<>(){}*?!\"'")


def normalize_model_name(name: str) -> str:
    """Lower-case; every run of non-alphanumerics becomes one ``-``; dashes trimmed.

    ``KB-Llama-3.1-8B-Swedish`` → ``kb-llama-3-1-8b-swedish``; ``gemma_2_9b`` → ``gemma-2-9b``.
    """
    return _NON_ALNUM.sub("-", name.lower()).strip("-")


def remove_separators(text: str) -> str:
    """Drop every separator: ``KB-Llama-3.1-8B-Swedish`` → ``kbllama318bswedish``."""
    return _NON_ALNUM.sub("", text.lower())


def get_model_display_name(config: dict[str, Any], directory: Path) -> str:
    """``model_name`` from config.json, else the last segment of ``_name_or_path``, else the dir."""
    model_name = config.get("model_name")
    if isinstance(model_name, str) and model_name.strip():
        return model_name.strip()
    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str):
        segments = [s for s in re.split(r"[\\/]", name_or_path.strip()) if s not in ("", ".")]
        if segments:
            return segments[-1]
    return directory.name


@dataclass(frozen=True)
class ModelInfo:
    """A usable base model found on the models volume."""

    key: str
    display_name: str
    path: Path  # as found under MODELS_DIR (may be a symlink)
    resolved_path: Path
    location: str  # "base_models" or "root"
    architecture: str
    model_type: str
    num_parameters: int | None
    size_bytes: int
    weight_format: str  # "safetensors" or "pickle"
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnusableModel:
    """A candidate directory that cannot be trained, and why."""

    name: str
    path: Path
    reason: str


@dataclass
class DiscoveryReport:
    """Everything ``discover`` found: usable models by key, and the rejected candidates."""

    models_dir: Path
    models: dict[str, ModelInfo] = field(default_factory=dict)
    unusable: list[UnusableModel] = field(default_factory=list)


@dataclass(frozen=True)
class Resolution:
    """How one requested name resolved."""

    requested: tuple[str, ...]  # every admin spelling that led here (duplicates merged)
    key: str
    how: str  # "exact key", "display name", "separator-free", "substring", ...
    model: ModelInfo


class _Unusable(Exception):  # noqa: N818 - internal control flow, never escapes this module
    pass


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise _Unusable("no config.json")
    try:
        raw = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _Unusable(f"{config_path} cannot be read: {error}") from None
    if not raw.strip():
        raise _Unusable(f"{config_path} is empty")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise _Unusable(
            f"{config_path} is not valid JSON: {error.msg} (line {error.lineno})"
        ) from None
    if not isinstance(config, dict):
        raise _Unusable(f"{config_path} does not hold a JSON object")
    return config


def _safetensors_parameters(path: Path) -> int:
    """Count parameters from a safetensors header and check the file is not truncated."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _Unusable(f"{path.name} is truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, 100_000_000):
            raise _Unusable(f"{path.name} is corrupt (header length {header_len} exceeds the file)")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Unusable(f"{path.name} is corrupt (unreadable safetensors header)") from None
    if not isinstance(header, dict):
        raise _Unusable(f"{path.name} is corrupt (safetensors header is not an object)")
    count, data_end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = entry["shape"]
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise _Unusable(f"{path.name} is corrupt (bad tensor entry {name!r})") from None
        elements = 1
        for dim in shape:
            elements *= int(dim)
        count += elements
    if 8 + header_len + data_end > size:
        raise _Unusable(
            f"{path.name} is truncated ({size} bytes, header promises {8 + header_len + data_end})"
        )
    return count


def _estimate_parameters(config: dict[str, Any]) -> int | None:
    # Rough decoder-only count for pickle-only checkpoints, where no header tells us.
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        inter = int(config.get("intermediate_size", 4 * hidden))
    except (KeyError, TypeError, ValueError):
        return None
    heads = int(config.get("num_attention_heads", 1) or 1)
    kv_heads = int(config.get("num_key_value_heads", heads) or heads)
    head_dim = int(config.get("head_dim", hidden // heads) or hidden // heads)
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp) + embeddings


def _inspect(directory: Path, *, allow_pickle: bool) -> tuple[dict[str, Any], int | None, str, int]:
    config = _read_config(directory)
    if config.get("auto_map"):
        raise _Unusable(
            "config.json asks for remote code (auto_map); trust_remote_code is never enabled"
        )
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else ""
    if architecture and not architecture.endswith("ForCausalLM"):
        raise _Unusable(f"architecture {architecture} is not a causal language model")
    if not isinstance(config.get("model_type"), str):
        raise _Unusable("config.json has no model_type")
    files = [p for p in directory.iterdir() if p.is_file()]
    safe = sorted(p for p in files if p.suffix in SAFE_WEIGHT_SUFFIXES)
    pickled = sorted(p for p in files if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if not safe and not pickled:
        raise _Unusable("no weight files (*.safetensors)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise _Unusable("no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if safe:
        parameters: int | None = sum(_safetensors_parameters(p) for p in safe)
        weight_format = "safetensors"
    elif allow_pickle:
        parameters, weight_format = _estimate_parameters(config), "pickle"
    else:
        raise _Unusable(
            "only pickle weights (.bin/.pth), which can run code when loaded; "
            "convert to safetensors or pass --allow-pickle"
        )
    size = sum(p.stat().st_size for p in files)
    return config, parameters, weight_format, size


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _candidates(root: Path) -> Iterable[tuple[Path, str]]:
    base_dir = root / BASE_MODELS_SUBDIR
    if base_dir.is_dir():
        for entry in sorted(base_dir.iterdir()):
            if not entry.name.startswith(".") and entry.is_dir():
                yield entry, "base_models"
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in EXCLUDED_DIRS or not entry.is_dir():
            continue
        if (entry / "config.json").exists() or any(
            p.suffix in SAFE_WEIGHT_SUFFIXES + PICKLE_WEIGHT_SUFFIXES for p in entry.iterdir()
        ):
            yield entry, "root"


def discover(models_dir: Path, *, allow_pickle: bool = False) -> DiscoveryReport:
    """Scan ``<models_dir>/oneseek-7b-zero/base_models/*`` and model dirs of ``<models_dir>``.

    Args:
        models_dir: the mounted models volume (MODELS_DIR).
        allow_pickle: accept checkpoints that only have pickle weights.

    Raises:
        InputError: ``models_dir`` does not exist or is not a directory.
    """
    if not models_dir.is_dir():
        raise InputError(f"MODELS_DIR {models_dir} does not exist or is not a directory")
    root = models_dir.resolve()
    report = DiscoveryReport(models_dir=models_dir)
    by_target: dict[Path, str] = {}
    symlinks: list[tuple[Path, str]] = []
    log.info("scan", tag="scan", models_dir=str(models_dir))
    for entry, location in _candidates(models_dir):
        if entry.is_symlink():
            symlinks.append((entry, location))  # aliases are settled after the real dirs
            continue
        _add(report, entry, location, root, by_target, allow_pickle=allow_pickle)
    for entry, location in symlinks:
        target = entry.resolve()
        if not _inside(target, root):
            report.unusable.append(
                UnusableModel(entry.name, entry, f"symlink points outside MODELS_DIR ({target})")
            )
        elif target in by_target:
            key = by_target[target]
            model = report.models[key]
            report.models[key] = _with_alias(model, entry.name)
        else:
            _add(report, entry, location, root, by_target, allow_pickle=allow_pickle)
    for bad in report.unusable:
        log.warning(
            "unusable_model", tag="scan", name=bad.name, path=str(bad.path), reason=bad.reason
        )
    return report


def _with_alias(model: ModelInfo, alias: str) -> ModelInfo:
    return ModelInfo(**{**model.__dict__, "aliases": (*model.aliases, alias)})


def _add(
    report: DiscoveryReport,
    entry: Path,
    location: str,
    root: Path,
    by_target: dict[Path, str],
    *,
    allow_pickle: bool,
) -> None:
    target = entry.resolve()
    if not _inside(target, root):
        report.unusable.append(
            UnusableModel(entry.name, entry, f"resolves outside MODELS_DIR ({target})")
        )
        return
    key = normalize_model_name(entry.name)
    if not key:
        report.unusable.append(UnusableModel(entry.name, entry, "name has no letters or digits"))
        return
    if key in report.models:
        other = report.models[key].path
        report.unusable.append(UnusableModel(entry.name, entry, f"same key {key!r} as {other}"))
        return
    try:
        config, parameters, weight_format, size = _inspect(entry, allow_pickle=allow_pickle)
    except _Unusable as error:
        report.unusable.append(UnusableModel(entry.name, entry, str(error)))
        return
    except OSError as error:
        report.unusable.append(UnusableModel(entry.name, entry, f"cannot be read: {error}"))
        return
    architectures = config.get("architectures") or [""]
    model = ModelInfo(
        key=key,
        display_name=get_model_display_name(config, entry),
        path=entry,
        resolved_path=target,
        location=location,
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "")),
        num_parameters=parameters,
        size_bytes=size,
        weight_format=weight_format,
    )
    report.models[key] = model
    by_target[target] = key
    log.info("found", tag="found", key=key, display_name=model.display_name, path=str(entry))


def check_base_models(models_dir: Path) -> dict[str, Path]:
    """The seed's function: normalized key → model directory, for every usable model."""
    return {key: model.path for key, model in discover(models_dir).models.items()}


def _check_name(name: str) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return f"{name[:40]!r}… is longer than {MAX_NAME_LENGTH} characters"
    if any(ord(ch) < 32 for ch in name):
        return f"{name!r} contains control characters"
    if _SHELL_CHARS.intersection(name):
        return (
            f"{name!r} contains shell or quoting characters "
            f"({''.join(sorted(_SHELL_CHARS.intersection(name)))}); model names never do"
        )
    if "/" in name or "\\" in name or ".." in name or name.startswith("~"):
        return f"{name!r} is a path, not a model name; models are only looked up inside MODELS_DIR"
    if not normalize_model_name(name):
        return f"{name!r} has no ASCII letters or digits"
    return None


def _match(name: str, models: dict[str, ModelInfo]) -> tuple[list[str], str]:
    wanted = normalize_model_name(name)
    bare = remove_separators(name)
    exact = [k for k in models if k == wanted]
    if exact:
        return exact, "exact key"
    by_display = [
        k for k, m in models.items() if normalize_model_name(m.display_name) == wanted
    ] + [k for k, m in models.items() if wanted in (normalize_model_name(a) for a in m.aliases)]
    if by_display:
        return sorted(set(by_display)), "display name"
    no_sep = [k for k in models if remove_separators(k) == bare]
    if no_sep:
        return no_sep, "separator-free"
    sub = [k for k in models if wanted in k or k in wanted]
    if sub:
        return sorted(sub), "substring"
    sub_bare = [k for k in models if bare in remove_separators(k) or remove_separators(k) in bare]
    return sorted(sub_bare), "separator-free substring"


def resolve_base_models(requested: list[str], report: DiscoveryReport) -> list[Resolution]:
    """Resolve every requested name to exactly one usable model, in the order given.

    Order of rules: equal normalized keys (or display names / CURRENT-style aliases);
    equal separator-free forms; a unique substring either way (normalized, then
    separator-free). Names resolving to the same model are trained once.

    Raises:
        ResolutionError: a name is empty, a path, ambiguous or unknown (all problems in one line).
        ConfigError: more than ``MAX_BASE_MODELS`` names (a broken ConfigMap).
        InputError: a name matches a model directory that cannot be used.
    """
    names = [n.strip() for n in requested if n.strip()]
    if not names:
        raise ResolutionError(
            "BASE_MODELS is empty: set it to comma-separated model names, e.g. "
            "'KB-Llama-3.1-8B-Swedish'" + _available(report)
        )
    if len(names) > MAX_BASE_MODELS:
        raise ConfigError(
            f"BASE_MODELS has {len(names)} names (first: {', '.join(names[:3])[:120]}…); "
            f"at most {MAX_BASE_MODELS} are allowed, check the ConfigMap"
        )
    problems: list[str] = []
    unusable: list[str] = []
    merged: dict[str, Resolution] = {}
    for name in names:
        invalid = _check_name(name)
        if invalid:
            problems.append(invalid)
            continue
        keys, how = _match(name, report.models)
        if len(keys) == 1:
            key = keys[0]
            if key in merged:
                previous = merged[key]
                merged[key] = Resolution(
                    (*previous.requested, name), key, previous.how, previous.model
                )
            else:
                merged[key] = Resolution((name,), key, how, report.models[key])
            continue
        if len(keys) > 1:
            problems.append(
                f"{name!r} is ambiguous ({how} match: {', '.join(keys)}); use the full name"
            )
            continue
        broken = [
            u for u in report.unusable if normalize_model_name(u.name) == normalize_model_name(name)
        ]
        if broken:
            unusable.append(
                f"{name!r} is {broken[0].path}, which cannot be used: {broken[0].reason}"
            )
            continue
        close = difflib.get_close_matches(
            normalize_model_name(name), list(report.models), n=3, cutoff=0.4
        )
        hint = f"closest: {', '.join(close)}" if close else _available(report).removeprefix("; ")
        problems.append(f"{name!r} matches no model ({hint})")
    if unusable and not problems:
        raise InputError("; ".join(unusable))
    if problems or unusable:
        everything = problems + unusable
        more = len(everything) - _SHOWN_PROBLEMS
        raise ResolutionError(
            "BASE_MODELS: "
            + "; ".join(everything[:_SHOWN_PROBLEMS])
            + (f" (and {more} more)" if more > 0 else "")
        )
    for resolution in merged.values():
        log.info(
            "resolved",
            tag="config",
            requested=list(resolution.requested),
            key=resolution.key,
            how=resolution.how,
        )
    return list(merged.values())


def _available(report: DiscoveryReport) -> str:
    if not report.models:
        return f"; no usable models under {report.models_dir}"
    return f"; available: {', '.join(sorted(report.models))}"
