"""The run report in a real browser: headless Chromium loads it from disk, offline, and the
DevTools protocol tells what it rendered and every request it made.

The demo run's own report goes through the same check in tests/test_telemetry_job.py.
"""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from oneseek_job.run_report import render_html, run_view
from tests.browser import Browser, find_chromium
from tests.test_run_report import KB, documents, history

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="chromium missing: `make test` installs it (apt)"
)

# What the page shows, measured by the browser's layout (not by our HTML string).
PROBE = """JSON.stringify({
  charts: [...document.querySelectorAll('svg[data-chart]')].map(s => ({
    kind: s.dataset.chart, model: s.dataset.model,
    width: s.getBoundingClientRect().width, height: s.getBoundingClientRect().height,
    trainPoints: s.querySelector('polyline') ?
      s.querySelector('polyline').points.numberOfItems : 0})),
  tables: [...document.querySelectorAll('table')].map(t => ({
    css: t.className, rows: t.tBodies[0].rows.length,
    visible: t.getBoundingClientRect().height > 0})),
  title: document.title,
  text: document.body.innerText,
})"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as chromium:
        yield chromium


def check_report_page(browser: Browser, page: Path, models: list[str]) -> dict[str, object]:
    """Load ``page`` and assert it is complete and self-contained; returns the probe."""
    import json

    from PIL import Image

    result = browser.load(page.resolve().as_uri(), PROBE)
    # Nothing but the page itself was requested: no script, font, image or stylesheet.
    assert result.requests == [page.resolve().as_uri()], result.requests
    errors = [c for c in result.console if c.get("level") in {"error", "warning"}]
    assert errors == [], errors
    probe = json.loads(result.evaluated)
    loss = [c for c in probe["charts"] if c["kind"] == "loss"]
    assert [c["model"] for c in loss] == models
    assert all(c["width"] > 300 and c["height"] > 100 for c in loss)
    bars = [c for c in probe["charts"] if c["kind"] == "val"]
    assert [c["model"] for c in bars] == models and all(c["height"] > 40 for c in bars)
    tables = {t["css"]: t for t in probe["tables"]}
    assert tables["resolution"]["rows"] == len(models) and tables["resolution"]["visible"]
    assert tables["throughput"]["rows"] == len(models)
    image = Image.open(io.BytesIO(result.screenshot))
    assert image.format == "PNG" and image.width >= 1000 and image.height > 1000
    # not a blank page: a real render has many colours (text, charts, badges)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    return probe


def test_report_renders_offline_with_charts_and_tables(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    view = run_view(documents(), {KB: history(12)}, run_id="run-x", signed=True, signer="k")
    page.write_text(render_html(view), encoding="utf-8")
    probe = check_report_page(browser, page, [KB, "qwen-2-5-7b"])
    kb = next(c for c in probe["charts"] if c["model"] == KB and c["kind"] == "loss")  # type: ignore[union-attr]
    assert kb["trainPoints"] == 6
    assert "certified: adapter beats its base" in str(probe["text"])


class _Hits(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Hits.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_request_check_catches_a_page_that_reaches_out(
    browser: Browser, tmp_path: Path
) -> None:
    # The harness must see a request even when the page's CSP blocks it, and plainly when it
    # does not: otherwise "no request left the page" would prove nothing.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pixel.png"
        view = run_view(documents(), {}, run_id="r", signed=False, signer=None)
        leaky = render_html(view).replace("</main>", f'<img src="{url}"></main>')
        blocked = tmp_path / "csp.html"
        blocked.write_text(leaky, encoding="utf-8")
        result = browser.load(blocked.as_uri())
        assert url in result.requests  # seen, although CSP refused it
        assert _Hits.hits == []  # and CSP did refuse it
        open_page = tmp_path / "open.html"
        open_page.write_text(leaky.replace("Content-Security-Policy", "x-no-csp"), "utf-8")
        result = browser.load(open_page.as_uri())
        assert url in result.requests and _Hits.hits == ["/pixel.png"]
    finally:
        server.shutdown()
