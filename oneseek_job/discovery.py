"""Find base models on the models volume and resolve the admin's BASE_MODELS names to them.

The seed's behaviour, made strict: every candidate directory is either a usable model or
reported with the reason it cannot be used (one broken directory never blocks the others);
a requested name resolves to exactly one model or fails naming the candidates. Never a
silent fallback to another model, never a model more generic than the one asked for.

Every file is inspected without being loaded (config.json parsed with size and type
bounds, safetensors headers checked against the file), and nothing outside MODELS_DIR is
read through a symlink. No torch here: ``discover`` must start in well under a second.
"""

from __future__ import annotations

import difflib
import json
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from oneseek_job.errors import ConfigError, InputError, ResolutionError
from oneseek_job.logs import get_logger

__all__ = [
    "BASE_MODELS_SUBDIR",
    "DEFAULT_MODEL_KEY",
    "EXACT_RULES",
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
# Never part of a model name; "mistral;rm -rf" must not match "mistral".
_SHELL_CHARS = frozenset(";&|`$<>(){}*?!\"'")
# Printable ASCII: everything else is dropped by normalization and so cannot be matched on.
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")
# A token that only says a size or a version ("7b", "2", "0.5b") never picks a model alone.
_SIZE_TOKEN = re.compile(r"^[0-9]+[a-z]?$")
# Rules under which the admin named the model itself; every other rule logs a warning and
# is recorded in the run's results (requested name → key, rule).
EXACT_RULES = frozenset({"exact key", "display name", "directory name", "alias"})

# config.json bounds: a real config is a few KB; these fields size tensors, so a value out
# of range is a broken or hostile file that would only fail (or exhaust memory) at load time.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100_000_000
_CONFIG_INT_BOUNDS: dict[str, int] = {
    "vocab_size": 4_194_304,  # 16x the largest vocabularies in use (~262k)
    "hidden_size": 65_536,
    "intermediate_size": 1_048_576,
    "num_hidden_layers": 1_024,
    "num_attention_heads": 1_024,
    "num_key_value_heads": 1_024,
    "head_dim": 16_384,
    "max_position_embeddings": 1 << 30,
}
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}  # fmt: skip
_SUBBYTE_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})  # sizes not a whole byte per element


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
    """How the requested names that led to one model resolved.

    ``requested`` and ``rules`` are parallel: every admin spelling (duplicates merged) and
    the rule that matched it. ``how`` is the first name's rule.
    """

    requested: tuple[str, ...]
    key: str
    how: (
        str  # "exact key", "display name", "directory name", "alias", "separator-free", "token run"
    )
    model: ModelInfo
    rules: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        """Every requested name named this model itself (no separator-free or partial rule)."""
        return all(rule in EXACT_RULES for rule in self.rules or (self.how,))

    def spellings(self) -> list[dict[str, Any]]:
        """``{"requested", "key", "rule", "exact"}`` for every name that led to this model."""
        rules = self.rules or (self.how,) * len(self.requested)
        return [
            {"requested": name, "key": self.key, "rule": rule, "exact": rule in EXACT_RULES}
            for name, rule in zip(self.requested, rules, strict=True)
        ]

    def non_exact(self) -> list[dict[str, str]]:
        """``{"requested", "key", "rule"}`` for every name that matched only loosely.

        This is what the run's results and ledger record, so an auditor sees that
        ``mistral`` was taken to mean ``mistral-7b-instruct``.
        """
        rules = self.rules or (self.how,) * len(self.requested)
        return [
            {"requested": name, "key": self.key, "rule": rule}
            for name, rule in zip(self.requested, rules, strict=True)
            if rule not in EXACT_RULES
        ]


class _Unusable(Exception):  # noqa: N818 - internal control flow, never escapes this module
    pass


