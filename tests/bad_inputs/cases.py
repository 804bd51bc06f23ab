"""The bad-input corpus: one row per thing an operator can get wrong, run through the real CLI.

Each case builds on a fresh, valid workspace (a hand-made model ``good-model``, a small
Swedish dataset, a local artifacts dir) and breaks exactly one thing. ``tests/
test_bad_inputs.py`` runs ``oneseek-job`` in a subprocess for every case and checks the exit
code (the Job's podFailurePolicy keys on it), that the last stderr line is one ``error:``
line naming the problem, and that no traceback is printed.

Most cases fail before any model is loaded (hand-made models have fake tokenizer files, so a
case that got as far as training would fail on the tokenizer, not on what it tests). Cases
that must get further use the demo's real tiny model (``needs={"real_model"}``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.modelfiles import write_model_dir
from tests.servers import free_port

__all__ = ["CASES", "DATA", "TRANSIENT_CASES", "Case", "S3Target", "Workspace"]

DATA = Path(__file__).parent / "data"
GOOD_MODEL = "good-model"
# Training settings for the cases that train at all: a couple of tiny steps.
TINY_TRAIN = {
    "ONESEEK_SEQ_LEN": "64",
    "ONESEEK_BATCH_TOKENS": "128",
    "ONESEEK_MAX_STEPS": "2",
    "ONESEEK_CHECKPOINT_EVERY": "1",
    "ONESEEK_ALLOW_REGRESSION": "true",
    "ONESEEK_LORA_R": "4",
}


@dataclass(frozen=True)
class S3Target:
    """The session's SeaweedFS server, as a case needs it."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str


@dataclass
class Workspace:
    """A valid job setup in ``root`` that a case then breaks in one place."""

    root: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=lambda: ["train"])
    wrap: list[str] = field(default_factory=list)  # command prefix (e.g. unshare)
    fsize_limit: int | None = None  # RLIMIT_FSIZE for the subprocess, in bytes
    real_model: Path | None = None  # the demo's tiny model (session-built), if the case needs it
    s3: S3Target | None = None
    keep: list[object] = field(default_factory=list)  # objects a case needs alive (sockets)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @classmethod
    def create(cls, root: Path) -> Workspace:
        models = root / "models"
        write_model_dir(models / GOOD_MODEL, model_name="Good-Model")
        data = root / "data"
        data.mkdir()
        shutil.copy(DATA / "good.jsonl", data / "good.jsonl")
        env = {
            "BASE_MODELS": GOOD_MODEL,
            "MODELS_DIR": str(models),
            "DATASET": str(data / "good.jsonl"),
            "ARTIFACTS_URI": str(root / "artifacts"),
            "ONESEEK_WORK_DIR": str(root / "work"),
            "RUN_ID": "run-bad-input",
        }
        return cls(root=root, env=env)

    def use_real_model(self, name: str = GOOD_MODEL) -> Path:
        """Replace ``models/<name>`` with a copy of the demo's real tiny model."""
        assert self.real_model is not None, "case must declare needs={'real_model'}"
        target = self.models / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.real_model, target)
        self.env.update(TINY_TRAIN)
        return target

    def use_s3(self, uri: str | None = None, **overrides: str) -> None:
        assert self.s3 is not None, "case must declare needs={'s3'}"
        self.env.update(
            {
                "ARTIFACTS_URI": uri or f"s3://{self.s3.bucket}/bad-inputs",
                "S3_ENDPOINT_URL": self.s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": self.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
                "AWS_REGION": "us-east-1",
            }
        )
        self.env.update(overrides)


@dataclass(frozen=True)
class Case:
    """One bad input: how to set it up, and what the CLI must answer."""

    id: str
    description: str
    setup: Callable[[Workspace], None]
    exit_code: int
    words: tuple[str, ...]  # all must appear (case-insensitive) in the one-line error
    needs: frozenset[str] = frozenset()  # "s3", "real_model"
    after: Callable[[Workspace], None] | None = None  # extra checks once the command ended


# ----------------------------------------------------------------------------- setups


