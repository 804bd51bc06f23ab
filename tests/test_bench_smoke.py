"""The benchmarks run end to end at minimal sizes (no timing assertions: CI machines vary)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import common, discovery, startup, train_throughput  # noqa: E402


def test_discovery_bench_finds_every_model_and_resolves_each_request(tmp_path: Path) -> None:
    result = discovery.main(
        ["--models", "40", "--repeats", "1", "--no-cli", "--results-dir", str(tmp_path)]
    )
    assert result["found"] == {"usable": 40, "unusable": 2}
    assert len(result["requests"]) == 4 and len(set(result["requests"].values())) == 4
    written = json.loads((tmp_path / "discovery.json").read_text())
    assert written["machine"]["cpu_cores"] >= 1
    assert written["goals"][0]["benchmark"] == "discovery"


def test_startup_bench_reports_no_torch_import(tmp_path: Path) -> None:
    result = startup.main(["--repeats", "1", "--results-dir", str(tmp_path)])
    assert result["commands"]["help"]["exit_codes"] == [0]
    assert result["commands"]["discover"]["exit_codes"] == [0]
    # The wrapper really reports modules: --help imports no heavy library at all.
    assert result["commands"]["help"]["heavy_imports"] == []
    assert result["torch_free"] is True
    assert (tmp_path / "startup.json").is_file()


def test_train_throughput_quick_runs_all_three_sides(tmp_path: Path) -> None:
    result = train_throughput.main(["--quick", "--results-dir", str(tmp_path)])
    assert result is not None
    runs = result["runs"]
    assert set(runs) == set(train_throughput.METHODS)
    for run in runs.values():
        assert run["steps"] == result["spec"]["steps"]
        assert run["real_tokens"] > 0 and run["tokens_per_second"] > 0
        assert math.isfinite(run["val_loss"]) and run["peak_memory_bytes"] > 0
        assert run["fed_tokens"] >= run["real_tokens"]
    # Packing feeds (almost) no padding; per-batch padding of variable-length records does.
    assert runs["ours"]["padding_fraction"] < runs["hf_default"]["padding_fraction"]
    assert {g.metric for g in result["goals"]} >= {
        "real tokens/s ours÷hf_default (cpu)",
        "real tokens/s ours÷hf_grouped (cpu)",
        "real tokens/s ours÷hf_flatten (cpu)",
    }
    # Flattening feeds no padding either; every comparison reports its range over runs.
    assert runs["hf_flatten"]["padding_fraction"] == 0.0
    for name in train_throughput.BASELINES:
        ratio = result["comparisons"][f"ours_vs_{name}"]
        assert ratio["ratio_min"] <= ratio["tokens_per_second_ratio"] <= ratio["ratio_max"]
    assert (tmp_path / "train_throughput_quick.json").is_file()


def test_gpu_mode_without_cuda_fails_with_a_clear_message() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the refusal path cannot be exercised")
    with pytest.raises(SystemExit) as excinfo:
        train_throughput.main(["--gpu"])
    assert "needs a CUDA device" in str(excinfo.value)


def test_flops_per_token_matches_the_8b_shape() -> None:
    shape = {**train_throughput.MODEL_SHAPES["8b"]}
    flops = train_throughput.flops_per_token(shape, seq_len=2048, lora_r=16)
    # Llama-3.1-8B: 8.03B parameters, of which the 525M-entry embedding is a lookup.
    assert 7.4e9 < flops["matmul_params"] < 7.6e9
    assert 40e6 < flops["lora_params"] < 45e6  # PEFT reports 41.9M for r16 on all 7 projections
    assert flops["flops_per_token"] == (
        4 * flops["matmul_params"] + 6 * flops["lora_params"] + flops["attention_flops"]
    )


def test_goal_orientation_and_table() -> None:
    fast = common.Goal("x", "rate", 3.0, 2.0, higher_is_better=True)
    slow = common.Goal("x", "seconds", 2.0, 1.0, higher_is_better=False)
    assert fast.met and fast.ratio == 1.5
    assert not slow.met and slow.ratio == 0.5
    table = common.format_table(["a", "b"], [["row", 1.5], ["longer row", 1234.0]])
    assert table.splitlines()[0].startswith("a") and "1,234" in table