# ----------------------------------------------------------------------------- files


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _resolve(path: Path) -> Path:
    """The symlink-free path, or _Unusable for loops and dangling links."""
    try:
        return path.resolve(strict=True)
    except RuntimeError:  # Python 3.11/3.12 report a loop like this
        raise _Unusable(f"{path.name} is a symlink loop") from None
    except FileNotFoundError:
        raise _Unusable(f"{path.name} is a dangling symlink") from None
    except OSError as error:  # ELOOP on newer Pythons, EACCES on a component
        raise _Unusable(f"{path.name} cannot be resolved: {error.strerror}") from None


def _check_entries(directory: Path, root: Path) -> list[tuple[Path, int]]:
    """Top-level regular files of a model dir with their sizes, after checking every entry.

    A symlink (to a file or a dir) leaving MODELS_DIR, a symlink loop, and a FIFO, socket
    or device are refused: transformers would read them, and a FIFO would block forever.
    """
    files: list[tuple[Path, int]] = []
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        raise _Unusable(f"cannot be listed: {error.strerror}") from None
    for entry in entries:
        if entry.is_symlink():
            target = _resolve(entry)
            if not _inside(target, root):
                raise _Unusable(f"{entry.name} is a symlink to outside MODELS_DIR ({target})")
        try:
            info = entry.stat()
        except OSError as error:
            raise _Unusable(f"{entry.name} cannot be read: {error.strerror}") from None
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable(f"{entry.name} is not a regular file (FIFO, socket or device)")
        files.append((entry, info.st_size))
    return files


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.json"
    if not config_path.exists():
        raise _Unusable("no config.json")
    if not config_path.is_file():
        raise _Unusable(f"{config_path} is not a regular file")
    try:
        with config_path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise _Unusable(f"{config_path} cannot be read: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _Unusable(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unusable(f"{config_path} is not UTF-8") from None
    if not raw.strip():
        raise _Unusable(f"{config_path} is empty")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise _Unusable(
            f"{config_path} is not valid JSON: {error.msg} (line {error.lineno})"
        ) from None
    except RecursionError:
        raise _Unusable(f"{config_path} is nested too deeply") from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise _Unusable(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise _Unusable(f"{config_path} does not hold a JSON object")
    _check_config(config, config_path)
    return config


def _check_config(config: dict[str, Any], config_path: Path) -> None:
    """Types and bounds of the fields we (and transformers) size the model by."""
    if config.get("auto_map"):
        raise _Unusable(
            "config.json asks for remote code (auto_map); trust_remote_code is never enabled"
        )
    architectures = config.get("architectures")
    if architectures is not None and (
        not isinstance(architectures, list)
        or not all(isinstance(a, str) and a for a in architectures)
    ):
        raise _Unusable(f"{config_path}: 'architectures' must be a list of class names")
    if architectures and not architectures[0].endswith("ForCausalLM"):
        raise _Unusable(f"architecture {architectures[0]} is not a causal language model")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _Unusable("config.json has no model_type")
    for name, upper in _CONFIG_INT_BOUNDS.items():
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Unusable(f"{config_path}: {name} must be an integer (got {_short(value)})")
        if not 1 <= value <= upper:
            raise _Unusable(f"{config_path}: {name}={value:.3g} is outside 1..{upper}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:40] + "…"


def _safetensors_parameters(path: Path, size: int) -> int:
    """Count parameters from a safetensors header and check every tensor lies in the file."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _Unusable(f"{path.name} is truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise _Unusable(f"{path.name} is corrupt (header length {header_len} exceeds the file)")
        try:
            header = json.loads(handle.read(header_len))
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
            raise _Unusable(f"{path.name} is corrupt (unreadable safetensors header)") from None
    if not isinstance(header, dict):
        raise _Unusable(f"{path.name} is corrupt (safetensors header is not an object)")
    count, data_end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        elements, end = _tensor_entry(entry)
        if elements is None:
            raise _Unusable(f"{path.name} is corrupt (bad tensor entry {name[:80]!r})")
        count += elements
        data_end = max(data_end, end)
    if 8 + header_len + data_end > size:
        raise _Unusable(
            f"{path.name} is truncated ({size} bytes, header promises {8 + header_len + data_end})"
        )
    return count


def _tensor_entry(entry: Any) -> tuple[int | None, int]:
    """(element count, end offset) of one header entry; count None when it is malformed."""
    if not isinstance(entry, dict):
        return None, 0
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list):
        return None, 0
    if not all(type(d) is int and 0 <= d < 1 << 48 for d in shape):
        return None, 0
    if len(offsets) != 2 or not all(type(o) is int and 0 <= o < 1 << 62 for o in offsets):
        return None, 0
    start, end = offsets
    elements = 1
    for dim in shape:
        elements *= dim
    if start > end or (
        dtype not in _SUBBYTE_DTYPES and end - start != elements * _DTYPE_BYTES[dtype]
    ):
        return None, 0
    return elements, end


def _estimate_parameters(config: dict[str, Any]) -> int | None:
    # Rough decoder-only count for pickle-only checkpoints, where no header tells us. The
    # fields were type- and range-checked by _check_config.
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    inter = int(config.get("intermediate_size") or 4 * hidden)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or max(1, hidden // heads))
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") is True else 2)
    return layers * (attention + mlp) + embeddings


def _inspect(
    directory: Path, root: Path, *, allow_pickle: bool
) -> tuple[dict[str, Any], int | None, str, int]:
    files = _check_entries(directory, root)
    config = _read_config(directory)
    names = {path.name for path, _ in files}
    safe = [(p, s) for p, s in files if p.suffix in SAFE_WEIGHT_SUFFIXES]
    pickled = [p for p, _ in files if p.suffix in PICKLE_WEIGHT_SUFFIXES]
    if not safe and not pickled:
        raise _Unusable("no weight files (*.safetensors)")
    if not names.intersection(TOKENIZER_FILES):
        raise _Unusable("no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if safe:
        parameters: int | None = sum(_safetensors_parameters(p, s) for p, s in safe)
        weight_format = "safetensors"
    elif allow_pickle:
        parameters, weight_format = _estimate_parameters(config), "pickle"
    else:
        raise _Unusable(
            "only pickle weights (.bin/.pth), which can run code when loaded; "
            "convert to safetensors or pass --allow-pickle"
        )
    return config, parameters, weight_format, sum(size for _, size in files)


# ----------------------------------------------------------------------------- scan


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError as error:
        raise _Unusable(f"cannot be listed: {error.strerror}") from None


def _looks_like_model(entry: Path) -> bool:
    """A root-level dir is a candidate when it holds config.json or top-level weights."""
    if (entry / "config.json").exists():
        return True
    return any(p.suffix in SAFE_WEIGHT_SUFFIXES + PICKLE_WEIGHT_SUFFIXES for p in _listing(entry))


def _candidates(root: Path, report: DiscoveryReport) -> Iterator[tuple[Path, str]]:
    """Candidate dirs; entries that cannot even be classified go to the unusable list."""
    base_dir = root / BASE_MODELS_SUBDIR
    for location, directory in (("base_models", base_dir), ("root", root)):
        if location == "base_models" and not base_dir.is_dir():
            continue
        try:
            entries = _listing(directory)
        except _Unusable as error:
            if location == "root":
                raise InputError(f"MODELS_DIR {root} {error}") from None
            report.unusable.append(UnusableModel(str(BASE_MODELS_SUBDIR), directory, str(error)))
            continue
        for entry in entries:
            if entry.name.startswith(".") or (location == "root" and entry.name in EXCLUDED_DIRS):
                continue
            try:
                if entry.is_symlink():
                    _resolve(entry)  # a loop or a dangling link is reported, not skipped
                if not entry.is_dir():
                    continue
                if location == "root" and not _looks_like_model(entry):
                    continue
            except _Unusable as error:
                report.unusable.append(UnusableModel(entry.name, entry, str(error)))
                continue
            yield entry, location


def discover(models_dir: Path, *, allow_pickle: bool = False) -> DiscoveryReport:
    """Scan ``<models_dir>/oneseek-7b-zero/base_models/*`` and model dirs of ``<models_dir>``.

    Args:
        models_dir: the mounted models volume (MODELS_DIR).
        allow_pickle: accept checkpoints that only have pickle weights.

    Raises:
        InputError: ``models_dir`` does not exist, is not a directory or cannot be listed.
    """
    if not models_dir.is_dir():
        raise InputError(f"MODELS_DIR {models_dir} does not exist or is not a directory")
    root = models_dir.resolve()
    report = DiscoveryReport(models_dir=models_dir)
    by_target: dict[Path, str] = {}
    symlinks: list[tuple[Path, str]] = []
    log.info("scan", tag="scan", models_dir=str(models_dir))
    for entry, location in _candidates(models_dir, report):
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
            report.models[key] = replace(model, aliases=(*model.aliases, entry.name))
        else:
            _add(report, entry, location, root, by_target, allow_pickle=allow_pickle)
    for bad in report.unusable:
        log.warning(
            "unusable_model", tag="scan", name=bad.name, path=str(bad.path), reason=bad.reason
        )
    return report


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
        config, parameters, weight_format, size = _inspect(entry, root, allow_pickle=allow_pickle)
    except _Unusable as error:
        report.unusable.append(UnusableModel(entry.name, entry, str(error)))
        return
    except OSError as error:
        report.unusable.append(UnusableModel(entry.name, entry, f"cannot be read: {error}"))
        return
    except Exception as error:  # one odd directory must never stop the scan
        reason = f"cannot be inspected ({type(error).__name__}: {str(error)[:120]})"
        report.unusable.append(UnusableModel(entry.name, entry, reason))
        return
    architectures = config.get("architectures") or [""]
    model = ModelInfo(
        key=key,
        display_name=get_model_display_name(config, entry),
        path=entry,
        resolved_path=target,
        location=location,
        architecture=architectures[0],
        model_type=config["model_type"],
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


# ----------------------------------------------------------------------------- resolve


def _check_name(name: str) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return f"{name[:40]!r}… is longer than {MAX_NAME_LENGTH} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name!r} contains control characters"
    if _SHELL_CHARS.intersection(name):
        return (
            f"{name!r} contains shell or quoting characters "
            f"({''.join(sorted(_SHELL_CHARS.intersection(name)))}); model names never do"
        )
    if "/" in name or "\\" in name or ".." in name or name.startswith("~"):
        return f"{name!r} is a path, not a model name; models are only looked up inside MODELS_DIR"
    return None


def _tokens_in(run: list[str], tokens: list[str]) -> bool:
    width = len(run)
    return any(tokens[i : i + width] == run for i in range(len(tokens) - width + 1))


def _match(name: str, models: dict[str, ModelInfo]) -> tuple[list[str], str]:
    """Candidate keys for one name and the rule that found them (first tier with a hit)."""
    # Tier 1: the model named itself: its key, display name, directory name or an alias.
    named: dict[str, str] = {}
    for key, model in models.items():
        if name == model.display_name:
            named[key] = "display name"
        elif name == model.path.name:
            named[key] = "directory name"
        elif name in model.aliases:
            named[key] = "alias"
    if not _PRINTABLE_ASCII.match(name):
        # Normalization would drop these characters: only a verbatim name may carry them.
        return sorted(named), _rule(named)
    wanted = normalize_model_name(name)
    for key, model in models.items():
        if key == wanted:
            named[key] = "exact key"  # the plainest description of a hit on several rules
        elif any(normalize_model_name(o) == wanted for o in (model.display_name, *model.aliases)):
            named.setdefault(key, "display name")
    if named:
        return sorted(named), _rule(named)
    bare = remove_separators(name)
    no_sep = [k for k in models if remove_separators(k) == bare]
    if no_sep:
        return no_sep, "separator-free"
    # Partial: the request is a run of whole tokens of a key, never the other way round
    # (a request more specific than anything on the volume is a model we do not have).
    run = wanted.split("-")
    partial = sorted(k for k in models if _tokens_in(run, k.split("-")))
    if len(partial) == 1 and all(_SIZE_TOKEN.match(token) for token in run):
        return [], "token run"  # "7b" or "2" alone never picks a model
    return partial, "token run"


def _rule(named: dict[str, str]) -> str:
    return " / ".join(sorted(set(named.values())))


def _not_found(name: str, report: DiscoveryReport) -> str:
    wanted = normalize_model_name(name)
    if not _PRINTABLE_ASCII.match(name):
        odd = "".join(sorted({ch for ch in name if not _PRINTABLE_ASCII.match(ch)}))[:10]
        return (
            f"{name!r} has characters model keys cannot hold ({odd!r}) and matches no model's "
            f"display name exactly{_available(report)}"
        )
    # Keys the request contains: the admin asked for something more specific than these.
    broader = [k for k in report.models if _tokens_in(k.split("-"), wanted.split("-"))]
    close = broader or difflib.get_close_matches(wanted, list(report.models), n=3, cutoff=0.4)
    if close:
        return (
            f"{name!r} matches no model (closest: {', '.join(close[:3])} - did you mean "
            f"{' or '.join(close[:3])}? a partial name must be whole '-' tokens of one "
            "model's key, never more specific than it)"
        )
    return f"{name!r} matches no model ({_available(report).removeprefix('; ')})"


def resolve_base_models(requested: list[str], report: DiscoveryReport) -> list[Resolution]:
    """Resolve every requested name to exactly one usable model, in the order given.

    Order of rules (DESIGN.md "Resolution"): the name verbatim as a display name, directory
    name or alias; equal normalized keys (or normalized display names / aliases); equal
    separator-free forms; then a partial match, only where the name is a run of whole
    ``-`` tokens of exactly one key (and not only a size like ``7b``). A name with
    characters normalization would drop (non-ASCII, control) must match verbatim. Names
    resolving to the same model are trained once; every loose match is logged as a warning.

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
            _merge(merged, name, keys[0], how, report)
            continue
        if len(keys) > 1:
            problems.append(
                f"{name!r} is ambiguous ({how} match: {', '.join(keys)}); use the full name"
            )
            continue
        broken = [
            u
            for u in report.unusable
            if u.name == name or normalize_model_name(u.name) == normalize_model_name(name)
        ]
        if broken and normalize_model_name(name):
            unusable.append(
                f"{name!r} is {broken[0].path}, which cannot be used: {broken[0].reason}"
            )
            continue
        if not normalize_model_name(name):
            problems.append(f"{name!r} has no ASCII letters or digits{_available(report)}")
            continue
        problems.append(_not_found(name, report))
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
        event = log.info if resolution.exact else log.warning
        event(
            "resolved" if resolution.exact else "resolved_loosely",
            tag="config",
            requested=list(resolution.requested),
            key=resolution.key,
            how=resolution.how,
            loose=resolution.non_exact(),
        )
    return list(merged.values())


def _merge(
    merged: dict[str, Resolution], name: str, key: str, how: str, report: DiscoveryReport
) -> None:
    previous = merged.get(key)
    if previous is None:
        merged[key] = Resolution((name,), key, how, report.models[key], rules=(how,))
    else:
        merged[key] = replace(
            previous, requested=(*previous.requested, name), rules=(*previous.rules, how)
        )


def _available(report: DiscoveryReport) -> str:
    if not report.models:
        return f"; no usable models under {report.models_dir}"
    return f"; available: {', '.join(sorted(report.models))}"
