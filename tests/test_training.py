"""The LoRA engine on tiny real models: schedule, packing masks, training, artifacts, resume."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.data import Record, format_prompt
from oneseek_job.errors import InputError, Preempted
from oneseek_job.signals import STOP
from oneseek_job.training import TARGET_MODULES, lr_at, train_model

sys.path.insert(0, str(Path(__file__).parent))
import _tiny

ROOT = Path(__file__).resolve().parents[1]
TOWNS = ["Stockholm", "Göteborg", "Malmö", "Uppsala", "Umeå", "Luleå", "Lund", "Visby"]


def make_records(n: int = 40) -> list[Record]:
    out = []
    for i in range(n):
        town = TOWNS[i % len(TOWNS)]
        out.append(
            Record(
                format_prompt(f"Var ligger {town} nummer {i}?"),
                f" {town} ligger i Sverige.",
                i + 1,
                "t",
            )
        )
    return out


def settings(**over: Any) -> TrainSettings:
    base: dict[str, Any] = dict(
        seq_len=64,
        batch_tokens=128,
        epochs=2,
        learning_rate=3e-3,
        log_every=1,
        checkpoint_every=1000,
        warmup_ratio=0.1,
        seed=3,
    )
    base.update(over)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny.build_model(tmp_path_factory.mktemp("models") / "tiny-llama", architecture="llama")


def run(model: Path, out: Path, train: TrainSettings | None = None, **kw: Any):
    return train_model(
        key="tiny",
        model_path=model,
        records=kw.pop("records", make_records()),
        lora=kw.pop("lora", LoraSettings(r=8, alpha=16, dropout=0.05)),
        train=train or settings(),
        adapter_dir=out / "adapter",
        weights_path=out / "weights" / "tiny.pth",
        checkpoint_dir=out / "ckpt",
        device="cpu",
        **kw,
    )


# --------------------------------------------------------------------------- schedule


def test_lr_schedule_warmup_then_decay() -> None:
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1.0)
    cosine = [lr_at(s, schedule="cosine", **kw) for s in range(100)]
    assert all(a < b for a, b in itertools.pairwise(cosine[:11])), "warmup rises"
    assert cosine[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(cosine[10:])), "then decays"
    assert lr_at(100, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(55, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(55, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_at(32.5, schedule="linear", **kw) == pytest.approx(0.75)  # type: ignore[arg-type]
    assert lr_at(90, schedule="constant", **kw) == 1.0
    with pytest.raises(ValueError):
        lr_at(50, schedule="step", **kw)


def test_target_modules_cover_the_seed_architectures() -> None:
    for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"):
        modules = TARGET_MODULES[arch]
        assert any("o_proj" in m for m in modules) and any("down_proj" in m for m in modules)


# --------------------------------------------------------------------------- packing mask


def test_packed_documents_do_not_attend_across_boundaries(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    gen = torch.Generator().manual_seed(0)
    doc_a = torch.randint(5, 200, (1, 20), generator=gen)
    doc_b = torch.randint(5, 200, (1, 12), generator=gen)
    packed = torch.cat([doc_a, doc_b], dim=1)
    positions = torch.cat([torch.arange(20), torch.arange(12)]).unsqueeze(0)
    with torch.no_grad():
        alone = model(input_ids=doc_b, use_cache=False).logits
        with_boundary = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        leaky = model(input_ids=packed, use_cache=False).logits
    torch.testing.assert_close(with_boundary[:, 20:], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_boundary[:, :20], leaky[:, :20], rtol=1e-5, atol=1e-5)
    # Without restarting positions the second document does see the first (the test can fail).
    assert not torch.allclose(leaky[:, 20:], alone, atol=1e-3)


# --------------------------------------------------------------------------- training + artifacts


def test_training_improves_and_artifacts_reload(tiny_llama: Path, tmp_path: Path) -> None:
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    events: list[dict[str, Any]] = []
    outcome = run(tiny_llama, tmp_path, on_progress=events.append)

    assert outcome.final_val_loss < outcome.base_val_loss and outcome.improved
    assert outcome.steps == events[-1]["total_steps"] and outcome.resumed_from_step is None
    assert outcome.samples == 36 and outcome.train_tokens > 0 and outcome.epochs == 2
    assert [e["step"] for e in events[:3]] == [1, 2, 3]
    assert {"loss", "lr", "tokens_per_second", "eta_seconds", "epoch", "total_epochs"} <= events[
        0
    ].keys()
    assert events[-1]["val_loss"] == pytest.approx(outcome.final_val_loss)

    adapter_dir = tmp_path / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == set(TARGET_MODULES["llama"])
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert (adapter_dir / "tokenizer.json").is_file()

    pth = torch.load(outcome.weights_path, weights_only=True)
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert pth.keys() == saved.keys() and len(pth) == 2 * 7 * 2  # A+B, 7 modules, 2 layers
    for name, tensor in saved.items():
        assert torch.equal(pth[name], tensor)

    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        adapted = reloaded(input_ids=ids).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-4)
    # The .pth is the same adapter: put it onto a fresh base and compare logits.
    fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter_dir)
    for p in get_peft_model_state_dict(fresh).values():
        p.data.zero_()
    set_peft_model_state_dict(fresh, pth)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(input_ids=ids).logits, adapted, rtol=0, atol=0)

    # Finished state is kept so a retry after a failed upload does not train again.
    assert not list((tmp_path / "ckpt").glob("step-*"))
    shutil.rmtree(adapter_dir)
    again = run(tiny_llama, tmp_path, on_progress=events.append)
    assert again.final_val_loss == outcome.final_val_loss
    assert torch.equal(
        load_file(str(adapter_dir / "adapter_model.safetensors"))[next(iter(saved))],
        saved[next(iter(saved))],
    )


def test_qwen2_architecture_trains(tmp_path: Path) -> None:
    model = _tiny.build_model(tmp_path / "tiny-qwen", architecture="qwen2", seed=1)
    outcome = run(
        model,
        tmp_path / "out",
        settings(max_steps=4, gradient_checkpointing=True, micro_batch_size=2, batch_tokens=256),
    )
    assert outcome.steps == 4
    assert json.loads((tmp_path / "out/adapter/adapter_config.json").read_text())["target_modules"]


# --------------------------------------------------------------------------- resume


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "weights" / "tiny.pth", weights_only=True)


@pytest.fixture(scope="module")
def reference(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("reference")
    run(tiny_llama, out, settings(checkpoint_every=3))
    return _adapter(out)


def test_preempted_then_resumed_equals_uninterrupted(
    tiny_llama: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    flag = STOP

    def stop_at_seven(event: dict[str, Any]) -> None:
        if event["step"] == 7:
            flag.set()

    try:
        with pytest.raises(Preempted) as info:
            run(tiny_llama, tmp_path, settings(checkpoint_every=3), on_progress=stop_at_seven)
    finally:
        flag.clear()
    assert info.value.exit_code == 75
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("step-*"))
    assert kept == ["step-00000006", "step-00000007"], "the last two checkpoints are kept"
    assert not (tmp_path / "weights" / "tiny.pth").exists()

    # The newest checkpoint is corrupt: resume falls back to step 6 and still ends equal.
    (tmp_path / "ckpt" / "step-00000007" / "adapter.safetensors").write_bytes(b"garbage")
    outcome = run(tiny_llama, tmp_path, settings(checkpoint_every=3))
    assert outcome.resumed_from_step == 6
    resumed = _adapter(tmp_path)
    assert resumed.keys() == reference.keys()
    for name in reference:  # bit-identical on CPU
        assert torch.equal(resumed[name], reference[name]), name


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_training import run, settings
    from oneseek_job.errors import Preempted
    from oneseek_job.signals import install_sigterm_handler
    install_sigterm_handler()  # what cli.main() does at process start

    def slow(event):
        if event["step"] >= 3:
            Path({ready!r}).write_text(str(event["step"]))
            time.sleep(0.3)

    try:
        run(Path({model!r}), Path({out!r}), settings(checkpoint_every=3), on_progress=slow)
    except Preempted:
        sys.exit(75)
    sys.exit(0)
    """
)


