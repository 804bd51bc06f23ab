"""Property tests (Hypothesis): whatever a dataset record, a config.json or a safetensors
header holds, ``oneseek-job train`` ends with exit 2 or 3 and exactly one ``error:`` line,
never a traceback and never the retry code 1.

The command runs in-process through ``cli.main`` (the console entry point itself, with its
exception mapping), so an example costs milliseconds instead of a process start. The model
is hand-made (real config and safetensors formats, a stand-in tokenizer), so every input
that survives discovery and the dataset check still stops at the tokenizer, before any
training: the properties are about the shape of the failure.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oneseek_job import cli
from oneseek_job.data import load_records
from oneseek_job.errors import InputError
from tests.modelfiles import write_model_dir

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("ONESEEK_HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the first example imports transformers
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # CI reproducible; run with a seed locally to explore further
)


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_main(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``oneseek-job <args>`` in-process: (exit code, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1"}
    with (
        _environ({**base, "ONESEEK_LOG_FORMAT": "json", "ONESEEK_LOG_LEVEL": "ERROR", **env}),
        redirect_stderr(err),
        redirect_stdout(out),
        mock.patch.object(sys, "argv", ["oneseek-job", *args]),
    ):
        try:
            cli.main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return code, err.getvalue()


def assert_one_clean_error(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-2000:]
    assert code in (2, 3), f"exit {code}: {stderr[-2000:]}"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert stderr.rstrip().splitlines()[-1].startswith("error: ")
    assert "unexpected" not in errors[0], errors[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("properties")
    models = root / "models"
    write_model_dir(models / "good-model", model_name="Good-Model")
    data = root / "data.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": f"Fråga {i}?", "output": "Svar."}) for i in range(4))
        + "\n",
        encoding="utf-8",
    )
    env = {
        "BASE_MODELS": "good-model",
        "MODELS_DIR": str(models),
        "DATASET": str(data),
        "ARTIFACTS_URI": str(root / "artifacts"),
        "ONESEEK_WORK_DIR": str(root / "work"),
        "RUN_ID": "run-properties",
    }
    return {"root": root, "models": models, "env": env}


# ----------------------------------------------------------------------------- strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["instruction", "question", "input", "output", "response", "messages", "text", "role"]
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | json_values,
        "content": st.text(max_size=30) | json_values,
    },
)
records = (
    st.dictionaries(_keys, st.text(max_size=30) | json_values, max_size=4)
    | st.fixed_dictionaries({"messages": st.lists(_message, max_size=4) | json_values})
    | json_values
)


def _line(value: Any) -> bytes:
    # allow_nan: NaN/Infinity are what a careless exporter writes; surrogates survive as escapes.
    return json.dumps(value, allow_nan=True).encode()


raw_lines = (
    records.map(_line)
    | st.binary(max_size=60)
    | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(min_value=4301, max_value=6000).map(lambda n: b'{"text": 1' + b"0" * n + b"}")
)


# ----------------------------------------------------------------------------- datasets


@PROPERTY
@given(lines=st.lists(raw_lines, min_size=1, max_size=4))
def test_dataset_lines_load_or_fail_as_bad_input(
    lines: list[bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("ds") / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        loaded = load_records(path)
    except InputError as error:
        assert "\n" not in str(error)
        return
    assert len(loaded) >= 2
    for record in loaded:  # everything kept can be encoded for the tokenizer
        (record.prompt + record.answer).encode("utf-8")


@PROPERTY
@given(lines=st.lists(raw_lines, min_size=1, max_size=3))
def test_any_dataset_through_the_cli(
    lines: list[bytes], workspace: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("cli-ds") / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert_one_clean_error(*run_main(["train"], {**workspace["env"], "DATASET": str(path)}))


# ----------------------------------------------------------------------------- config.json

_config_fields = st.fixed_dictionaries(
    {},
    optional={
        "architectures": st.just(["LlamaForCausalLM"]) | json_values,
        "model_type": st.just("llama") | json_values,
        "hidden_size": st.integers(min_value=-5, max_value=10**13) | json_values,
        "num_hidden_layers": st.integers(min_value=-5, max_value=5000) | json_values,
        "num_attention_heads": st.integers(min_value=-5, max_value=5000) | json_values,
        "vocab_size": st.integers(min_value=-5, max_value=10**13) | json_values,
        "model_name": st.text(max_size=30) | json_values,
        "_name_or_path": st.text(max_size=30) | json_values,
        "auto_map": json_values,
    },
)
configs = (
    _config_fields.map(lambda c: json.dumps(c, allow_nan=True).encode())
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | st.binary(max_size=80)
)


@PROPERTY
@given(config=configs)
def test_any_config_json_through_the_cli(
    config: bytes, workspace: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    models = tmp_path_factory.mktemp("cfg-models")
    model = write_model_dir(models / "odd-model")
    (model / "config.json").write_bytes(config)
    env = {**workspace["env"], "MODELS_DIR": str(models), "BASE_MODELS": "odd-model"}
    assert_one_clean_error(*run_main(["train"], env))


# ----------------------------------------------------------------------------- safetensors

_entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "F4", "X9"]) | json_values,
        "shape": st.lists(st.integers(min_value=-2, max_value=2**50), max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3)
        | json_values,
    },
)
headers = st.dictionaries(
    st.text(max_size=10), _entries | json_values, max_size=3
) | json_values.map(lambda v: v)


@PROPERTY
@given(
    header=headers,
    declared=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    tail=st.binary(max_size=64),
)
def test_any_safetensors_header_through_the_cli(
    header: Any,
    declared: int | None,
    tail: bytes,
    workspace: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    models = tmp_path_factory.mktemp("st-models")
    model = write_model_dir(models / "odd-weights")
    encoded = json.dumps(header, allow_nan=True).encode()
    length = len(encoded) if declared is None else declared
    (model / "model.safetensors").write_bytes(struct.pack("<Q", length) + encoded + tail)
    env = {**workspace["env"], "MODELS_DIR": str(models), "BASE_MODELS": "odd-weights"}
    assert_one_clean_error(*run_main(["train"], env))


def test_run_main_sees_what_the_console_script_sees(workspace: dict[str, Any]) -> None:
    """The in-process harness is the real entry point: a known bad input, its known line."""
    code, stderr = run_main(["train"], {**workspace["env"], "ONESEEK_LORA_ALPHA": "inf"})
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: ONESEEK_LORA_ALPHA:")


def test_hypothesis_is_a_declared_dev_dependency() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"hypothesis>=' in pyproject