def _env(**values: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        ws.env.update(values)

    return setup


def _unset(*names: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        for name in names:
            ws.env.pop(name, None)

    return setup


def _model(
    name: str, edit: Callable[[Path], None], **kwargs: object
) -> Callable[[Workspace], None]:
    """A model dir ``name`` (hand-made, valid), then ``edit`` breaks it; BASE_MODELS names it."""

    def setup(ws: Workspace) -> None:
        directory = write_model_dir(ws.models / name, **kwargs)  # type: ignore[arg-type]
        edit(directory)
        ws.env["BASE_MODELS"] = name

    return setup


def _dataset(name: str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        target = ws.root / "data" / name
        shutil.copy(DATA / name, target)
        ws.env["DATASET"] = str(target)

    return setup


def _huge_record(ws: Workspace) -> None:
    target = ws.root / "data" / "huge.jsonl"
    good = (DATA / "good.jsonl").read_text(encoding="utf-8")
    huge = json.dumps({"instruction": "Lång fråga?", "output": "ja " * 400_000}, ensure_ascii=False)
    target.write_text(good + huge + "\n", encoding="utf-8")
    ws.env["DATASET"] = str(target)


def _symlink_out(ws: Workspace) -> None:
    outside = write_model_dir(ws.root / "outside" / "evil-model")
    (ws.models / "evil-model").symlink_to(outside, target_is_directory=True)
    ws.env["BASE_MODELS"] = "evil-model"


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).write_bytes(content)

    return edit


def _remove(name: str) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).unlink()

    return edit


def _truncate_weights(directory: Path) -> None:
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])


def _corrupt_weights(directory: Path) -> None:
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"\xff\xfe garbage \x00\x01\x02"  # inside the JSON header
    weights.write_bytes(bytes(data))


def _read_only_artifacts(ws: Workspace) -> None:
    artifacts = ws.root / "artifacts"
    artifacts.mkdir()
    if os.geteuid() != 0:
        artifacts.chmod(0o555)
        return
    # root ignores mode bits: make it a read-only bind mount in a private user+mount namespace
    # (needs util-linux `unshare` and unprivileged user namespaces, as CI runners have).
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    ws.wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]
    ws.wrap.append(str(artifacts))


def _full_checkpoint_disk(ws: Workspace) -> None:
    ws.use_real_model()
    # The first checkpoint's adapter.safetensors is ~40 KB at r=4; nothing written before
    # it (logs go to pipes) comes close, so the first file over the limit is the checkpoint.
    ws.fsize_limit = 16 * 1024


def _pickle_real_model(ws: Workspace) -> None:
    import torch
    from safetensors.torch import load_file

    model = ws.use_real_model()
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    ws.args = ["train", "--allow-pickle"]