def test_sigterm_saves_checkpoint_exits_75_and_resume_matches(
    tiny_llama: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    ready = tmp_path / "ready"
    script = SIGTERM_SCRIPT.format(
        tests=str(Path(__file__).parent), ready=str(ready), model=str(tiny_llama), out=str(tmp_path)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "training subprocess never reached step 3"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 75
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list((tmp_path / "ckpt").glob("step-*"))
    outcome = run(tiny_llama, tmp_path, settings(checkpoint_every=3))
    assert outcome.resumed_from_step is not None and outcome.resumed_from_step >= 3
    resumed = _adapter(tmp_path)
    for name in reference:  # bit-identical on CPU
        assert torch.equal(resumed[name], reference[name]), name


# --------------------------------------------------------------------------- pre-flight


def test_unknown_architecture_names_the_override(tmp_path: Path) -> None:
    from transformers import OPTConfig

    OPTConfig(
        hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2
    ).save_pretrained(tmp_path / "opt")
    with pytest.raises(InputError, match=r"'opt'.*ONESEEK_LORA_TARGET_MODULES"):
        run(tmp_path / "opt", tmp_path / "out")


def test_missing_tokenizer_and_config_are_input_errors(tiny_llama: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, bare / name)
    with pytest.raises(InputError, match="no usable tokenizer"):
        run(bare, tmp_path / "out")
    with pytest.raises(InputError, match=r"no config\.json"):
        run(tmp_path / "nothing", tmp_path / "out")


def test_pickle_only_weights_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for file in tiny_llama.iterdir():
        if file.name.startswith("tokenizer") or file.name == "config.json":
            shutil.copy(file, pickled / file.name)
    with pytest.raises(InputError, match="safetensors"):
        run(pickled, tmp_path / "out")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_checkpointed_training(tiny_llama: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    events: list[dict[str, Any]] = []
    outcome = train_model(
        key="tiny",
        model_path=tiny_llama,
        records=make_records(),
        lora=LoraSettings(r=8, alpha=16),
        train=settings(gradient_checkpointing=True, micro_batch_size=2, batch_tokens=256),
        adapter_dir=tmp_path / "adapter",
        weights_path=tmp_path / "tiny.pth",
        checkpoint_dir=tmp_path / "ckpt",
        on_progress=events.append,
    )
    assert outcome.improved
    assert events[0]["gpu_memory_gb"] > 0
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[1, 40, 50, 60]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, tmp_path / "adapter")(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


# --------------------------------------------------------------------------- compile round trip


def _peft(model_path: Path, seed: int = 0) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGET_MODULES["llama"])
    model = get_peft_model(base, config)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B so the adapter changes the logits
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_compiled_model_checkpoint_keys_round_trip(tiny_llama: Path, tmp_path: Path) -> None:
    """A checkpoint of a torch.compile'd model loads into a bare one (keys unwrapped)."""
    from oneseek_job.training import checkpoint as ckpt

    trained = _peft(tiny_llama, seed=1)
    compiled = torch.compile(trained)  # wrapping is lazy: nothing is compiled here
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad])
    ckpt.save_checkpoint(
        tmp_path, step=3, position=3, epoch=0, model=compiled, optimizer=optimizer,
        rng=ckpt.rng_state(), meta={"fingerprint": "f"},
    )  # fmt: skip
    resume = ckpt.load_latest(tmp_path, "f")
    assert resume is not None
    assert not [k for k in resume.adapter if "_orig_mod" in k]
    fresh = _peft(tiny_llama, seed=2)
    ckpt.load_adapter_state(fresh, resume.adapter, source="test")
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)
    # Old checkpoints with the wrapper prefix still load; foreign keys fail loudly.
    prefixed = {f"_orig_mod.{k}": v for k, v in resume.adapter.items()}
    ckpt.load_adapter_state(_peft(tiny_llama), prefixed, source="old")
    with pytest.raises(InputError, match="does not match"):
        ckpt.load_adapter_state(fresh, {"nothing.lora_A.weight": torch.zeros(1)}, source="x")
    half = dict(list(resume.adapter.items())[:4])
    with pytest.raises(InputError, match="missing"):
        ckpt.load_adapter_state(fresh, half, source="half")


