"""Discovery and resolution: the seed's cases hold, and we refuse where it guessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneseek_job.discovery import (
    DEFAULT_MODEL_KEY,
    EXCLUDED_DIRS,
    check_base_models,
    discover,
    get_model_display_name,
    normalize_model_name,
    remove_separators,
    resolve_base_models,
)
from oneseek_job.errors import EXIT_BAD_INPUT, EXIT_RESOLUTION, InputError, ResolutionError
from tests.modelfiles import write_model_dir, write_safetensors


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Mistral-7B-Instruct", "mistral-7b-instruct"),
        ("KB-Llama-3.1-8B-Swedish", "kb-llama-3-1-8b-swedish"),
        ("llama-2-7b-chat", "llama-2-7b-chat"),
        ("Qwen-2.5-7B", "qwen-2-5-7b"),
        ("gemma_2_9b", "gemma-2-9b"),
        ("  --Odd  Name__v2.. ", "odd-name-v2"),
    ],
)
def test_normalize_model_name(name: str, key: str) -> None:
    assert normalize_model_name(name) == key


def test_remove_separators() -> None:
    assert remove_separators("KB-Llama-3.1-8B-Swedish") == "kbllama318bswedish"
    assert remove_separators("kb_llama 3.1-8b swedish") == "kbllama318bswedish"


def test_display_name_order(tmp_path: Path) -> None:
    d = tmp_path / "some-dir"
    assert get_model_display_name({"model_name": "Nice", "_name_or_path": "a/b"}, d) == "Nice"
    assert get_model_display_name({"_name_or_path": "org/KB-Llama-3.1-8B-Swedish"}, d) == (
        "KB-Llama-3.1-8B-Swedish"
    )
    assert get_model_display_name({"_name_or_path": "/models/x/./"}, d) == "x"
    assert get_model_display_name({"_name_or_path": "."}, d) == "some-dir"
    assert get_model_display_name({"_name_or_path": ""}, d) == "some-dir"
    assert get_model_display_name({}, d) == "some-dir"
    assert DEFAULT_MODEL_KEY == "unknown-model"


@pytest.fixture
def seed_models(tmp_path: Path) -> Path:
    """The original trainer's layout: base_models/ plus old root-level Mistral/LLaMA dirs."""
    root = tmp_path / "models"
    base = root / "oneseek-7b-zero" / "base_models"
    write_model_dir(base / "kb-llama-3-1-8b-swedish", name_or_path="KB-Llama-3.1-8B-Swedish")
    write_model_dir(root / "mistral-7b-instruct", model_name="Mistral-7B-Instruct")
    write_model_dir(root / "llama-2-7b", name_or_path="meta-llama/Llama-2-7b-hf")
    (root / "oneseek-certified").mkdir()
    (root / "backups").mkdir()
    write_model_dir(root / "backups" / "old-model")  # inside an excluded dir: never scanned
    (root / "datasets").mkdir()  # no model files: not a candidate at all
    return root


def test_discovers_both_layouts(seed_models: Path) -> None:
    report = discover(seed_models)
    assert sorted(report.models) == ["kb-llama-3-1-8b-swedish", "llama-2-7b", "mistral-7b-instruct"]
    assert report.unusable == []
    kb = report.models["kb-llama-3-1-8b-swedish"]
    assert kb.display_name == "KB-Llama-3.1-8B-Swedish"
    assert kb.location == "base_models"
    assert kb.num_parameters == 2 * 16 * 8
    assert report.models["mistral-7b-instruct"].location == "root"
    assert report.models["llama-2-7b"].display_name == "Llama-2-7b-hf"
    assert {"oneseek-7b-zero", "oneseek-certified", "backups"} <= EXCLUDED_DIRS
    assert (
        check_base_models(seed_models)["mistral-7b-instruct"] == seed_models / "mistral-7b-instruct"
    )


@pytest.mark.parametrize(
    ("requested", "key"),
    [
        ("Mistral-7B-Instruct", "mistral-7b-instruct"),
        ("KB-Llama-3.1-8B-Swedish", "kb-llama-3-1-8b-swedish"),
        ("kb_llama_3.1_8b_swedish", "kb-llama-3-1-8b-swedish"),
        ("KBLlama3.18BSwedish", "kb-llama-3-1-8b-swedish"),
        ("llama-2", "llama-2-7b"),
        ("mistral", "mistral-7b-instruct"),
        ("Llama-2-7b-hf", "llama-2-7b"),
        ("llama-2-7b", "llama-2-7b"),
        ("instruct", "mistral-7b-instruct"),
        ("3-1-8b-swedish", "kb-llama-3-1-8b-swedish"),
    ],
)
def test_resolution_cases(seed_models: Path, requested: str, key: str) -> None:
    [resolution] = resolve_base_models([requested], discover(seed_models))
    assert resolution.key == key
    assert resolution.requested == (requested,)


