"""Discovery and resolution over a models volume with 1,000 model folders (goal: < 1 s).

Every folder is what a PVC holds: ``config.json``, a small but valid safetensors file (the
header is parsed for the parameter count) and ``tokenizer.json``. Most sit under
``oneseek-7b-zero/base_models/``, the rest at the volume root, plus a few unusable ones
(no config, corrupt config) that must be reported, not dropped.

Run: ``python -m bench.discovery [--models 1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Goal, format_table, median_seconds, write_results

__all__ = ["build_models_dir", "main", "run"]

GOAL_SECONDS = 1.0
_FAMILIES = ("Llama", "Mistral", "Qwen", "Gemma", "Phi", "KB-Llama", "Falcon", "OLMo")
_SIZES = ("1B", "3B", "7B", "8B", "13B")


def _write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)


def _name(index: int) -> str:
    family = _FAMILIES[index % len(_FAMILIES)]
    size = _SIZES[(index // len(_FAMILIES)) % len(_SIZES)]
    return f"{family}-{index // 40}.{index % 7}-{size}-Swedish-v{index}"


def build_models_dir(root: Path, models: int, *, root_share: float = 0.3) -> list[str]:
    """Write ``models`` model folders (plus two unusable ones) under ``root``.

    Args:
        root: the MODELS_DIR to create.
        models: number of usable model folders.
        root_share: fraction placed at the volume root instead of ``base_models/``.

    Returns:
        The folder names of the usable models, in creation order.
    """
    base = root / "oneseek-7b-zero" / "base_models"
    base.mkdir(parents=True, exist_ok=True)
    at_root = int(models * root_share)
    names: list[str] = []
    for index in range(models):
        name = _name(index)
        folder = (root if index < at_root else base) / name
        folder.mkdir()
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "vocab_size": 32,
            "_name_or_path": f"org/{name}",
        }
        (folder / "config.json").write_text(json.dumps(config))
        _write_safetensors(folder / "model.safetensors", {"embed": [32, 16], "head": [32, 16]})
        (folder / "tokenizer.json").write_text('{"version": "1.0"}')
        names.append(name)
    (base / "no-config-model").mkdir()
    (base / "no-config-model" / "model.safetensors").write_bytes(b"\0" * 8)
    (base / "corrupt-config-model").mkdir()
    (base / "corrupt-config-model" / "config.json").write_text("{not json")
    return names


def _requests(names: list[str]) -> list[str]:
    """Names as an admin types them: exact, other casing/separators, a unique substring."""
    picks = [names[0], names[len(names) // 2], names[-1]]
    return [
        picks[0],  # exact folder name
        picks[1].upper().replace("-", "_"),  # separators and case differ
        picks[2].replace("-", "").replace(".", ""),  # separator-free
        f"v{len(names) - 2}",  # unique substring: only the next-to-last ends in it
    ]


def run(*, models: int = 1000, repeats: int = 5, cli: bool = True) -> dict[str, Any]:
    """Build the volume, time ``discover`` + ``resolve_base_models``; return the results.

    Args:
        models: number of model folders.
        repeats: timed repetitions (the median is reported).
        cli: also time one ``oneseek-job discover --json`` in a fresh interpreter.
    """
    from oneseek_job.discovery import discover, resolve_base_models
    from oneseek_job.logs import configure_logging

    # Production logs every "found" event as a JSON line: render them all, as it would, but
    # into /dev/null so a terminal's speed does not enter the timing.
    with (
        tempfile.TemporaryDirectory(prefix="oneseek-bench-models-") as tmp,
        Path(os.devnull).open("w") as sink,
    ):
        configure_logging(json=True, level="INFO", stream=sink)
        try:
            root = Path(tmp) / "models"
            started = time.perf_counter()
            names = build_models_dir(root, models)
            build_seconds = time.perf_counter() - started
            requests = _requests(names)

            def discover_only() -> object:
                return discover(root)

            def discover_and_resolve() -> object:
                return resolve_base_models(requests, discover(root))

            # Warm the page cache first, as a second Job on the same node would find it.
            report = discover(root)
            resolved = resolve_base_models(requests, report)
            discover_s, discover_samples = median_seconds(discover_only, repeats)
            total_s, total_samples = median_seconds(discover_and_resolve, repeats)
            report_counts = {"usable": len(report.models), "unusable": len(report.unusable)}
            cli_seconds = _time_cli(root, requests) if cli else None
        finally:
            configure_logging(level="WARNING", stream=sys.stderr)
    result: dict[str, Any] = {
        "models": models,
        "repeats": repeats,
        "build_seconds": build_seconds,
        "found": report_counts,
        "requests": {r.requested[0]: r.key for r in resolved},
        "discover_seconds_median": discover_s,
        "discover_seconds": discover_samples,
        "discover_and_resolve_seconds_median": total_s,
        "discover_and_resolve_seconds": total_samples,
        "cli_discover_json_seconds": cli_seconds,
        "goal_seconds": GOAL_SECONDS,
        "goals": [
            Goal(
                "discovery",
                f"discover+resolve, {models} models (s)",
                total_s,
                GOAL_SECONDS,
                higher_is_better=False,
                unit="s",
            )
        ],
    }
    return result


def _cli_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "oneseek-job"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "oneseek_job.cli"]


def _time_cli(root: Path, requests: list[str]) -> float:
    command = [
        *_cli_command(),
        "discover",
        "--models-dir",
        str(root),
        "--base-models",
        ",".join(requests),
        "--json",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"oneseek-job discover failed ({done.returncode}): {done.stderr[-300:]}")
    return elapsed


def print_result(result: dict[str, Any]) -> None:
    """The human-readable summary of :func:`run`'s result."""
    rows = [
        ["discover()", result["discover_seconds_median"]],
        ["discover() + resolve_base_models()", result["discover_and_resolve_seconds_median"]],
    ]
    if result.get("cli_discover_json_seconds") is not None:
        rows.append(
            ["oneseek-job discover --json (fresh process)", result["cli_discover_json_seconds"]]
        )
    print(f"discovery over {result['models']} model folders ({result['found']})")
    print(format_table(["what", "seconds (median)"], rows))
    print(f"goal: < {result['goal_seconds']} s for discover + resolve")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: run, print, write ``bench/results/discovery.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh-process CLI run")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(models=args.models, repeats=args.repeats, cli=not args.no_cli)
    print_result(result)
    path = write_results("discovery", result, results_dir=args.results_dir)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