def test_compile_preempt_resume_publish_reproduces_trained_logits(
    tiny_llama: Path, tmp_path: Path, reference: dict[str, torch.Tensor], monkeypatch: Any
) -> None:
    """checkpoint → resume → final → .pth → PeftModel.from_pretrained, with compile on.

    torch.compile with the eager backend: dynamo wraps and traces the model exactly as in
    production (the ``_orig_mod.`` wrapper is what lost the adapter), without Inductor's
    C++ build, which takes minutes on CI's CPUs.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend="eager"))
    flag = STOP

    def stop_at_five(event: dict[str, Any]) -> None:
        if event["step"] == 5:
            flag.set()

    try:
        with pytest.raises(Preempted):
            run(
                tiny_llama,
                tmp_path,
                settings(checkpoint_every=3, compile=True),
                on_progress=stop_at_five,
            )
    finally:
        flag.clear()
    outcome = run(tiny_llama, tmp_path, settings(checkpoint_every=3, compile=True))
    assert outcome.resumed_from_step == 5
    pth = _adapter(tmp_path)
    assert pth.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(pth[name], reference[name], rtol=1e-4, atol=1e-6)
    ids = torch.tensor([[1, 40, 50, 60, 70, 80]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        published = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids)
    assert not torch.allclose(published.logits, before, atol=1e-3), "the adapter was lost"
    # A retry after a failed upload republishes from final/ the same adapter.
    shutil.rmtree(tmp_path / "adapter")
    again = run(tiny_llama, tmp_path, settings(checkpoint_every=3, compile=True))
    assert again.final_val_loss == outcome.final_val_loss
    republished = _adapter(tmp_path)
    for name in pth:
        assert torch.equal(republished[name], pth[name])


# --------------------------------------------------------------------------- serving-ready


def test_adapter_names_a_stable_base_model_and_passes_the_vllm_rules(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from oneseek_job.training.adapters import check_vllm_compatible, stable_base_model_id

    hub = tmp_path / "models" / "kb-llama"
    shutil.copytree(tiny_llama, hub)
    config = json.loads((hub / "config.json").read_text())
    config["_name_or_path"] = "KBLab/kb-llama-3.1-8b-swedish"
    (hub / "config.json").write_text(json.dumps(config))
    run(hub, tmp_path / "out", settings(max_steps=2))
    adapter = tmp_path / "out" / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "KBLab/kb-llama-3.1-8b-swedish"
    readme = (adapter / "README.md").read_text()
    assert str(tmp_path) not in readme and "KBLab/kb-llama-3.1-8b-swedish" in readme
    assert check_vllm_compatible(adapter) == []
    # A local path in _name_or_path is never used; the display name (or a configured id) is.
    config["_name_or_path"] = str(hub)
    (hub / "config.json").write_text(json.dumps(config))
    assert stable_base_model_id(hub) == "kb-llama"
    assert stable_base_model_id(hub, "org/model") == "org/model"
    # Each rule of vLLM's loader, broken one at a time, is reported.
    for change, reason in [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"r": 1024}, "rank 1024"),
        ({"peft_type": "LOHA"}, "peft_type"),
        ({"bias": "all"}, "bias"),
        ({"base_model_name_or_path": "/models/kb"}, "local path"),
    ]:
        broken = tmp_path / f"broken-{reason.split()[0]}"
        shutil.copytree(adapter, broken)
        (broken / "adapter_config.json").write_text(json.dumps({**saved, **change}))
        assert any(reason in p for p in check_vllm_compatible(broken)), reason
    (broken / "adapter_model.safetensors").unlink()
    assert any("safetensors" in p for p in check_vllm_compatible(broken))


# --------------------------------------------------------------------------- memory estimate


@pytest.mark.parametrize(
    ("arch", "hidden", "micro_batch", "checkpointing", "dropout"),
    [
        ("llama", 256, 2, False, 0.05),  # SwiGLU + GQA + a LoRA-dropout copy per module
        ("qwen2", 128, 4, True, 0.0),  # checkpointing, no dropout, a bigger share of logits
    ],
)
def test_memory_estimate_is_within_25_percent_of_the_measured_peak(
    tmp_path: Path, arch: str, hidden: int, micro_batch: int, checkpointing: bool, dropout: float
) -> None:
    from oneseek_job import demo

    model = demo.build_tiny_model(
        tmp_path / arch, architecture=arch, display_name=arch, hidden_size=hidden, num_layers=4
    )
    env = {
        **os.environ,
        # Without a fixed threshold glibc keeps freed blocks and RSS overstates live memory.
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
    }
    args = [str(model), str(micro_batch), "512", str(int(checkpointing)), str(dropout)]
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_memory_probe.py"), *args],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT, timeout=300,
    ).stdout  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    ratio = result["estimate"] / result["measured"]
    assert 0.75 <= ratio <= 1.25, result


# --------------------------------------------------------------------------- loss


def test_chunked_cross_entropy_is_exact_in_value_and_gradient() -> None:
    import torch.nn.functional as F

    from oneseek_job.training.loss import chunk_rows, chunked_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1000, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 1000, (37,), generator=gen)
    whole = F.cross_entropy(logits, targets, reduction="sum")
    (grad_whole,) = torch.autograd.grad(whole, logits)
    chunked = chunked_cross_entropy(logits, targets, rows=5)  # 8 chunks, the last short
    (grad_chunked,) = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, whole.float() if chunked.dtype != whole.dtype else whole)
    torch.testing.assert_close(grad_chunked, grad_whole)
    assert chunk_rows(128_256) == 523 and chunk_rows(10) > 10**6


def test_stop_requested_before_training_exits_75_without_loading(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A SIGTERM during discovery or S3 checks (the flag set early) stops at the start."""
    from oneseek_job.signals import StopFlag

    early = StopFlag()
    early.set()
    with pytest.raises(Preempted, match="before training"):
        run(tiny_llama, tmp_path, stop=early)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "adapter").exists()


def test_cli_installs_the_sigterm_handler_at_process_start(tmp_path: Path) -> None:
    """As PID 1 a process without a handler drops SIGTERM; main() installs one first."""
    script = (
        "import signal, sys\n"
        "from oneseek_job import cli\n"
        "from oneseek_job.signals import STOP\n"
        "sys.argv = ['oneseek-job', 'version']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "signal.raise_signal(signal.SIGTERM)\n"  # would kill the process without a handler
        "print('stop flag', STOP.is_set)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "stop flag True" in done.stdout, done.stderr[-500:]