def test_resolution_rule_is_reported(seed_models: Path) -> None:
    report = discover(seed_models)
    hows = {
        r.key: r.how
        for r in resolve_base_models(
            ["KB-Llama-3.1-8B-Swedish", "mistral", "Llama-2-7b-hf"], report
        )
    }
    assert hows == {
        "kb-llama-3-1-8b-swedish": "exact key",
        "mistral-7b-instruct": "token run",
        "llama-2-7b": "display name",
    }


def test_ambiguous_name_names_candidates(seed_models: Path) -> None:
    with pytest.raises(ResolutionError) as info:
        resolve_base_models(["llama"], discover(seed_models))
    message = str(info.value)
    assert "ambiguous" in message
    assert "kb-llama-3-1-8b-swedish" in message and "llama-2-7b" in message
    assert info.value.exit_code == EXIT_RESOLUTION


def test_unknown_name_suggests_closest(seed_models: Path) -> None:
    with pytest.raises(
        ResolutionError, match=r"'Mixtral-8x7B' matches no model \(closest: .*mistral"
    ):
        resolve_base_models(["Mixtral-8x7B"], discover(seed_models))


def test_all_problems_in_one_line(seed_models: Path) -> None:
    with pytest.raises(ResolutionError) as info:
        resolve_base_models(["llama", "gpt-5", "mistral"], discover(seed_models))
    message = str(info.value)
    assert "\n" not in message
    assert "'llama' is ambiguous" in message and "'gpt-5' matches no model" in message


@pytest.mark.parametrize("names", [[], [""], ["  ", " "]])
def test_empty_names_refused(seed_models: Path, names: list[str]) -> None:
    with pytest.raises(ResolutionError, match="BASE_MODELS is empty"):
        resolve_base_models(names, discover(seed_models))


def test_duplicates_trained_once(seed_models: Path) -> None:
    resolutions = resolve_base_models(
        ["KB-Llama-3.1-8B-Swedish", "kb-llama-3-1-8b-swedish", "mistral", "KBLLAMA318BSWEDISH"],
        discover(seed_models),
    )
    assert [r.key for r in resolutions] == ["kb-llama-3-1-8b-swedish", "mistral-7b-instruct"]
    assert resolutions[0].requested == (
        "KB-Llama-3.1-8B-Swedish",
        "kb-llama-3-1-8b-swedish",
        "KBLLAMA318BSWEDISH",
    )


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "models/../x", "..", "a\\b", "~root"])
def test_traversal_names_refused(seed_models: Path, name: str) -> None:
    with pytest.raises(ResolutionError, match="is a path, not a model name"):
        resolve_base_models([name], discover(seed_models))


def test_symlink_outside_models_dir_refused(seed_models: Path, tmp_path: Path) -> None:
    outside = write_model_dir(tmp_path / "elsewhere" / "evil-model")
    base = seed_models / "oneseek-7b-zero" / "base_models"
    (base / "evil-model").symlink_to(outside, target_is_directory=True)
    report = discover(seed_models)
    assert "evil-model" not in report.models
    [bad] = report.unusable
    assert "outside MODELS_DIR" in bad.reason
    with pytest.raises(InputError, match="outside MODELS_DIR") as info:
        resolve_base_models(["evil-model"], report)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_current_symlink_is_an_alias(seed_models: Path) -> None:
    base = seed_models / "oneseek-7b-zero" / "base_models"
    (base / "CURRENT").symlink_to("kb-llama-3-1-8b-swedish", target_is_directory=True)
    report = discover(seed_models)
    assert sorted(report.models) == ["kb-llama-3-1-8b-swedish", "llama-2-7b", "mistral-7b-instruct"]
    assert report.models["kb-llama-3-1-8b-swedish"].aliases == ("CURRENT",)
    [resolution] = resolve_base_models(["CURRENT"], report)
    assert resolution.key == "kb-llama-3-1-8b-swedish"


