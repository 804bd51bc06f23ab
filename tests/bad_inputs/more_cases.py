"""Round two of the bad-input corpus (issue 13): the inputs an attacker or a careless admin
tried that broke the contract, plus their neighbours.

Same rules as ``cases.py``: each case breaks one thing of a valid workspace and states the
exit code and the words of the one ``error:`` line. Exit-0 cases (``discover`` with a broken
sibling directory) state words that must appear in the output instead.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.bad_inputs.cases import GOOD_MODEL, Case, Workspace, _env, _model, _write
from tests.modelfiles import write_model_dir, write_safetensors

__all__ = ["MORE_CASES"]

Setup = Callable[[Workspace], None]


# ----------------------------------------------------------------------------- helpers


def _names(value: str) -> Setup:
    return _env(BASE_MODELS=value)


def _with_models(*names: str, request: str) -> Setup:
    def setup(ws: Workspace) -> None:
        for name in names:
            write_model_dir(ws.models / name)
        ws.env["BASE_MODELS"] = request

    return setup


def _config(**fields: object) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        config.update(fields)
        (directory / "config.json").write_text(json.dumps(config))

    return edit


def _raw_config(text: str) -> Callable[[Path], None]:
    return _write("config.json", text.encode())


def _shape_text(old: bytes, new: bytes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes().replace(old, new, 1))

    return edit


def _fifo(name: str) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).unlink(missing_ok=True)
        os.mkfifo(directory / name)

    return edit


def _link_outside(name: str) -> Setup:
    def setup(ws: Workspace) -> None:
        outside = write_model_dir(ws.root / "outside" / "other")
        directory = write_model_dir(ws.models / "linked-model")
        (directory / name).unlink()
        (directory / name).symlink_to(outside / name)
        ws.env["BASE_MODELS"] = "linked-model"

    return setup


def _loop(ws: Workspace) -> None:
    (ws.models / "loop-model").symlink_to("loop-model")
    ws.env["BASE_MODELS"] = "loop-model"


def _unsafe_pickle(directory: Path) -> None:
    """A torch-style zip checkpoint whose pickle calls os.system: the safe loader refuses."""

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch pwned",))

    with zipfile.ZipFile(directory / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
        archive.writestr("archive/version", "3\n")


def _long_dir(ws: Workspace) -> None:
    write_model_dir(ws.models / ("m" * 250), model_name="Long-Named-Model")
    ws.env["BASE_MODELS"] = "Long-Named-Model"


def _sibling(name: str, edit: Callable[[Path], None], *words: str, **kwargs: object) -> Case:
    """An unrelated broken model dir next to the good one: ``discover`` lists it, exit 0."""

    def setup(ws: Workspace) -> None:
        directory = write_model_dir(ws.models / name, **kwargs)  # type: ignore[arg-type]
        edit(directory)
        ws.args = ["discover"]

    return Case(
        f"sibling-{name}",
        f"an unrelated broken directory ({name}) never blocks the requested model",
        setup,
        0,
        (GOOD_MODEL, name, *words),
    )


def _sibling_link(kind: str) -> Case:
    def setup(ws: Workspace) -> None:
        target = "loop-dir" if kind == "loop" else str(ws.root / "nowhere")
        (ws.models / f"{kind}-dir").symlink_to(target)
        ws.args = ["discover"]

    words = "symlink loop" if kind == "loop" else "dangling symlink"
    return Case(
        f"sibling-{kind}-symlink",
        f"a {words} under MODELS_DIR is listed unusable, not dropped",
        setup,
        0,
        (GOOD_MODEL, f"{kind}-dir", words),
    )


def _broken_siblings_then_train(ws: Workspace) -> None:
    ws.use_real_model()
    write_model_dir(ws.models / "arch-string", config={"architectures": "LlamaForCausalLM"})
    write_model_dir(ws.models / "huge-vocab", config={"vocab_size": 10**12})
    deep = write_model_dir(ws.models / "deep-config")
    (deep / "config.json").write_text("[" * 50_000 + "]" * 50_000)
    (ws.models / "loop-dir").symlink_to("loop-dir")
    shapes = write_model_dir(ws.models / "bad-shapes")
    write_safetensors(shapes / "model.safetensors", {"w": [2, 2]})
    raw = (shapes / "model.safetensors").read_bytes().replace(b"[2, 2]", b'["2",2]')
    (shapes / "model.safetensors").write_bytes(raw)


def _lines(name: str, *lines: str) -> Setup:
    def setup(ws: Workspace) -> None:
        target = ws.root / "data" / name
        good = (ws.root / "data" / "good.jsonl").read_text(encoding="utf-8")
        target.write_text(good + "\n".join(lines) + "\n", encoding="utf-8")
        ws.env["DATASET"] = str(target)

    return setup


def _msgs(*turns: tuple[str, str]) -> str:
    """A chat record; a content of ``"\\udfff"`` stays a JSON escape (a lone surrogate)."""
    body = ", ".join(f'{{"role": "{role}", "content": "{content}"}}' for role, content in turns)
    return f'{{"messages": [{body}]}}'


def _only(name: str, content: bytes) -> Setup:
    def setup(ws: Workspace) -> None:
        target = ws.root / "data" / name
        target.write_bytes(content)
        ws.env["DATASET"] = str(target)

    return setup


def _dataset_fifo(ws: Workspace) -> None:
    target = ws.root / "data" / "pipe.jsonl"
    os.mkfifo(target)
    ws.env["DATASET"] = str(target)


def _template(template: str) -> Setup:
    def setup(ws: Workspace) -> None:
        model = ws.use_real_model()
        (model / "chat_template.jinja").write_text(template, encoding="utf-8")
        chat = {
            "messages": [
                {"role": "user", "content": "Vad gör Riksdagen?"},
                {"role": "assistant", "content": "Stiftar lagar."},
            ]
        }
        target = ws.root / "data" / "chat.jsonl"
        target.write_text((json.dumps(chat, ensure_ascii=False) + "\n") * 3, encoding="utf-8")
        ws.env["DATASET"] = str(target)

    return setup


def _path_env(name: str, relative: str) -> Setup:
    def setup(ws: Workspace) -> None:
        ws.env[name] = str(ws.root / relative)

    return setup


def _file_at(relative: str, name: str, value: str | None = None) -> Setup:
    def setup(ws: Workspace) -> None:
        (ws.root / relative).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / relative).write_text("not a directory")
        ws.env[name] = str(ws.root / (value or relative))

    return setup


def _key(kind: str) -> Setup:
    def setup(ws: Workspace) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        path = ws.root / "keys" / "signing.pem"
        path.parent.mkdir()
        ws.env["ONESEEK_SIGNING_KEY_FILE"] = str(path)
        if kind == "missing":
            return
        if kind == "fifo":
            os.mkfifo(path, 0o600)
            return
        if kind == "directory":
            path.mkdir()
            return
        if kind == "garbage":
            path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        elif kind == "public":
            public = ed25519.Ed25519PrivateKey.generate().public_key()
            path.write_bytes(
                public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        else:
            key = {
                "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
                "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
                "world": ed25519.Ed25519PrivateKey.generate,
                "group-writable": ed25519.Ed25519PrivateKey.generate,
            }[kind]()
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        path.chmod({"world": 0o644, "group-writable": 0o660}.get(kind, 0o400))

    return setup


def _s3_env(**values: str) -> Setup:
    def setup(ws: Workspace) -> None:
        ws.use_s3(**values)

    return setup


def _copy_good_model_as(name: str) -> Setup:
    def setup(ws: Workspace) -> None:
        shutil.copytree(ws.models / GOOD_MODEL, ws.models / name)
        ws.args = ["discover"]

    return setup


S3 = frozenset({"s3"})
REAL = frozenset({"real_model"})

# ----------------------------------------------------------------------------- the corpus

MORE_CASES: list[Case] = [
    # ---- resolution: never a model the admin did not name (exit 3)
    Case(
        "base-models-more-specific",
        "Qwen-2.5-7B-Instruct when only the base qwen-2-5-7b is on the volume",
        _with_models("qwen-2-5-7b", request="Qwen-2.5-7B-Instruct"),
        3,
        ("Qwen-2.5-7B-Instruct", "did you mean qwen-2-5-7b"),
    ),
    Case(
        "base-models-more-specific-version",
        "good-model-v2 when only good-model exists",
        _names("good-model-v2"),
        3,
        ("good-model-v2", "did you mean good-model"),
    ),
    Case(
        "base-models-single-letter",
        "q alone",
        _with_models("qwen-2-5-7b", request="q"),
        3,
        ("'q' matches no model",),
    ),
    Case(
        "base-models-prefix-letters",
        "a prefix that is not a whole token",
        _names("goo"),
        3,
        ("'goo' matches no model",),
    ),
    Case(
        "base-models-size-only",
        "a size alone never picks a model",
        _with_models("qwen-2-5-7b", request="7b"),
        3,
        ("'7b' matches no model",),
    ),
    Case(
        "base-models-ambiguous-token",
        "a token shared by two models",
        _with_models("good-model-v2", request="good"),
        3,
        ("ambiguous", "good-model", "good-model-v2"),
    ),
    Case(
        "base-models-cyrillic-letter",
        "a Cyrillic а at the end that normalization would drop",
        _with_models("qwen-2-5-7b", request="Qwen-2.5-7B\u0430"),
        3,
        ("cannot hold", "display name exactly"),
    ),
    Case(
        "base-models-zero-width",
        "a zero-width space inside",
        _names("good\u200bmodel"),
        3,
        ("cannot hold",),
    ),
    Case(
        "base-models-nbsp",
        "a no-break space as separator",
        _names("good\u00a0model"),
        3,
        ("cannot hold",),
    ),
    Case(
        "base-models-fullwidth",
        "full-width letters",
        _names("\uff47\uff4f\uff4f\uff44-model"),
        3,
        ("cannot hold",),
    ),
    Case(
        "base-models-rtl-override",
        "a right-to-left override",
        _names("good-model\u202e"),
        3,
        ("cannot hold",),
    ),
    Case(
        "base-models-escape-sequence",
        "a terminal escape sequence",
        _names("good-model\x1b[31m"),
        3,
        ("control characters",),
    ),
    Case(
        "base-models-tab",
        "a tab inside the name",
        _names("good\tmodel"),
        3,
        ("control characters",),
    ),
    Case(
        "base-models-too-long", "a 300-character name", _names("a" * 300), 3, ("longer than 200",)
    ),
    Case("base-models-tilde", "a home-directory path", _names("~good-model"), 3, ("is a path",)),
    Case(
        "base-models-quote", "a quote in the name", _names("good-model'"), 3, ("shell or quoting",)
    ),
    Case("base-models-glob", "a glob pattern", _names("good-*"), 3, ("shell or quoting",)),
    Case(
        "base-models-65-names",
        "65 names",
        _names(",".join(f"m{i}" for i in range(65))),
        2,
        ("65 names", "at most 64"),
    ),
    Case(
        "base-models-separator-soup",
        "only separators",
        _names("-._-"),
        3,
        ("no ASCII letters or digits",),
    ),
    Case(
        "base-models-reverse-containment",
        "a request containing the key plus more tokens",
        _names("org-good-model"),
        3,
        ("did you mean good-model",),
    ),
    # ---- requested model broken (exit 2)
    Case(
        "model-architectures-string",
        "architectures is a string",
        _model("arch-str", _config(architectures="LlamaForCausalLM")),
        2,
        ("'architectures' must be a list",),
    ),
    Case(
        "model-architectures-number",
        "architectures is a number",
        _model("arch-num", _config(architectures=7)),
        2,
        ("'architectures' must be a list",),
    ),
    Case(
        "model-architectures-empty-name",
        "architectures holds an empty string",
        _model("arch-empty", _config(architectures=[""])),
        2,
        ("'architectures' must be a list",),
    ),
    Case(
        "model-vocab-enormous",
        "vocab_size 10^12",
        _model("big-vocab", _config(vocab_size=10**12)),
        2,
        ("vocab_size", "outside"),
    ),
    Case(
        "model-hidden-size-string",
        "hidden_size is a string",
        _model("str-hidden", _config(hidden_size="4096")),
        2,
        ("hidden_size must be an integer",),
    ),
    Case(
        "model-layers-negative",
        "num_hidden_layers -1",
        _model("neg-layers", _config(num_hidden_layers=-1)),
        2,
        ("num_hidden_layers", "outside"),
    ),
    Case(
        "model-model-type-list",
        "model_type is a list",
        _model("type-list", _config(model_type=["llama"])),
        2,
        ("no model_type",),
    ),
    Case(
        "model-config-deep",
        "config.json nested 100,000 levels",
        _model("deep-cfg", _raw_config("[" * 100_000 + "]" * 100_000)),
        2,
        ("nested too deeply",),
    ),
    Case(
        "model-config-huge-int",
        "a 5,000-digit integer in config.json",
        _model("int-cfg", _raw_config('{"model_type":"llama","x":' + "9" * 5000 + "}")),
        2,
        ("not valid JSON",),
    ),
    Case(
        "model-config-directory",
        "config.json is a directory",
        _model("dir-cfg", lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir())),
        2,
        ("config.json", "not a regular file"),
    ),
    Case(
        "model-config-fifo",
        "config.json is a FIFO (never opened)",
        _model("fifo-cfg", _fifo("config.json")),
        2,
        ("config.json", "not a regular file"),
    ),
    Case(
        "model-config-latin1",
        "config.json is not UTF-8",
        _model("latin-cfg", _write("config.json", '{"model_type": "llåma"}'.encode("latin-1"))),
        2,
        ("not UTF-8",),
    ),
    Case(
        "model-config-too-large",
        "a 17 MB config.json",
        _model("big-cfg", _write("config.json", b" " * (17 * 1024 * 1024) + b"{}")),
        2,
        ("larger than",),
    ),
    Case(
        "model-safetensors-shape-string",
        "a shape with a string",
        _model("shape-str", _shape_text(b"[16, 8]", b'["1",8]')),
        2,
        ("bad tensor entry",),
    ),
    Case(
        "model-safetensors-shape-float",
        "a shape with a float",
        _model("shape-float", _shape_text(b"[16, 8]", b"[1.6,8]")),
        2,
        ("bad tensor entry",),
    ),
    Case(
        "model-safetensors-dtype-unknown",
        "an unknown dtype",
        _model("dtype-x", _shape_text(b'"F32"', b'"X99"')),
        2,
        ("bad tensor entry",),
    ),
    Case(
        "model-safetensors-offsets-lie",
        "offsets that do not match the shape",
        _model("offsets", _shape_text(b'"F32"', b'"F64"')),
        2,
        ("bad tensor entry",),
    ),
    Case(
        "model-safetensors-header-deep",
        "a header nested too deep",
        _model(
            "deep-header",
            _shape_text(b'{"embed"', b'{"e":' + b"[" * 3000 + b"]" * 3000 + b',"embed"'),
        ),
        2,
        ("model.safetensors", "corrupt"),
    ),
    Case(
        "model-weights-fifo",
        "model.safetensors is a FIFO",
        _model("fifo-weights", _fifo("model.safetensors")),
        2,
        ("model.safetensors", "not a regular file"),
    ),
    Case(
        "model-weights-symlink-outside",
        "weights file symlinked out of MODELS_DIR",
        _link_outside("model.safetensors"),
        2,
        ("model.safetensors", "outside MODELS_DIR"),
    ),
    Case(
        "model-tokenizer-symlink-outside",
        "tokenizer file symlinked out of MODELS_DIR",
        _link_outside("tokenizer.json"),
        2,
        ("tokenizer.json", "outside MODELS_DIR"),
    ),
    Case(
        "model-symlink-loop",
        "the requested model is a symlink loop",
        _loop,
        2,
        ("loop-model", "symlink loop"),
    ),
    Case(
        "model-dir-name-too-long",
        "a 250-character directory name (artifact names would exceed 255 bytes)",
        _long_dir,
        2,
        ("artifact name", "255"),
    ),
    Case(
        "model-pickle-unsafe",
        "--allow-pickle with a pickle the safe loader refuses",
        lambda ws: (
            _model("evil-pickle", _unsafe_pickle, weights="none")(ws),
            ws.args.append("--allow-pickle"),
        ),
        2,
        ("pytorch_model.bin", "safe loader"),
    ),
    Case(
        "models-dir-is-file",
        "MODELS_DIR is a regular file",
        _file_at("models-file", "MODELS_DIR"),
        2,
        ("MODELS_DIR", "not a directory"),
    ),
    # ---- an unrelated broken directory never blocks the others (exit 0, listed with reason)
    _sibling("arch-string", _config(architectures="LlamaForCausalLM"), "must be a list"),
    _sibling("huge-vocab", _config(vocab_size=10**12), "vocab_size"),
    _sibling("deep-config", _raw_config("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    _sibling("bad-shapes", _shape_text(b"[16, 8]", b'["1",8]'), "bad tensor entry"),
    _sibling(
        "config-as-dir",
        lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir()),
        "not a regular file",
    ),
    _sibling("fifo-weights", _fifo("model.safetensors"), "not a regular file"),
    _sibling("str-hidden", _config(hidden_size="8"), "must be an integer"),
    _sibling_link("loop"),
    _sibling_link("dangling"),
    Case(
        "sibling-broken-dirs-train",
        "five broken directories next to the requested model: it still trains and certifies",
        _broken_siblings_then_train,
        0,
        ("certified",),
        needs=REAL,
    ),
    Case(
        "sibling-same-key",
        "two directories with one key: one is listed unusable, naming the other",
        _copy_good_model_as("Good_Model"),
        0,
        ("same key",),
    ),
    # ---- dataset (exit 2)
    Case(
        "dataset-deep-nesting",
        "a record nested 100,000 levels",
        _lines("deep.jsonl", "[" * 100_000 + "]" * 100_000),
        2,
        ("deep.jsonl:6", "nested"),
    ),
    Case(
        "dataset-moderate-nesting",
        "a record nested 40 levels in a metadata field",
        _lines("meta.jsonl", '{"text": "x", "m": ' + "[" * 40 + "]" * 40 + "}"),
        2,
        ("meta.jsonl:6", "nested deeper than 32"),
    ),
    Case(
        "dataset-huge-integer",
        "a 5,000-digit integer",
        _lines("int.jsonl", '{"text": "x", "n": ' + "9" * 5000 + "}"),
        2,
        ("int.jsonl:6", "4300 digits"),
    ),
    Case(
        "dataset-lone-surrogate",
        "a lone surrogate in an answer",
        _lines("sur.jsonl", '{"instruction": "Fr\\u00e5ga?", "output": "svar \\ud800"}'),
        2,
        ("sur.jsonl:6", "lone surrogate"),
    ),
    Case(
        "dataset-lone-surrogate-chat",
        "a lone surrogate in a chat message",
        _lines(
            "surchat.jsonl",
            _msgs(("user", "\\udfff"), ("assistant", "ja")),
        ),
        2,
        ("surchat.jsonl:6", "lone surrogate"),
    ),
    Case("dataset-fifo", "DATASET is a FIFO (never opened)", _dataset_fifo, 2, ("DATASET", "FIFO")),
    Case(
        "dataset-dev-zero",
        "DATASET is a character device",
        _env(DATASET="/dev/zero"),
        2,
        ("DATASET", "not a regular file"),
    ),
    Case(
        "dataset-one-record",
        "one record: nothing to validate on",
        _only("one.jsonl", b'{"text": "Hej"}\n'),
        2,
        ("only one usable record", "at least two"),
    ),
    Case(
        "dataset-blank-lines",
        "only blank lines",
        _only("blank.jsonl", b"\n\n  \n\t\n"),
        2,
        ("no usable records",),
    ),
    Case(
        "dataset-top-level-array",
        "a JSON array per line",
        _lines("arr.jsonl", '["Vad?", "Det."]'),
        2,
        ("arr.jsonl:6", "not a JSON object"),
    ),
    Case(
        "dataset-binary",
        "binary garbage",
        _only("bin.jsonl", bytes(range(256)) * 4),
        2,
        ("bin.jsonl:1",),
    ),
    Case(
        "dataset-bom",
        "a UTF-8 byte-order mark",
        _only("bom.jsonl", b"\xef\xbb\xbf" + b'{"text": "a"}\n{"text": "b"}\n'),
        2,
        ("bom.jsonl:1", "not JSON"),
    ),
    Case(
        "dataset-messages-not-list",
        "messages is a string",
        _lines("m1.jsonl", '{"messages": "hej"}'),
        2,
        ("m1.jsonl:6", "non-empty list"),
    ),
    Case(
        "dataset-messages-no-assistant",
        "the last turn is the user's",
        _lines("m2.jsonl", '{"messages": [{"role": "user", "content": "hej"}]}'),
        2,
        ("m2.jsonl:6", "assistant"),
    ),
    Case(
        "dataset-messages-bad-role",
        "a role that is not system/user/assistant",
        _lines(
            "m3.jsonl",
            _msgs(("tool", "x"), ("assistant", "y")),
        ),
        2,
        ("m3.jsonl:6", "role"),
    ),
    Case(
        "dataset-messages-no-user",
        "system and assistant only",
        _lines(
            "m4.jsonl",
            _msgs(("system", "x"), ("assistant", "y")),
        ),
        2,
        ("m4.jsonl:6", "no user message"),
    ),
    Case(
        "dataset-text-empty",
        "an empty text",
        _lines("t.jsonl", '{"text": "   "}'),
        2,
        ("t.jsonl:6", "non-empty string"),
    ),
    Case(
        "dataset-input-not-string",
        "input is a number",
        _lines("i.jsonl", '{"instruction": "Vad?", "input": 5, "output": "Det."}'),
        2,
        ("i.jsonl:6", "'input' must be a string"),
    ),
    Case(
        "dataset-output-number",
        "output is a number",
        _lines("o.jsonl", '{"instruction": "Vad?", "output": 42}'),
        2,
        ("o.jsonl:6", "needs instruction"),
    ),
    Case(
        "dataset-nan",
        "NaN where text belongs",
        _lines("nan.jsonl", '{"text": NaN}'),
        2,
        ("nan.jsonl:6",),
    ),
    Case(
        "chat-template-sandbox",
        "a chat template the Jinja sandbox refuses",
        _template("{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        2,
        ("chat template", "SecurityError"),
        needs=REAL,
    ),
    Case(
        "chat-template-runaway-loop",
        "a chat template with a 10^10-step loop: stopped by the time budget",
        _template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        ),
        2,
        ("chat template", "longer than 10 s"),
        needs=REAL,
    ),
    Case(
        "chat-template-raises",
        "a chat template that raises on our records",
        _template("{{ raise_exception('Conversation roles must alternate') }}"),
        2,
        ("chat template", "roles must alternate"),
        needs=REAL,
    ),
    # ---- settings (exit 2)
    Case(
        "lora-alpha-inf",
        "ONESEEK_LORA_ALPHA=inf",
        _env(ONESEEK_LORA_ALPHA="inf"),
        2,
        ("ONESEEK_LORA_ALPHA", "finite"),
    ),
    Case(
        "lora-alpha-nan",
        "ONESEEK_LORA_ALPHA=nan",
        _env(ONESEEK_LORA_ALPHA="nan"),
        2,
        ("ONESEEK_LORA_ALPHA", "finite"),
    ),
    Case(
        "lora-dropout-one",
        "ONESEEK_LORA_DROPOUT=1",
        _env(ONESEEK_LORA_DROPOUT="1"),
        2,
        ("ONESEEK_LORA_DROPOUT",),
    ),
    Case(
        "learning-rate-inf",
        "ONESEEK_LEARNING_RATE=Infinity",
        _env(ONESEEK_LEARNING_RATE="Infinity"),
        2,
        ("ONESEEK_LEARNING_RATE",),
    ),
    Case(
        "learning-rate-zero",
        "ONESEEK_LEARNING_RATE=0",
        _env(ONESEEK_LEARNING_RATE="0"),
        2,
        ("ONESEEK_LEARNING_RATE",),
    ),
    Case(
        "seed-above-2-64",
        "ONESEEK_SEED=2^64+1",
        _env(ONESEEK_SEED=str(2**64 + 1)),
        2,
        ("ONESEEK_SEED",),
    ),
    Case("seed-negative", "ONESEEK_SEED=-1", _env(ONESEEK_SEED="-1"), 2, ("ONESEEK_SEED",)),
    Case(
        "seed-5000-digits",
        "ONESEEK_SEED with 5,000 digits",
        _env(ONESEEK_SEED="9" * 5000),
        2,
        ("ONESEEK_SEED",),
    ),
    Case(
        "epochs-huge",
        "ONESEEK_EPOCHS=10^9",
        _env(ONESEEK_EPOCHS="1000000000"),
        2,
        ("ONESEEK_EPOCHS",),
    ),
    Case(
        "max-steps-negative",
        "ONESEEK_MAX_STEPS=-1",
        _env(ONESEEK_MAX_STEPS="-1"),
        2,
        ("ONESEEK_MAX_STEPS",),
    ),
    Case("seq-len-tiny", "ONESEEK_SEQ_LEN=8", _env(ONESEEK_SEQ_LEN="8"), 2, ("ONESEEK_SEQ_LEN",)),
    Case(
        "batch-tokens-huge",
        "ONESEEK_BATCH_TOKENS=10^12",
        _env(ONESEEK_BATCH_TOKENS="1000000000000"),
        2,
        ("ONESEEK_BATCH_TOKENS",),
    ),
    Case(
        "weight-decay-inf",
        "ONESEEK_WEIGHT_DECAY=inf",
        _env(ONESEEK_WEIGHT_DECAY="inf"),
        2,
        ("ONESEEK_WEIGHT_DECAY",),
    ),
    Case(
        "lr-schedule-unknown",
        "ONESEEK_LR_SCHEDULE=exponential",
        _env(ONESEEK_LR_SCHEDULE="exponential"),
        2,
        ("ONESEEK_LR_SCHEDULE",),
    ),
    Case(
        "log-level-loud",
        "ONESEEK_LOG_LEVEL=LOUD",
        _env(ONESEEK_LOG_LEVEL="LOUD"),
        2,
        ("ONESEEK_LOG_LEVEL", "must be one of"),
    ),
    Case(
        "log-format-yaml",
        "ONESEEK_LOG_FORMAT=yaml",
        _env(ONESEEK_LOG_FORMAT="yaml"),
        2,
        ("ONESEEK_LOG_FORMAT",),
    ),
    Case(
        "bool-maybe",
        "ONESEEK_ALLOW_PICKLE=maybe",
        _env(ONESEEK_ALLOW_PICKLE="maybe"),
        2,
        ("ONESEEK_ALLOW_PICKLE",),
    ),
    Case(
        "language-word",
        "ONESEEK_LANGUAGE=swedish",
        _env(ONESEEK_LANGUAGE="swedish"),
        2,
        ("ONESEEK_LANGUAGE",),
    ),
    Case(
        "model-version-letters", "MODEL_VERSION=v1", _env(MODEL_VERSION="v1"), 2, ("MODEL_VERSION",)
    ),
    Case(
        "model-version-long",
        "MODEL_VERSION with 300 digits",
        _env(MODEL_VERSION="1" * 300),
        2,
        ("MODEL_VERSION",),
    ),
    Case("run-id-too-long", "RUN_ID of 200 characters", _env(RUN_ID="r" * 200), 2, ("RUN_ID",)),
    Case("run-id-unicode", "RUN_ID with non-ASCII", _env(RUN_ID="körning-1"), 2, ("RUN_ID",)),
    Case(
        "completion-index-negative",
        "JOB_COMPLETION_INDEX=-1",
        _env(JOB_COMPLETION_INDEX="-1"),
        2,
        ("JOB_COMPLETION_INDEX",),
    ),
    Case(
        "completion-index-word",
        "JOB_COMPLETION_INDEX=first",
        _env(JOB_COMPLETION_INDEX="first"),
        2,
        ("JOB_COMPLETION_INDEX",),
    ),
    # ---- paths: surrounding whitespace refused, overlaps refused, files where dirs belong
    Case(
        "artifacts-uri-leading-space",
        "ARTIFACTS_URI=' s3://…'",
        _env(ARTIFACTS_URI=" s3://oneseek/prod"),
        2,
        ("ARTIFACTS_URI", "whitespace"),
    ),
    Case(
        "artifacts-uri-trailing-space",
        "a local ARTIFACTS_URI with a trailing space",
        lambda ws: ws.env.update(ARTIFACTS_URI=ws.env["ARTIFACTS_URI"] + " "),
        2,
        ("ARTIFACTS_URI", "whitespace"),
    ),
    Case(
        "models-dir-trailing-newline",
        "MODELS_DIR ending in a newline",
        lambda ws: ws.env.update(MODELS_DIR=ws.env["MODELS_DIR"] + "\n"),
        2,
        ("MODELS_DIR", "whitespace"),
    ),
    Case(
        "dataset-leading-space",
        "DATASET with a leading space",
        lambda ws: ws.env.update(DATASET=" " + ws.env["DATASET"]),
        2,
        ("DATASET", "whitespace"),
    ),
    Case(
        "work-dir-trailing-space",
        "ONESEEK_WORK_DIR with a trailing space",
        lambda ws: ws.env.update(ONESEEK_WORK_DIR=ws.env["ONESEEK_WORK_DIR"] + " "),
        2,
        ("ONESEEK_WORK_DIR", "whitespace"),
    ),
    Case(
        "checkpoint-dir-control-char",
        "CHECKPOINT_DIR with an escape character",
        _env(CHECKPOINT_DIR="/tmp/ck\x1b[2J"),
        2,
        ("CHECKPOINT_DIR", "control characters"),
    ),
    Case(
        "checkpoint-inside-artifacts",
        "CHECKPOINT_DIR inside the certified area",
        _path_env("CHECKPOINT_DIR", "artifacts/oneseek-certified/ck"),
        2,
        ("CHECKPOINT_DIR", "inside ARTIFACTS_URI"),
    ),
    Case(
        "checkpoint-equals-artifacts",
        "CHECKPOINT_DIR is ARTIFACTS_URI",
        _path_env("CHECKPOINT_DIR", "artifacts"),
        2,
        ("CHECKPOINT_DIR", "same directory"),
    ),
    Case(
        "artifacts-inside-models",
        "ARTIFACTS_URI under MODELS_DIR",
        _path_env("ARTIFACTS_URI", "models/out"),
        2,
        ("ARTIFACTS_URI", "inside MODELS_DIR"),
    ),
    Case(
        "artifacts-inside-work",
        "ARTIFACTS_URI under the work dir (lost with the pod)",
        _path_env("ARTIFACTS_URI", "work/artifacts"),
        2,
        ("ARTIFACTS_URI", "inside ONESEEK_WORK_DIR"),
    ),
    Case(
        "work-dir-inside-models",
        "ONESEEK_WORK_DIR under MODELS_DIR",
        _path_env("ONESEEK_WORK_DIR", "models/work"),
        2,
        ("ONESEEK_WORK_DIR", "inside MODELS_DIR"),
    ),
    Case(
        "work-dir-is-file",
        "ONESEEK_WORK_DIR is a regular file",
        _file_at("work", "ONESEEK_WORK_DIR"),
        2,
        ("ONESEEK_WORK_DIR", "not a directory"),
    ),
    Case(
        "work-dir-under-file",
        "ONESEEK_WORK_DIR below a regular file",
        _file_at("blocker", "ONESEEK_WORK_DIR", "blocker/work"),
        2,
        ("ONESEEK_WORK_DIR", "not a writable directory"),
    ),
    Case(
        "checkpoint-dir-is-file",
        "CHECKPOINT_DIR is a regular file",
        _file_at("ckpt", "CHECKPOINT_DIR"),
        2,
        ("CHECKPOINT_DIR", "not a directory"),
    ),
    Case(
        "artifacts-dir-is-file",
        "a local ARTIFACTS_URI that is a file",
        _file_at("artifacts", "ARTIFACTS_URI"),
        2,
        ("ARTIFACTS_URI", "not a directory"),
    ),
    # ---- signing key: checked before any training (exit 2)
    Case(
        "signing-key-missing",
        "ONESEEK_SIGNING_KEY_FILE points nowhere",
        _key("missing"),
        2,
        ("ONESEEK_SIGNING_KEY_FILE", "does not exist"),
    ),
    Case(
        "signing-key-fifo",
        "the key is a FIFO: refused, never opened blocking",
        _key("fifo"),
        2,
        ("ONESEEK_SIGNING_KEY_FILE", "not a regular file"),
    ),
    Case(
        "signing-key-directory",
        "the key path is a directory",
        _key("directory"),
        2,
        ("ONESEEK_SIGNING_KEY_FILE", "not a regular file"),
    ),
    Case(
        "signing-key-device",
        "the key is /dev/zero",
        _env(ONESEEK_SIGNING_KEY_FILE="/dev/zero"),
        2,
        ("ONESEEK_SIGNING_KEY_FILE", "not a regular file"),
    ),
    Case(
        "signing-key-garbage",
        "a PEM frame around garbage",
        _key("garbage"),
        2,
        ("signing key", "not an unencrypted PEM key"),
    ),
    Case("signing-key-rsa", "an RSA key", _key("rsa"), 2, ("signing key", "not an ECDSA")),
    Case(
        "signing-key-public",
        "a public key where the private key belongs",
        _key("public"),
        2,
        ("signing key", "PEM key"),
    ),
    Case(
        "signing-key-world-readable",
        "mode 0644 (a Secret without defaultMode)",
        _key("world"),
        2,
        ("readable by every user", "defaultMode"),
    ),
    Case(
        "signing-key-group-writable",
        "mode 0660",
        _key("group-writable"),
        2,
        ("writable by group or others",),
    ),
    # ---- S3 endpoint and URI (exit 2)
    Case(
        "s3-endpoint-malformed-ipv6",
        "S3_ENDPOINT_URL=http://[::1",
        _env(S3_ENDPOINT_URL="http://[::1", ARTIFACTS_URI="s3://oneseek/prod"),
        2,
        ("S3_ENDPOINT_URL", "not a valid URL"),
    ),
    Case(
        "s3-endpoint-port-out-of-range",
        "port 99999",
        _env(S3_ENDPOINT_URL="http://127.0.0.1:99999"),
        2,
        ("S3_ENDPOINT_URL",),
    ),
    Case(
        "s3-endpoint-no-scheme",
        "host:port without http://",
        _env(S3_ENDPOINT_URL="minio:9000"),
        2,
        ("S3_ENDPOINT_URL", "http(s)"),
    ),
    Case(
        "s3-endpoint-credentials-in-url",
        "user:password@ in the URL",
        _env(S3_ENDPOINT_URL="http://key:secret@minio:9000"),
        2,
        ("S3_ENDPOINT_URL", "credentials"),
    ),
    Case(
        "s3-endpoint-trailing-space",
        "an endpoint with a trailing space",
        _env(S3_ENDPOINT_URL="http://minio:9000 "),
        2,
        ("S3_ENDPOINT_URL", "whitespace"),
    ),
    Case(
        "s3-key-without-secret",
        "AWS_ACCESS_KEY_ID without the secret",
        _s3_env(AWS_SECRET_ACCESS_KEY=""),
        2,
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        needs=S3,
    ),
]


def _marker(content: bytes) -> Setup:
    def setup(ws: Workspace) -> None:
        from oneseek_job import layout

        marker = ws.root / "artifacts" / layout.done_marker_key("run-bad-input", GOOD_MODEL)
        marker.parent.mkdir(parents=True)
        marker.write_bytes(content)
        ws.args = ["certify", "--run-id", "run-bad-input"]

    return setup


MORE_CASES += [
    Case(
        "done-marker-crafted",
        "a done marker that is not a model result",
        _marker(b'{"key": ["good-model"], "files": "all of them"}'),
        2,
        ("done marker", "not a model result"),
    ),
    Case(
        "done-marker-not-json",
        "a done marker that is not JSON",
        _marker(b"\x00\x01 not json"),
        2,
        ("done marker", "not a model result"),
    ),
]


def _verify_with_public_key(kind: str) -> Setup:
    def setup(ws: Workspace) -> None:
        key = ws.root / "oneseek.pub"
        if kind == "fifo":
            os.mkfifo(key)
        else:
            key.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        (ws.root / "artifacts").mkdir()
        ws.args = [
            "verify",
            str(ws.root / "artifacts"),
            "--run-id",
            "run-bad-input",
            "--public-key",
            str(key),
        ]

    return setup


MORE_CASES += [
    Case(
        "verify-public-key-fifo",
        "verify --public-key pointing at a FIFO: refused, never opened blocking",
        _verify_with_public_key("fifo"),
        2,
        ("public key", "not a regular file"),
    ),
    Case(
        "verify-public-key-garbage",
        "verify --public-key with a broken PEM",
        _verify_with_public_key("garbage"),
        2,
        ("public key", "not a PEM public key"),
    ),
]


MORE_CASES += [
    # Found by tests/test_properties.py (Hypothesis): kept here as named regressions.
    Case(
        "dataset-role-unhashable",
        "a message role that is a list",
        _lines("role.jsonl", '{"messages": [{"role": [], "content": "x"}]}'),
        2,
        ("role.jsonl:6", "role"),
    ),
    Case(
        "tokenizer-json-malformed",
        "a valid config.json and a tokenizer.json transformers cannot read (KeyError)",
        _model("bad-tok", _write("config.json", b'{"model_type": "llama"}')),
        2,
        ("no usable tokenizer", "bad-tok"),
    ),
]
