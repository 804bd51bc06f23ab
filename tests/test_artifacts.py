"""The seed's JSON files: field names and values a reader of the original trainer expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import documents, layout, rundocs
from oneseek_job.errors import InputError
from tests.fake_run import KB, QWEN, RUN_ID, FakeRun, make_run

SEED_PTH = "oneseek-7b-zero-v1.0-kb-llama-3-1-8b-swedish.pth"
SEED_ADAPTER = "kb-llama-3-1-8b-swedish-adapter"


def load(run: FakeRun, name: str) -> dict[str, Any]:
    return json.loads(run.path(name).read_bytes())  # type: ignore[no-any-return]


@pytest.fixture
def single(tmp_path: Path) -> FakeRun:
    return make_run(tmp_path / "artifacts", (KB,))


@pytest.fixture
def multi(tmp_path: Path) -> FakeRun:
    return make_run(tmp_path / "artifacts", (KB, QWEN))


def test_layout_names_are_the_seeds() -> None:
    assert layout.weights_file_name("1.0", KB.key) == SEED_PTH
    assert layout.adapter_dir_name(KB.key) == SEED_ADAPTER
    assert layout.weights_metadata_name("1.0") == "oneseek-7b-zero-v1.0.json"
    assert layout.run_prefix(RUN_ID) == f"oneseek-certified/{RUN_ID}/"


def test_single_model_files_match_the_seed(single: FakeRun) -> None:
    weights = load(single, "weights/oneseek-7b-zero-v1.0.json")
    assert weights["version"] == "OneSeek-7B-Zero.v1.0"
    assert weights["trainingType"] == "single-model"
    assert weights["multiModelMode"] is False
    assert weights["baseModels"] == ["KB-Llama-3.1-8B-Swedish"]
    assert weights["modelSpecificWeights"] == {KB.key: SEED_PTH}
    assert weights["adapters"] == [f"lora_adapters/{SEED_ADAPTER}"]
    assert weights["createdAt"] == KB.finished_at
    for field in ("samplesProcessed", "isCurrent", "metrics", "config"):
        assert field in weights

    dna = load(single, "oneseek_dna.json")
    assert dna["model_name"] == "OneSeek-7B-Zero"
    assert dna["baseModels"] == [KB.key]
    assert dna["final_weights"] == {KB.key: 1.0}
    for field in ("dna", "version", "timestamp", "categories", "immutable_hash"):
        assert field in dna

    results = load(single, "training_results.json")
    assert results["baseModels"] == [KB.key]
    assert list(results["trained_models"].keys()) == [KB.key]
    assert results["trained_models"][KB.key]["final_val_loss"] == KB.final_val_loss
    assert results["trained_models"][KB.key]["base_val_loss"] == KB.base_val_loss
    for field in ("dna", "version", "dataset", "samples", "epochs", "final_loss", "metrics"):
        assert field in results
    assert results["duration_seconds"] >= 0

    ledger = load(single, "ledger_proof.json")
    assert ledger["baseModels"] == [KB.key]
    assert ledger["final_weights"] == {KB.key: 1.0}
    for field in (
        "event",
        "model",
        "dna",
        "version",
        "dataset_hashes",
        "immutable_hash",
        "timestamp",
        "signer_public_key",
        "signature",
        "entries",
    ):
        assert field in ledger
    assert ledger["dna"] == dna["dna"] == results["dna"]

    live = load(single, "live_metrics.json")
    assert live["val_losses"] == {KB.key: KB.final_val_loss}
    assert live["progress_percent"] == 100.0
    assert set(live) == {
        "type",
        "epoch",
        "total_epochs",
        "step",
        "total_steps",
        "val_losses",
        "weights",
        "total_loss",
        "progress_percent",
        "timestamp",
    }


def test_multi_model_uses_keys_and_display_names(multi: FakeRun) -> None:
    weights = load(multi, "weights/oneseek-7b-zero-v1.0.json")
    assert weights["trainingType"] == "dna-v2"
    assert weights["multiModelMode"] is True
    assert weights["baseModels"] == ["KB-Llama-3.1-8B-Swedish", "Qwen-2.5-7B"]
    assert set(weights["modelSpecificWeights"]) == {KB.key, QWEN.key}
    dna = load(multi, "oneseek_dna.json")
    assert dna["final_weights"] == {KB.key: 0.5, QWEN.key: 0.5}
    assert sorted(load(multi, "training_results.json")["trained_models"]) == [KB.key, QWEN.key]
    assert load(multi, "live_metrics.json")["val_losses"] == {
        KB.key: KB.final_val_loss,
        QWEN.key: QWEN.final_val_loss,
    }
    # Certified when the last model finished, taken from the markers.
    assert dna["timestamp"] == max(KB.finished_at, QWEN.finished_at)


def test_model_that_did_not_beat_its_base_is_flagged(multi: FakeRun) -> None:
    assert QWEN.final_val_loss > QWEN.base_val_loss  # the fixture's regressing model
    results = load(multi, "training_results.json")
    assert results["trained_models"][QWEN.key]["certified"] is False
    assert results["trained_models"][QWEN.key]["improved"] is False
    assert results["trained_models"][KB.key]["certified"] is True
    for name in ("training_results.json", "oneseek_dna.json", "ledger_proof.json"):
        document = load(multi, name)
        assert document["status"] == "partially-certified", name
        assert document["not_certified"] == [QWEN.key], name
    weights = load(multi, "weights/oneseek-7b-zero-v1.0.json")
    assert weights["notCertified"] == [QWEN.key]
    assert load(multi, "ledger_proof.json")["event"] == "training_partially_certified"


def test_allow_regression_certifies_but_still_records_it(tmp_path: Path) -> None:
    run = make_run(tmp_path / "artifacts", (QWEN,), allow_regression=True)
    results = load(run, "training_results.json")
    assert results["status"] == "certified"
    assert results["trained_models"][QWEN.key]["improved"] is False
    assert results["trained_models"][QWEN.key]["val_loss_delta"] > 0


def test_nothing_certified(tmp_path: Path) -> None:
    run = make_run(tmp_path / "artifacts", (QWEN,))
    assert load(run, "oneseek_dna.json")["status"] == "not-certified"
    assert load(run, "ledger_proof.json")["event"] == "training_not_certified"


def test_files_parse_back_into_their_models(multi: FakeRun) -> None:
    parsed = documents.WeightsMetadata.model_validate_json(
        multi.path("weights/oneseek-7b-zero-v1.0.json").read_bytes()
    )
    assert parsed.model_specific_weights[KB.key] == SEED_PTH
    documents.DnaDocument.model_validate_json(multi.path("oneseek_dna.json").read_bytes())
    training = documents.TrainingResults.model_validate_json(
        multi.path("training_results.json").read_bytes()
    )
    assert training.trained_models[KB.key].display_name == KB.display_name
    ledger = documents.LedgerProof.model_validate_json(multi.path("ledger_proof.json").read_bytes())
    assert [e.event for e in ledger.entries] == [
        "run_started",
        "inputs_hashed",
        "model_trained",
        "model_trained",
        "artifacts_uploaded",
        "certified",
    ]
    # model_trained entries follow the order the models finished in.
    assert [e.data["model"] for e in ledger.entries[2:4]] == [QWEN.key, KB.key]
    documents.LiveMetrics.model_validate_json(multi.path("live_metrics.json").read_bytes())


def test_missing_weights_file_in_marker_is_refused(multi: FakeRun) -> None:
    broken = [
        r.model_copy(update={"files": {k: v for k, v in r.files.items() if ".pth" not in k}})
        if r.key == KB.key
        else r
        for r in multi.results
    ]
    with pytest.raises(InputError, match=f"model {KB.key}: done marker lists no weights/"):
        rundocs.build_run_files(broken, multi.info, signing_key=None)
    with pytest.raises(InputError):
        rundocs.build_run_files([], multi.info, signing_key=None)


# ----------------------------------------------------------------------------- final weights


def test_final_weights_priority() -> None:
    trained = [KB.key, QWEN.key]
    assert rundocs.final_weights_for(trained, ["Mistral-7B"], ["llama"]) == {
        KB.key: 0.5,
        QWEN.key: 0.5,
    }
    assert rundocs.final_weights_for([], ["KB-Llama-3.1-8B-Swedish", " "], ["llama"]) == {
        KB.key: 1.0
    }
    assert rundocs.final_weights_for([], [], ["Mistral-7B", "llama-2", "Qwen-2.5-7B"]) == {
        "mistral-7b": pytest.approx(1 / 3),
        "llama-2": pytest.approx(1 / 3),
        QWEN.key: pytest.approx(1 / 3),
    }
    assert rundocs.final_weights_for([], [], []) == {layout.DEFAULT_MODEL_KEY: 1.0}
    assert layout.DEFAULT_MODEL_KEY == "unknown-model"


# ----------------------------------------------------------------------------- live metrics


def test_live_metrics_helper() -> None:
    data = documents.live_metrics(
        epoch=1,
        total_epochs=3,
        step=25,
        total_steps=200,
        val_losses={KB.key: 2.75},
        weights={KB.key: 1.0},
        total_loss=2.5,
        timestamp="2025-11-23T00:13:00+00:00",
    )
    document = json.loads(data)
    assert document["progress_percent"] == 12.5
    assert document["val_losses"] == {KB.key: 2.75}
    assert document["type"] == "live_metrics"
    early = documents.live_metrics(
        epoch=0,
        total_epochs=3,
        step=0,
        total_steps=None,
        val_losses={KB.key: None},
        weights={KB.key: 1.0},
        total_loss=None,
        timestamp="2025-11-23T00:12:40+00:00",
    )
    assert json.loads(early)["progress_percent"] == 0.0