def test_dir_without_config_is_reported_not_dropped(seed_models: Path) -> None:
    empty = seed_models / "oneseek-7b-zero" / "base_models" / "half-copied"
    empty.mkdir()
    write_safetensors(empty / "model.safetensors", {"w": [2, 2]})
    report = discover(seed_models)
    [bad] = report.unusable
    assert bad.name == "half-copied" and bad.reason == "no config.json"
    assert len(report.models) == 3
    with pytest.raises(InputError, match=r"half-copied.*no config.json"):
        resolve_base_models(["half-copied"], report)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is empty"),
        ("[1, 2]", "does not hold a JSON object"),
    ],
)
def test_corrupt_config_named_others_listed(seed_models: Path, content: str, reason: str) -> None:
    broken = write_model_dir(seed_models / "qwen-2-5-7b")
    (broken / "config.json").write_text(content, encoding="utf-8")
    report = discover(seed_models)
    [bad] = report.unusable
    assert str(broken / "config.json") in bad.reason and reason in bad.reason
    assert len(report.models) == 3


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"config": {"auto_map": {"AutoModelForCausalLM": "x.Y"}}}, "remote code"),
        ({"config": {"architectures": ["BertForMaskedLM"]}}, "not a causal language model"),
        ({"tokenizer": False}, "no tokenizer files"),
        ({"weights": "none"}, "no weight files"),
        ({"weights": "bin"}, "--allow-pickle"),
    ],
)
def test_unusable_models_have_reasons(
    tmp_path: Path, kwargs: dict[str, object], reason: str
) -> None:
    write_model_dir(tmp_path / "m" / "bad-model", **kwargs)  # type: ignore[arg-type]
    [bad] = discover(tmp_path / "m").unusable
    assert reason in bad.reason


