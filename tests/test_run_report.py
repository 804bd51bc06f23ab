"""The HTML run report: content and self-containment, parsed by the standard library's HTML
parser (the browser test in tests/test_run_report_browser.py renders a real run)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

from oneseek_job.run_report import Check, render_html, run_view

KB, QWEN = "kb-llama-3-1-8b-swedish", "qwen-2-5-7b"


def _model(base: float, final: float, *, certified: bool) -> dict[str, Any]:
    return {
        "base_val_loss": base,
        "final_val_loss": final,
        "final_train_loss": final - 0.1,
        "val_loss_delta": final - base,
        "improved": final < base,
        "certified": certified,
        "display_name": "KB-Llama-3.1-8B-Swedish <b>",
        "architecture": "LlamaForCausalLM",
        "steps": 12,
        "epochs": 1,
        "samples": 180,
        "train_tokens": 23456,
        "duration_seconds": 75.5,
    }


def documents(**results_extra: Any) -> dict[str, bytes]:
    results = {
        "dna": "OneSeek-7B-Zero.v1.0.sv.dscivic.0123abcd.89abcdef",
        "version": "1.0",
        "dataset": "civic.jsonl",
        "dataset_files": ["civic.jsonl"],
        "dataset_sha256": "ab" * 32,
        "samples": 180,
        "status": "partially-certified",
        "timestamp": "2026-11-30T08:00:00+00:00",
        "duration_seconds": 151.0,
        "trained_models": {
            KB: _model(3.2, 2.4, certified=True),
            QWEN: _model(3.0, 3.1, certified=False),
        },
        **results_extra,
    }
    weights = {"config": {"hyperparameters": {"lora": {"r": 16}, "train": {"seq_len": 256}}}}
    return {
        "training_results.json": json.dumps(results).encode(),
        "weights/oneseek-7b-zero-v1.0.json": json.dumps(weights).encode(),
    }


def history(steps: int) -> str:
    lines = [
        json.dumps({"kind": "train", "step": s, "loss": 3.0 - 0.05 * s, "lr": 1e-3})
        for s in range(2, steps + 1, 2)
    ]
    lines.append(json.dumps({"kind": "final", "tokens_per_second": 1234.5, "hardware": {}}))
    return "\n".join(lines)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_report_shows_curves_verdicts_resolution_and_numbers() -> None:
    view = run_view(
        documents(),
        {KB: history(12)},
        run_id="run-x",
        signed=True,
        signer="sha256:feedbeef",
    )
    page = parse(render_html(view))
    text = " ".join(page.text)
    charts = [a for t, a in page.tags if t == "svg"]
    assert [(a["data-chart"], a["data-model"]) for a in charts] == [
        ("loss", KB),
        ("val", KB),
        ("loss", QWEN),
        ("val", QWEN),
    ]
    # KB: 6 train points + base line + 1 adapter validation point
    points = [a for t, a in page.tags if t == "circle"]
    assert len([p for p in points if p.get("class") == "series-val"]) == 2  # one per model
    assert any(a.get("class") == "series-train" for t, a in page.tags if t == "polyline")
    assert "No training history was recorded for this model." in text  # qwen has none
    assert "certified: adapter beats its base" in text
    assert "not certified: adapter does not beat its base" in text
    assert "OneSeek-7B-Zero.v1.0.sv.dscivic.0123abcd.89abcdef" in text
    assert "sha256:feedbeef" in text and "23,456" in text and "1,234" in text
    # resolution: not recorded by this run -> "exact", marked as assumed
    assert "(assumed: not recorded)" in text
    assert "lora.r" in text


def test_recorded_resolution_rules_are_shown() -> None:
    docs = documents()
    results = json.loads(docs["training_results.json"])
    results["trained_models"][KB]["resolution"] = [
        {"requested": "KB-Llama-3.1-8B-Swedish", "rule": "display name", "exact": True},
        {"requested": "kb-llama", "rule": "token run", "exact": False},
    ]
    docs["training_results.json"] = json.dumps(results).encode()
    page = render_html(run_view(docs, {}, run_id="r", signed=False, signer=None))
    cells = " | ".join(s.strip() for s in parse(page).text if s.strip())
    assert f"KB-Llama-3.1-8B-Swedish | {KB} | display name" in cells
    assert f"kb-llama | {KB} | token run" in cells
    # the loose match is flagged, the exact one is not
    assert page.count('class="badge warn">token run') == 1
    assert 'class="badge ok">display name' in page
    # qwen's entry predates recording: its display name, "exact", marked as assumed
    assert f"{QWEN} | exact | (assumed: not recorded)" in cells
    assert "unsigned" in cells


def test_page_fetches_nothing_and_escapes_every_value() -> None:
    view = run_view(documents(), {KB: history(4)}, run_id="r", signed=False, signer=None)
    page = render_html(view)
    parsed = parse(page)
    # the display name "<b>" stays text, never markup
    assert "<b>" not in page and "&lt;b&gt;" in page
    assert not [t for t, _ in parsed.tags if t in {"script", "link", "img", "iframe", "object"}]
    for _tag, attrs in parsed.tags:
        for name, value in attrs.items():
            assert name not in {"src", "href"}, (name, value)
    csp = [a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in (csp[0] or "")


def test_report_is_a_pure_function_of_the_documents() -> None:
    a = render_html(run_view(documents(), {KB: history(6)}, run_id="r", signed=True, signer="k"))
    b = render_html(run_view(documents(), {KB: history(6)}, run_id="r", signed=True, signer="k"))
    assert a == b


def test_a_fresh_verification_is_shown_with_failures() -> None:
    checks = [Check("manifest", True, "3 files"), Check("signature", False, "wrong key")]
    page = render_html(
        run_view(documents(), {}, run_id="r", signed=True, signer="k", verification=checks)
    )
    text = " ".join(parse(page).text)
    assert "verification FAILED" in text and "wrong key" in text
    ok = render_html(
        run_view(documents(), {}, run_id="r", signed=True, signer="k", verification=checks[:1])
    )
    assert "verification passed" in ok
