"""The demo workspace: layout, loadable real-architecture checkpoints, dataset, determinism."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

from oneseek_job import demo
from oneseek_job.config import load_settings
from oneseek_job.demo import (
    DEMO_MODELS,
    DemoWorkspace,
    build_demo,
    build_tiny_model,
    load_demo_records,
)
from oneseek_job.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "oneseek-7b-zero/base_models/kb-llama-3-1-8b-swedish": (
        "KB-Llama-3.1-8B-Swedish",
        "LlamaForCausalLM",
    ),
    "oneseek-7b-zero/base_models/qwen-2-5-7b": ("Qwen-2.5-7B", "Qwen2ForCausalLM"),
    "mistral-7b-instruct": ("Mistral-7B-Instruct", "MistralForCausalLM"),
}
SAMPLE = "Hur ansöker jag om bostadsbidrag hos Försäkringskassan? Svar: 18 år, ÅÄÖ.\n\nTack!"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): _sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in {"demo.env", ".demo-complete"}
    }


def _read_env(path: Path) -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in path.read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    return {key: value for key, value in pairs}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    return build_demo(tmp_path_factory.mktemp("ws") / "demo", seed=0)


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    # Loading must never need the hub: fail loudly if anything tries.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def test_layout_matches_the_pvc_discovery_rules(workspace: DemoWorkspace) -> None:
    root = workspace.root
    assert root.is_absolute()
    assert workspace.models_dir == root / "models"
    assert workspace.dataset == root / "data" / "civic_qa_sv.jsonl"
    assert workspace.base_models == [
        "KB-Llama-3.1-8B-Swedish",
        "Qwen-2.5-7B",
        "Mistral-7B-Instruct",
    ]
    model_dirs = {
        str(config.parent.relative_to(workspace.models_dir))
        for config in workspace.models_dir.rglob("config.json")
    }
    assert model_dirs == set(EXPECTED)
    for relative in EXPECTED:
        files = {path.name for path in (workspace.models_dir / relative).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= (
            files
        )
        # Safetensors only: nothing a loader would have to unpickle.
        assert not {name for name in files if name.endswith((".bin", ".pth", ".pt", ".pkl"))}
    # No staging or trash directories are left beside the workspace.
    assert [path.name for path in root.parent.iterdir()] == [root.name]


def test_directory_names_are_the_normalized_display_names(workspace: DemoWorkspace) -> None:
    # DESIGN.md's normalize_model_name, so BASE_MODELS resolves by exact key.
    for model in DEMO_MODELS:
        key = re.sub(r"[^a-z0-9]+", "-", model.display_name.lower()).strip("-")
        assert Path(model.relative_dir).name == key


def test_config_json_carries_display_names(workspace: DemoWorkspace) -> None:
    for relative, (display, architecture) in EXPECTED.items():
        config = json.loads((workspace.models_dir / relative / "config.json").read_text())
        assert config["_name_or_path"] == display
        assert config["architectures"] == [architecture]
        if relative == "mistral-7b-instruct":
            assert config["model_name"] == display
        else:
            # Left out so discovery's _name_or_path fallback is exercised.
            assert "model_name" not in config
        assert config["num_key_value_heads"] < config["num_attention_heads"]


@pytest.mark.usefixtures("offline")
def test_every_model_loads_and_gives_finite_logits(workspace: DemoWorkspace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for relative, (_, architecture) in EXPECTED.items():
        path = workspace.models_dir / relative
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        assert type(model).__name__ == architecture
        assert model.config.vocab_size == len(tokenizer)
        batch = tokenizer([SAMPLE, "Vad är allemansrätten?"], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
        assert torch.isfinite(logits).all()
        ids = tokenizer(SAMPLE)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE


@pytest.mark.usefixtures("offline")
def test_tokenizers_are_identical_across_model_dirs(workspace: DemoWorkspace) -> None:
    # transformers picks Qwen2Tokenizer for the qwen2 model; it must encode like the rest.
    from transformers import AutoTokenizer

    texts = [SAMPLE, "Ring 112 eller 114 14.", "it's  två\tmellanslag  ", "e\u0301 Å"]
    encodings = {}
    for relative in EXPECTED:
        tokenizer = AutoTokenizer.from_pretrained(workspace.models_dir / relative)
        encodings[relative] = json.dumps([tokenizer(text)["input_ids"] for text in texts])
    assert len(set(encodings.values())) == 1


@pytest.mark.usefixtures("offline")
def test_chat_template_renders_messages(workspace: DemoWorkspace) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace.models_dir / "mistral-7b-instruct")
    messages = [
        {"role": "user", "content": "Vad gör Kronofogden?"},
        {"role": "assistant", "content": "Hjälper till med skulder."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "<|user|>\nVad gör Kronofogden?</s>" in text
    assert text.endswith("<|assistant|>\nHjälper till med skulder.</s>\n")
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_dataset_has_hundreds_of_varied_swedish_records(workspace: DemoWorkspace) -> None:
    lines = workspace.dataset.read_text("utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 300
    for record in records:
        assert set(record) == {"instruction", "input", "output"}
        assert record["input"] == ""
        assert record["instruction"].strip() and record["output"].strip()
    assert len({record["instruction"] for record in records}) == len(records)
    lengths = sorted(len(record["output"]) for record in records)
    assert lengths[0] < 60 and lengths[-1] > 350
    assert len(set(lengths)) > 100
    text = " ".join(record["output"] for record in records)
    for word in ("Försäkringskassan", "Skatteverket", "BankID", "allemansrätten", "1177"):
        assert word in text
    assert records == load_demo_records(0)


def test_records_depend_on_the_seed_only() -> None:
    assert load_demo_records(3) == load_demo_records(3)
    assert load_demo_records(3) != load_demo_records(4)


def test_same_seed_same_bytes_other_seed_other_weights(
    workspace: DemoWorkspace, tmp_path: Path
) -> None:
    again = build_demo(tmp_path / "again", seed=0)
    other = build_demo(tmp_path / "other", seed=1)
    assert _digests(again.root) == _digests(workspace.root)
    for relative in EXPECTED:
        weights = f"models/{relative}/model.safetensors"
        assert _sha256(other.root / weights) != _sha256(workspace.root / weights)
    assert _sha256(other.dataset) != _sha256(workspace.dataset)
    # The three checkpoints of one workspace are not clones of each other.
    hashes = {_sha256(workspace.models_dir / r / "model.safetensors") for r in EXPECTED}
    assert len(hashes) == len(EXPECTED)


def test_demo_env_configures_a_valid_job(
    workspace: DemoWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _read_env(workspace.env_file)
    assert env["BASE_MODELS"] == "KB-Llama-3.1-8B-Swedish,Qwen-2.5-7B,Mistral-7B-Instruct"
    assert env["MODELS_DIR"] == str(workspace.models_dir)
    assert env["DATASET"] == str(workspace.dataset)
    assert env["ARTIFACTS_URI"] == str(workspace.root / "artifacts")
    assert env["ONESEEK_WORK_DIR"] == str(workspace.root / "work")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.base_models == workspace.base_models
    assert settings.models_dir == workspace.models_dir
    assert settings.dataset == workspace.dataset
    assert settings.train.seq_len <= 512  # within the tiny models' max_position_embeddings
    assert settings.train.batch_tokens >= settings.train.seq_len
    assert settings.train.max_steps > settings.train.checkpoint_every


def test_rerun_reuses_a_complete_workspace_and_force_rebuilds(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    first = build_demo(root, seed=2)
    weights = first.models_dir / "mistral-7b-instruct" / "model.safetensors"
    before = weights.stat().st_ino, weights.stat().st_mtime_ns
    digest = _sha256(weights)
    (root / "notes.txt").write_text("mine")

    assert build_demo(root, seed=2) == first
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before
    assert (root / "notes.txt").exists()

    rebuilt = build_demo(root, seed=2, force=True)
    assert rebuilt == first
    assert not (root / "notes.txt").exists()
    assert weights.stat().st_ino != before[0]  # really rewritten ...
    assert _sha256(weights) == digest  # ... to the same bytes: same seed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]


def test_incomplete_or_other_seed_workspace_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    workspace = build_demo(root, seed=0)
    weights = workspace.models_dir / "mistral-7b-instruct" / "model.safetensors"
    expected = _sha256(weights)
    weights.unlink()
    build_demo(root, seed=0)
    assert _sha256(weights) == expected

    build_demo(root, seed=5)
    assert _sha256(weights) != expected
    assert json.loads((root / ".demo-complete").read_text())["seed"] == 5


def test_moved_workspace_gets_its_env_file_rewritten(tmp_path: Path) -> None:
    build_demo(tmp_path / "a", seed=0)
    (tmp_path / "a").rename(tmp_path / "b")
    moved = build_demo(tmp_path / "b", seed=0)
    env = _read_env(moved.env_file)
    assert env["MODELS_DIR"] == str(tmp_path / "b" / "models")
    assert env["DATASET"] == str(tmp_path / "b" / "data" / "civic_qa_sv.jsonl")


def test_refuses_to_replace_a_directory_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    (root / "precious.txt").write_text("keep")
    for force in (False, True):
        with pytest.raises(InputError, match="not a demo workspace"):
            build_demo(root, force=force)
    assert (root / "precious.txt").read_text() == "keep"


def test_an_interrupted_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = demo._write_model
    calls: list[str] = []

    def fail_on_second_model(target: Path, **kwargs: object) -> int:
        calls.append(str(target))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "_write_model", fail_on_second_model)
    with pytest.raises(KeyboardInterrupt):
        build_demo(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("offline")
def test_build_tiny_model_standalone(workspace: DemoWorkspace, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_dir = workspace.models_dir / "mistral-7b-instruct"
    target = build_tiny_model(
        tmp_path / "gemma-like",
        architecture="Qwen2ForCausalLM",
        display_name="Tiny-Qwen",
        tokenizer_dir=tokenizer_dir,
        hidden_size=32,
        num_layers=1,
        seed=7,
    )
    config = json.loads((target / "config.json").read_text())
    assert config["_name_or_path"] == "Tiny-Qwen"
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 1
    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert (
        tokenizer(SAMPLE)["input_ids"]
        == AutoTokenizer.from_pretrained(tokenizer_dir)(SAMPLE)["input_ids"]
    )
    with torch.no_grad():
        assert torch.isfinite(model(**tokenizer(SAMPLE, return_tensors="pt")).logits).all()

    own = build_tiny_model(
        tmp_path / "own-tokenizer",
        architecture="llama",
        display_name="Tiny-Llama",
        corpus=["hej hopp i lingonskogen"] * 20,
        num_layers=1,
    )
    assert len(AutoTokenizer.from_pretrained(own)) < 600  # trained on the tiny corpus given

    with pytest.raises(ConfigError, match="unknown demo architecture"):
        build_tiny_model(tmp_path / "x", architecture="gpt-j", display_name="X")
    with pytest.raises(InputError, match="no tokenizer"):
        build_tiny_model(
            tmp_path / "y", architecture="llama", display_name="Y", tokenizer_dir=tmp_path / "nope"
        )


def test_bundled_source_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["oneseek_job"]
    bundled = [
        path.relative_to(REPO / "oneseek_job") for path in (REPO / "oneseek_job" / "data").iterdir()
    ]
    assert bundled
    for path in bundled:
        assert any(fnmatch(str(path), pattern) for pattern in patterns)