def test_pickle_allowed_on_request(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m" / "legacy", weights="bin")
    model = discover(tmp_path / "m", allow_pickle=True).models["legacy"]
    assert model.weight_format == "pickle"


def test_truncated_safetensors_reported(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m" / "cut")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-10])
    [bad] = discover(tmp_path / "m").unusable
    assert "truncated" in bad.reason


def test_same_key_twice_is_reported(seed_models: Path) -> None:
    write_model_dir(seed_models / "KB_Llama_3.1_8B_Swedish")
    report = discover(seed_models)
    [bad] = report.unusable
    assert "same key 'kb-llama-3-1-8b-swedish'" in bad.reason


def test_missing_models_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"MODELS_DIR .* does not exist"):
        discover(tmp_path / "nope")


def test_unusable_json_roundtrip(seed_models: Path) -> None:
    from oneseek_job.report import discovery_json

    document = discovery_json(discover(seed_models), [], None)
    assert json.loads(json.dumps(document))["models"][0]["key"] == "kb-llama-3-1-8b-swedish"


@pytest.mark.parametrize(
    "requested",
    [
        "mistral-7b-instruct-v0.2",  # more specific than anything on the volume
        "Mistral-7B-Instruct-v3",
        "llama-2-7b-chat",
        "m",  # not a whole token
        "mistr",
        "7b",  # a size alone never picks a model
        "2",
        "llama-7b",  # not a contiguous run
        "swedish-8b",  # tokens out of order
    ],
)
def test_partial_match_is_whole_tokens_of_one_key_only(seed_models: Path, requested: str) -> None:
    with pytest.raises(ResolutionError, match=r"matches no model|ambiguous") as info:
        resolve_base_models([requested], discover(seed_models))
    assert info.value.exit_code == EXIT_RESOLUTION


def test_more_specific_request_says_did_you_mean(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m" / "qwen-2-5-7b")
    report = discover(tmp_path / "m")
    with pytest.raises(ResolutionError, match=r"did you mean qwen-2-5-7b\?"):
        resolve_base_models(["Qwen-2.5-7B-Instruct"], report)
    for name in ("q", "Q", "qw", "qwen-3", "qwen-2-5-7b-instruct", "7b"):
        with pytest.raises(ResolutionError):
            resolve_base_models([name], report)
    assert resolve_base_models(["qwen-2-5-7b-"], report)[0].key == "qwen-2-5-7b"


@pytest.mark.parametrize(
    "requested",
    [
        "Qwen-2.5-7B\u0430",
        "Qwen-2.5-7B\u200b",
        "qwen\u00a02.5-7b",
        "Qwen-2.5-7B\u00e9",
        "qwen-2-5-7b\x7f",
    ],
)
def test_characters_normalization_drops_must_match_verbatim(tmp_path: Path, requested: str) -> None:
    write_model_dir(tmp_path / "m" / "qwen-2-5-7b")
    with pytest.raises(ResolutionError) as info:
        resolve_base_models([requested], discover(tmp_path / "m"))
    assert "qwen-2-5-7b" in str(info.value)


def test_non_ascii_display_name_matches_verbatim_only(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m" / "svensk-modell", model_name="Svensk-Modell-Åäö")
    report = discover(tmp_path / "m")
    [resolution] = resolve_base_models(["Svensk-Modell-Åäö"], report)
    assert (resolution.key, resolution.how, resolution.exact) == (
        "svensk-modell",
        "display name",
        True,
    )
    with pytest.raises(ResolutionError, match="display name exactly"):
        resolve_base_models(["Svensk-Modell-Aao\u0308"], report)


def test_loose_matches_are_recorded_and_warned(seed_models: Path) -> None:
    from structlog.testing import capture_logs

    report = discover(seed_models)
    with capture_logs() as logs:
        resolutions = resolve_base_models(
            ["mistral", "Mistral-7B-Instruct", "KBLlama3.18BSwedish", "llama-2-7b"], report
        )
    by_key = {r.key: r for r in resolutions}
    assert by_key["mistral-7b-instruct"].rules == ("token run", "exact key")
    assert by_key["mistral-7b-instruct"].non_exact() == [
        {"requested": "mistral", "key": "mistral-7b-instruct", "rule": "token run"}
    ]
    assert by_key["kb-llama-3-1-8b-swedish"].non_exact()[0]["rule"] == "separator-free"
    assert by_key["llama-2-7b"].exact and by_key["llama-2-7b"].non_exact() == []
    warned = {e["key"] for e in logs if e["log_level"] == "warning"}
    assert warned == {"mistral-7b-instruct", "kb-llama-3-1-8b-swedish"}


def test_key_and_display_name_of_different_models_is_ambiguous(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m" / "alpha", model_name="beta")
    write_model_dir(tmp_path / "m" / "beta")
    with pytest.raises(ResolutionError, match="ambiguous"):
        resolve_base_models(["beta"], discover(tmp_path / "m"))


def _broken_dirs(root: Path) -> dict[str, str]:
    """One broken directory per way a volume can be broken; name → expected reason."""
    import os

    cases: dict[str, str] = {}

    def model(name: str, reason: str, **kwargs: object) -> Path:
        cases[name] = reason
        return write_model_dir(root / name, **kwargs)  # type: ignore[arg-type]

    model(
        "arch-string",
        "'architectures' must be a list",
        config={"architectures": "LlamaForCausalLM"},
    )
    model("arch-int", "'architectures' must be a list", config={"architectures": 5})
    model("vocab-huge", "vocab_size", config={"vocab_size": 10**12})
    model("hidden-str", "hidden_size must be an integer", config={"hidden_size": "8"})
    model("hidden-float", "hidden_size must be an integer", config={"hidden_size": 8.5})
    model("hidden-bool", "hidden_size must be an integer", config={"hidden_size": True})
    model("type-list", "no model_type", config={"model_type": ["llama"]})
    deep = model("deep-config", "nested too deeply")
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    big_int = model("int-digits", "not valid JSON")
    (big_int / "config.json").write_text(
        '{"model_type": "llama", "vocab_size": ' + "9" * 5000 + "}"
    )
    nested = model("config-dir", "not a regular file")
    (nested / "config.json").unlink()
    (nested / "config.json").mkdir()
    (nested / "config.json" / "config.json").write_text("{}")
    shapes = model("shape-str", "bad tensor entry")
    write_safetensors(shapes / "model.safetensors", {"w": [2, 2]})
    raw = (shapes / "model.safetensors").read_bytes().replace(b"[2, 2]", b'["2",2]')
    (shapes / "model.safetensors").write_bytes(raw)
    offsets = model("offsets-lie", "bad tensor entry")
    raw = (offsets / "model.safetensors").read_bytes().replace(b'"F32"', b'"F64"')
    (offsets / "model.safetensors").write_bytes(raw)
    loop = root / "loop-model"
    loop.symlink_to(loop.name)
    cases["loop-model"] = "symlink loop"
    (root / "dangling-model").symlink_to(root / "nowhere")
    cases["dangling-model"] = "dangling symlink"
    fifo = model("fifo-weights", "not a regular file")
    (fifo / "model.safetensors").unlink()
    os.mkfifo(fifo / "model.safetensors")
    outside = write_model_dir(root.parent / "outside-files" / "x")
    linked = model("linked-weights", "symlink to outside MODELS_DIR")
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(outside / "model.safetensors")
    linked_tok = model("linked-tokenizer", "symlink to outside MODELS_DIR")
    (linked_tok / "tokenizer.json").unlink()
    (linked_tok / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    if os.geteuid() != 0:
        locked = model("locked-model", "cannot be listed")
        locked.chmod(0)
    return cases


def test_one_broken_directory_never_blocks_the_others(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model_dir(root / "good-model")
    expected = _broken_dirs(root)
    try:
        report = discover(root)
        assert list(report.models) == ["good-model"]
        reasons = {u.name: u.reason for u in report.unusable}
        assert set(reasons) == set(expected), sorted(set(expected) ^ set(reasons))
        for name, fragment in expected.items():
            assert fragment in reasons[name], (name, reasons[name])
        [resolution] = resolve_base_models(["good-model"], report)
        assert resolution.key == "good-model"
        with pytest.raises(InputError, match="symlink loop"):
            resolve_base_models(["loop-model"], report)
    finally:
        if (root / "locked-model").exists():
            (root / "locked-model").chmod(0o755)