def _endpoint_down(ws: Workspace) -> None:
    ws.use_s3(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")


def _bad_credentials(ws: Workspace) -> None:
    ws.use_s3(AWS_SECRET_ACCESS_KEY="definitely-not-the-secret-0000")


def _missing_bucket(ws: Workspace) -> None:
    ws.use_s3("s3://oneseek-no-such-bucket/prefix")


def _black_hole(ws: Workspace) -> None:
    """S3_ENDPOINT_URL accepts TCP connections and never answers (a listening socket that
    is never accepted from: the kernel completes the handshake, nobody reads)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    ws.keep.append(listener)
    ws.use_s3(S3_ENDPOINT_URL=f"http://127.0.0.1:{listener.getsockname()[1]}")


def _no_marker_file(ws: Workspace) -> None:
    assert not (ws.root / "pwned").exists(), "a shell metacharacter in BASE_MODELS ran a command"


_TEN_THOUSAND = ",".join(f"model-{i}" for i in range(10_000))

# ----------------------------------------------------------------------------- the corpus

CASES: list[Case] = [
    # BASE_MODELS
    Case(
        "base-models-empty",
        "BASE_MODELS set but empty",
        _env(BASE_MODELS=""),
        2,
        ("BASE_MODELS", "empty"),
    ),
    Case(
        "base-models-unset",
        "BASE_MODELS not set at all",
        _unset("BASE_MODELS"),
        2,
        ("BASE_MODELS", "empty"),
    ),
    Case(
        "base-models-whitespace",
        "only blanks and commas",
        _env(BASE_MODELS="  ,\t, ,"),
        2,
        ("BASE_MODELS", "empty"),
    ),
    Case(
        "base-models-10000-names",
        "a broken ConfigMap with 10,000 names",
        _env(BASE_MODELS=_TEN_THOUSAND),
        2,
        ("BASE_MODELS", "10000 names", "at most"),
    ),
    Case(
        "base-models-unicode",
        "non-ASCII name with nothing to match",
        _env(BASE_MODELS="模型-ÅÄÖ"),
        3,
        ("BASE_MODELS", "no ASCII letters"),
    ),
    Case(
        "base-models-unicode-unknown",
        "unicode name that normalizes but matches nothing",
        _env(BASE_MODELS="Svensk-Modell-åäö-7B"),
        3,
        ("matches no model", GOOD_MODEL),
    ),
    Case(
        "base-models-shell-metacharacters",
        "command substitution in a model name",
        _env(BASE_MODELS=f"{GOOD_MODEL}$(touch pwned);echo"),
        3,
        ("BASE_MODELS", "shell"),
        after=_no_marker_file,
    ),
    Case(
        "base-models-dotdot",
        "a relative path escaping MODELS_DIR",
        _env(BASE_MODELS="../../etc"),
        3,
        ("is a path", "MODELS_DIR"),
    ),
    Case(
        "base-models-absolute",
        "an absolute path",
        _env(BASE_MODELS="/etc/passwd"),
        3,
        ("is a path",),
    ),
    Case(
        "base-models-ambiguous-unknown",
        "one good name and one unknown name",
        _env(BASE_MODELS=f"{GOOD_MODEL},llama-9000"),
        3,
        ("llama-9000", "matches no model"),
    ),
    # model directories
    Case(
        "model-symlink-outside",
        "model dir is a symlink out of MODELS_DIR",
        _symlink_out,
        2,
        ("evil-model", "outside MODELS_DIR"),
    ),
    Case(
        "models-dir-missing",
        "MODELS_DIR does not exist",
        _env(MODELS_DIR="/nonexistent/m"),
        2,
        ("MODELS_DIR", "does not exist"),
    ),
    Case(
        "config-missing",
        "weights but no config.json",
        _model("no-config", _remove("config.json")),
        2,
        ("no-config", "no config.json"),
    ),
    Case(
        "config-empty",
        "config.json is empty",
        _model("empty-config", _write("config.json", b"")),
        2,
        ("config.json", "empty"),
    ),
    Case(
        "config-not-json",
        "config.json is not JSON",
        _model("bad-config", _write("config.json", b"{'model_type': llama,")),
        2,
        ("config.json", "not valid JSON"),
    ),
    Case(
        "config-wrong-architecture",
        "an encoder, not a causal LM",
        _model(
            "bert-model",
            lambda d: None,
            config={"architectures": ["BertForMaskedLM"], "model_type": "bert"},
        ),
        2,
        ("BertForMaskedLM", "not a causal language model"),
    ),
    Case(
        "config-invalid-values",
        "config.json parses but is inconsistent (hidden % heads)",
        _model("odd-model", lambda d: None, config={"num_attention_heads": 3}),
        2,
        ("config.json", "not a valid model config", "odd-model"),
    ),
    Case(
        "config-remote-code",
        "config asks for trust_remote_code (auto_map)",
        _model(
            "remote-model",
            lambda d: None,
            config={"auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}},
        ),
        2,
        ("remote code", "trust_remote_code"),
    ),
    Case(
        "tokenizer-missing",
        "no tokenizer files",
        _model("no-tok", lambda d: None, tokenizer=False),
        2,
        ("no-tok", "no tokenizer"),
    ),
    Case(
        "safetensors-truncated",
        "weights file cut short",
        _model("cut-model", _truncate_weights),
        2,
        ("model.safetensors", "truncated"),
    ),
    Case(
        "safetensors-corrupt",
        "weights header overwritten",
        _model("rot-model", _corrupt_weights),
        2,
        ("model.safetensors", "corrupt"),
    ),
    Case(
        "pickle-only-refused",
        "only pytorch_model.bin, no --allow-pickle",
        _model("pickled", lambda d: None, weights="bin"),
        2,
        ("pickle", "--allow-pickle"),
    ),
    # LEAD PATCH NEEDED (run.py must pass settings.allow_pickle to train_model): until then
    # discovery accepts the model and training refuses the .bin with exit 2.
    Case(
        "pickle-allowed-trains",
        "a real model as .bin with --allow-pickle trains and certifies",
        _pickle_real_model,
        0,
        ("certified",),
        needs=frozenset({"real_model"}),
    ),
    # datasets
    Case("dataset-unset", "DATASET not set", _unset("DATASET"), 2, ("DATASET", "not set")),
    Case(
        "dataset-missing",
        "DATASET points nowhere",
        _env(DATASET="/nonexistent/qa.jsonl"),
        2,
        ("DATASET", "does not exist"),
    ),
    Case("dataset-empty", "an empty file", _dataset("empty.jsonl"), 2, ("no usable records",)),
    Case(
        "dataset-dir-without-jsonl",
        "a directory with no *.jsonl",
        lambda ws: ws.env.update(DATASET=str(ws.models)),
        2,
        ("without *.jsonl",),
    ),
    Case(
        "dataset-not-jsonl",
        "a CSV file",
        _dataset("not_jsonl.csv"),
        2,
        ("bad dataset record", "not_jsonl.csv:1", "not JSON", "--skip-bad-records"),
    ),
    Case(
        "dataset-missing-fields",
        "records without an answer",
        _dataset("missing_fields.jsonl"),
        2,
        ("2 bad dataset record", "missing_fields.jsonl:2", "missing_fields.jsonl:3"),
    ),
    Case(
        "dataset-huge-record", "one 1.2 MB record", _huge_record, 2, ("huge.jsonl:6", "larger than")
    ),
    Case(
        "dataset-wrong-encoding",
        "Latin-1 instead of UTF-8",
        _dataset("latin1.jsonl"),
        2,
        ("latin1.jsonl:1", "UTF-8"),
    ),
    # settings
    Case("run-id-path", "RUN_ID that is a path", _env(RUN_ID="../../etc"), 2, ("RUN_ID",)),
    Case("lora-rank-zero", "ONESEEK_LORA_R=0", _env(ONESEEK_LORA_R="0"), 2, ("ONESEEK_LORA_R",)),
    Case(
        "completion-index-too-high",
        "Indexed Job with more completions than models",
        _env(JOB_COMPLETION_INDEX="3"),
        2,
        ("JOB_COMPLETION_INDEX=3", "completions"),
    ),
    # artifacts
    Case(
        "artifacts-uri-bad-bucket",
        "s3 URI with an invalid bucket name",
        _env(ARTIFACTS_URI="s3://Bad_Bucket!/x"),
        2,
        ("ARTIFACTS_URI", "bucket name"),
    ),
    Case(
        "artifacts-uri-no-bucket",
        "s3:// without a bucket",
        _env(ARTIFACTS_URI="s3:///prefix"),
        2,
        ("ARTIFACTS_URI", "no bucket"),
    ),
    Case(
        "artifacts-uri-scheme",
        "an unsupported scheme",
        _env(ARTIFACTS_URI="ftp://host/x"),
        2,
        ("ARTIFACTS_URI", "unsupported scheme"),
    ),
    Case(
        "s3-endpoint-unresolvable",
        "S3_ENDPOINT_URL host does not resolve",
        lambda ws: ws.use_s3(S3_ENDPOINT_URL="http://no-such-host.invalid:8333"),
        2,
        ("S3_ENDPOINT_URL", "does not resolve"),
        needs=frozenset({"s3"}),
    ),
    Case(
        "s3-bad-credentials",
        "wrong secret key",
        _bad_credentials,
        2,
        ("rejected the credentials", "AWS_SECRET_ACCESS_KEY"),
        needs=frozenset({"s3"}),
    ),
    Case(
        "s3-missing-bucket",
        "bucket does not exist",
        _missing_bucket,
        2,
        ("oneseek-no-such-bucket", "does not exist", "--create-bucket"),
        needs=frozenset({"s3"}),
    ),
    # LEAD PATCH NEEDED (run.py must call storage.check_writable(store) before training):
    # until then a read-only artifacts dir is only noticed at upload time.
    Case(
        "artifacts-read-only",
        "ARTIFACTS_URI is a read-only directory",
        _read_only_artifacts,
        2,
        ("ARTIFACTS_URI", "not writable"),
    ),
    Case(
        "checkpoint-disk-full",
        "the checkpoint volume fills up (RLIMIT_FSIZE)",
        _full_checkpoint_disk,
        2,
        ("cannot write checkpoint", "CHECKPOINT_DIR"),
        needs=frozenset({"real_model"}),
    ),
]


# Conditions a retry can fix: exit 1 (the Job retries within backoffLimit). Kept apart from
# CASES, which must never exit 1 (tests/test_bad_inputs.py checks both).
TRANSIENT_CASES: list[Case] = [
    Case(
        "s3-endpoint-down",
        "nothing listens at S3_ENDPOINT_URL",
        _endpoint_down,
        1,
        ("cannot reach the S3 endpoint", "resumable"),
        needs=frozenset({"s3"}),
    ),
    Case(
        "s3-endpoint-silent",
        "S3_ENDPOINT_URL accepts TCP and never answers: fails within the pre-flight budget",
        _black_hole,
        1,
        ("did not answer within 30 s", "S3_ENDPOINT_URL"),
        needs=frozenset({"s3"}),
    ),
]

from tests.bad_inputs.more_cases import MORE_CASES  # noqa: E402 - builds on the helpers above

CASES.extend(MORE_CASES)
