"""The run report: one self-contained HTML page per certified run, for people, not parsers.

Per model: the loss curves (train, and validation where measured), base vs adapter
validation loss with the certification verdict; for the run: how each requested name
resolved, data and token counts, throughput and hardware, the DNA, and the signature and
verification status.

Self-contained on purpose: no scripts, fonts, stylesheets or images from anywhere (charts
are inline SVG, the style is inline CSS, a Content-Security-Policy forbids every fetch), so
the page renders the same from a bucket, an e-mail attachment or an air-gapped laptop, and
its bytes can be signed with the run.

Rendering is a pure function of the run's documents (:class:`RunView`), with no clock and no
host lookups: the certifier renders it before MANIFEST.json and racing certifiers produce
the same bytes; ``oneseek-job report`` renders it again from any certified run, adding the
result of a fresh verification. Imports nothing heavy (no torch).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oneseek_job.layout import METRICS_DIR, REPORT_NAME
from oneseek_job.telemetry.sinks import read_history

if TYPE_CHECKING:
    from oneseek_job.storage import Store

__all__ = [
    "REPORT_NAME",
    "Check",
    "ModelView",
    "ResolutionRow",
    "RunView",
    "load_run_view",
    "read_histories",
    "render_html",
    "run_view",
]


@dataclass(frozen=True)
class ResolutionRow:
    """One requested name and what it resolved to."""

    requested: str
    key: str
    rule: str
    exact: bool = True  # the rule named the model itself (not separator-free or partial)
    recorded: bool = True  # False: the run predates recording rules ("exact" assumed)


@dataclass(frozen=True)
class Check:
    """One verification check: name, outcome, detail."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ModelView:
    """What the report shows of one model."""

    key: str
    display_name: str
    architecture: str
    base_val_loss: float | None
    final_val_loss: float | None
    final_train_loss: float | None
    improved: bool
    certified: bool
    steps: int | None
    epochs: int | None
    samples: int | None
    train_tokens: int | None
    duration_seconds: float | None
    tokens_per_second: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    # None: trained in this run; else ``carried_from`` of training_results.json (run_id,
    # trained_in, ...): the adapter was reused from that earlier certified run.
    carried_from: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunView:
    """Everything the page shows; built by :func:`run_view` from the run's documents."""

    run_id: str
    dna: str
    version: str
    status: str
    timestamp: str
    duration_seconds: float | None
    dataset: str
    dataset_files: list[str]
    dataset_sha256: str
    samples: int | None
    models: list[ModelView]
    resolution: list[ResolutionRow]
    hyperparameters: dict[str, Any]
    signed: bool
    signer: str | None
    file_count: int | None = None
    total_size: int | None = None
    verification: list[Check] | None = None  # None: not verified when rendered


# ----------------------------------------------------------------------------- data


def _json(documents: Mapping[str, bytes], name: str) -> dict[str, Any]:
    data = documents.get(name)
    if data is None:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Rules that name the model itself (discovery.EXACT_RULES); the others are loose matches.
_EXACT_RULES = {"exact", "exact key", "display name", "directory name", "alias"}


def _resolution(key: str, entry: dict[str, Any]) -> list[ResolutionRow]:
    """How the admin's names led to this model: recorded per model by newer runs
    (``trained_models[key].resolution``); older runs only know the model ("exact" assumed)."""
    recorded = entry.get("resolution")
    rows = [
        ResolutionRow(
            requested=str(row.get("requested", "")),
            key=key,
            rule=str(row.get("rule", "")),
            exact=bool(row.get("exact", str(row.get("rule", "")) in _EXACT_RULES)),
        )
        for row in (recorded if isinstance(recorded, list) else [])
        if isinstance(row, dict)
    ]
    if rows:
        return rows
    name = str(entry.get("display_name", key))
    return [ResolutionRow(name, key, "exact", exact=True, recorded=False)]


def _hyperparameters(documents: Mapping[str, bytes]) -> dict[str, Any]:
    # weights/oneseek-7b-zero-v<ver>.json keeps them under config.hyperparameters.
    for name in sorted(documents):
        if name.startswith("weights/") and name.endswith(".json"):
            config = _json(documents, name).get("config") or {}
            found = config.get("hyperparameters") if isinstance(config, dict) else None
            if isinstance(found, dict):
                return found
    return {}


def run_view(
    documents: Mapping[str, bytes],
    histories: Mapping[str, str],
    *,
    run_id: str,
    signed: bool,
    signer: str | None,
    verification: Sequence[Check] | None = None,
) -> RunView:
    """Assemble the report's data from the run's documents.

    Args:
        documents: run-relative name → bytes of at least ``training_results.json``
            (``oneseek_dna.json`` and ``MANIFEST.json`` add detail when present).
        histories: model key → text of ``metrics/<key>.jsonl`` (missing keys: no curves).
        run_id: the run.
        signed: whether the run is signed; ``signer`` the key's fingerprint.
        verification: a fresh verification's checks, or None when rendered by the certifier.
    """
    results = _json(documents, "training_results.json")
    dna_doc = _json(documents, "oneseek_dna.json")
    manifest = _json(documents, "MANIFEST.json")
    trained = results.get("trained_models") or {}
    models: list[ModelView] = []
    resolution: list[ResolutionRow] = []
    for key, entry in trained.items() if isinstance(trained, dict) else []:
        if not isinstance(entry, dict):
            continue
        resolution += _resolution(str(key), entry)
        reports, final = read_history(histories.get(key, ""))
        final = final or {}
        models.append(
            ModelView(
                key=str(key),
                display_name=str(entry.get("display_name", key)),
                architecture=str(entry.get("architecture", "")),
                base_val_loss=_float(entry.get("base_val_loss")),
                final_val_loss=_float(entry.get("final_val_loss")),
                final_train_loss=_float(entry.get("final_train_loss")),
                improved=bool(entry.get("improved")),
                certified=bool(entry.get("certified")),
                steps=_int(entry.get("steps")),
                epochs=_int(entry.get("epochs")),
                samples=_int(entry.get("samples")),
                train_tokens=_int(entry.get("train_tokens")),
                duration_seconds=_float(entry.get("duration_seconds")),
                tokens_per_second=_float(final.get("tokens_per_second")),
                history=reports,
                hardware=hardware if isinstance(hardware := final.get("hardware"), dict) else {},
                carried_from=origin
                if isinstance(origin := entry.get("carried_from"), dict)
                else None,
            )
        )
    return RunView(
        run_id=run_id,
        dna=str(results.get("dna") or dna_doc.get("dna") or ""),
        version=str(results.get("version", "")),
        status=str(results.get("status", "")),
        timestamp=str(results.get("timestamp", "")),
        duration_seconds=_float(results.get("duration_seconds")),
        dataset=str(results.get("dataset", "")),
        dataset_files=[str(f) for f in results.get("dataset_files", []) or []],
        dataset_sha256=str(results.get("dataset_sha256") or dna_doc.get("dataset_sha256") or ""),
        samples=_int(results.get("samples")),
        models=models,
        resolution=resolution,
        hyperparameters=_hyperparameters(documents),
        signed=signed,
        signer=signer,
        file_count=_int(manifest.get("file_count")),
        total_size=_int(manifest.get("total_size")),
        verification=list(verification) if verification is not None else None,
    )


# Run documents the page reads (besides weights/*.json and metrics/*.jsonl).
_DOCUMENTS = ("training_results.json", "oneseek_dna.json", "MANIFEST.json")
# A history beyond this is not drawn (a runaway file must not make the page huge).
_MAX_HISTORY_BYTES = 16 << 20


def read_histories(store: Store, prefix: str) -> dict[str, str]:
    """Model key → text of ``metrics/<key>.jsonl`` under the run ``prefix``."""
    histories: dict[str, str] = {}
    folder = f"{prefix}{METRICS_DIR}/"
    for info in store.list(folder):
        name = info.key[len(folder) :]
        if name.endswith(".jsonl") and "/" not in name and info.size <= _MAX_HISTORY_BYTES:
            text = store.get_bytes(info.key).decode("utf-8", errors="replace")
            histories[name.removesuffix(".jsonl")] = text
    return histories


def load_run_view(
    store: Store,
    prefix: str,
    *,
    run_id: str,
    signed: bool | None = None,
    signer: str | None = None,
    verification: Sequence[Check] | None = None,
) -> RunView:
    """Read a run's documents and histories from ``store`` under ``prefix`` (the run's
    prefix, ending in ``/``) and assemble its view.

    Args:
        signed, signer: the certifier's signing key (before MANIFEST.json exists); None:
            taken from MANIFEST.json.
        verification: a fresh verification's checks, if one was run.
    """
    wanted: dict[str, bytes] = {}
    for info in store.list(prefix):
        name = info.key[len(prefix) :]
        if name in _DOCUMENTS or (name.startswith("weights/") and name.endswith(".json")):
            wanted[name] = store.get_bytes(info.key)
    histories = read_histories(store, prefix)
    if signed is None:
        manifest = _json(wanted, "MANIFEST.json")
        signed = bool(manifest.get("signed"))
        found = manifest.get("signer_fingerprint")
        signer = str(found) if found else None
    return run_view(
        wanted,
        histories,
        run_id=run_id,
        signed=signed,
        signer=signer,
        verification=verification,
    )


# ----------------------------------------------------------------------------- charts

_W, _H = 560, 240  # chart size in px
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 56, 16, 16, 36
_TRAIN, _VAL, _BASE = "#2563eb", "#16a34a", "#9ca3af"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _loss_chart(model: ModelView) -> str:
    """Train loss per logged step, adapter validation points, the base's validation line."""
    train = [
        (int(r["step"]), float(r["loss"]))
        for r in model.history
        if _float(r.get("loss")) is not None and r.get("phase") != "done"
    ]
    val = [
        (int(r["step"]), float(r["val_loss"])) for r in model.history if _float(r.get("val_loss"))
    ]
    if model.final_val_loss is not None and model.steps is not None:
        val = [p for p in val if p[0] != model.steps] + [(model.steps, model.final_val_loss)]
    base = model.base_val_loss
    if not train and not val:
        return '<p class="muted">No training history or validation was recorded.</p>'
    points = train + val
    xs = [p[0] for p in points] + [0, model.steps or 0]
    ys = [p[1] for p in points] + ([base] if base is not None else [])
    x_lo, x_hi = 0, max(max(xs), 1)
    y_lo, y_hi = min(ys), max(ys)
    margin = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - margin, y_hi + margin
    inner_w, inner_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def x(v: float) -> float:
        return _PAD_L + (v - x_lo) / (x_hi - x_lo) * inner_w

    def y(v: float) -> float:
        return _PAD_T + (1 - (v - y_lo) / (y_hi - y_lo)) * inner_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'xmlns="http://www.w3.org/2000/svg" data-chart="loss" data-model="{_e(model.key)}">',
        f"<title>Loss curves of {_e(model.key)}</title>",
    ]
    for tick in _ticks(y_lo, y_hi):
        parts.append(
            f'<line class="grid" x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}"/><text class="tick" x="{_PAD_L - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{_fmt(tick)}</text>'
        )
    for tick in _ticks(x_lo, x_hi):
        if tick != int(tick):
            continue
        parts.append(
            f'<text class="tick" x="{x(tick):.1f}" y="{_H - _PAD_B + 16}" '
            f'text-anchor="middle">{int(tick)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{_H - _PAD_B}" '
        f'y2="{_H - _PAD_B}"/><line class="axis" x1="{_PAD_L}" x2="{_PAD_L}" y1="{_PAD_T}" '
        f'y2="{_H - _PAD_B}"/><text class="label" x="{_PAD_L + inner_w / 2:.1f}" '
        f'y="{_H - 4}" text-anchor="middle">optimizer step</text>'
    )
    if base is not None:
        parts.append(
            f'<line class="series-base" x1="{x(0):.1f}" x2="{x(x_hi):.1f}" y1="{y(base):.1f}" '
            f'y2="{y(base):.1f}" stroke="{_BASE}" stroke-dasharray="6 4" stroke-width="1.5">'
            f"<title>base model validation loss {base:.4f}</title></line>"
        )
    if train:
        line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in train)
        parts.append(
            f'<polyline class="series-train" fill="none" stroke="{_TRAIN}" stroke-width="2" '
            f'points="{line}"><title>training loss</title></polyline>'
        )
        parts += [
            f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5" fill="{_TRAIN}">'
            f"<title>step {s}: train loss {v:.4f}</title></circle>"
            for s, v in train
        ]
    if val:
        parts += [
            f'<circle class="series-val" cx="{x(s):.1f}" cy="{y(v):.1f}" r="5" fill="{_VAL}">'
            f"<title>step {s}: adapter validation loss {v:.4f}</title></circle>"
            for s, v in val
        ]
    parts.append("</svg>")
    legend = (
        '<div class="legend">'
        f'<span><i style="background:{_TRAIN}"></i>train loss</span>'
        f'<span><i style="background:{_VAL}"></i>adapter validation loss</span>'
        f'<span><i style="background:{_BASE}"></i>base model validation loss</span></div>'
    )
    if not train:
        legend += '<p class="muted">No training history was recorded for this model.</p>'
    return "".join(parts) + legend


def _val_bars(model: ModelView) -> str:
    """Two bars: base vs adapter validation loss."""
    base, final = model.base_val_loss, model.final_val_loss
    if base is None or final is None:
        return '<p class="muted">No validation losses recorded.</p>'
    width, height, label_w = 360, 64, 70
    top = max(base, final) or 1.0
    rows = []
    for i, (name, value, color) in enumerate(
        (("base", base, _BASE), ("adapter", final, _VAL if final < base else "#dc2626"))
    ):
        bar = (width - label_w - 60) * value / top
        y = 6 + i * 28
        rows.append(
            f'<text class="tick" x="0" y="{y + 15}">{name}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="20" fill="{color}" rx="3">'
            f"<title>{name} validation loss {value:.4f}</title></rect>"
            f'<text class="tick" x="{label_w + bar + 6:.1f}" y="{y + 15}">{value:.4f}</text>'
        )
    return (
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" data-chart="val" '
        f'data-model="{_e(model.key)}"><title>Validation loss of {_e(model.key)}: base vs '
        f"adapter</title>{''.join(rows)}</svg>"
    )


# ----------------------------------------------------------------------------- page

_CSS = """
:root{color-scheme:light;--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--ok:#15803d;--bad:#b91c1c}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);margin:0;background:#f9fafb}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
h3{font-size:15px;margin:0 0 8px}
.muted{color:var(--muted)}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px;margin:12px 0}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:#374151;background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px;
overflow-wrap:anywhere}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#dcfce7;color:var(--ok)}.bad{background:#fee2e2;color:var(--bad)}
.warn{background:#fef3c7;color:#92400e}.info{background:#e0e7ff;color:#3730a3}
svg.chart{max-width:100%;height:auto;font-size:11px}
svg .grid{stroke:#f1f5f9}svg .axis{stroke:#9ca3af}svg .tick{fill:#4b5563}
svg .label{fill:#6b7280}
.legend{display:flex;gap:14px;font-size:12px;color:#374151;margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted)}dd{margin:0}
dl.hparams{grid-template-columns:repeat(3,max-content minmax(80px,1fr))}
"""


def _num(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _verdict(model: ModelView) -> str:
    if model.certified and model.improved:
        return '<span class="badge ok">certified: adapter beats its base</span>'
    if model.certified:
        return '<span class="badge warn">certified with --allow-regression</span>'
    return '<span class="badge bad">not certified: adapter does not beat its base</span>'


def _origin(model: ModelView) -> str:
    """ "trained in this run", or the run the adapter was carried over from."""
    origin = model.carried_from
    if origin is None:
        return "trained in this run"
    text = f"carried over from run {_e(origin.get('run_id'))}"
    if origin.get("trained_in") not in (None, origin.get("run_id")):
        text += f" (trained in run {_e(origin.get('trained_in'))})"
    return text


def _model_section(model: ModelView) -> str:
    delta = (
        model.final_val_loss - model.base_val_loss
        if model.final_val_loss is not None and model.base_val_loss is not None
        else None
    )
    facts = [
        ("display name", _e(model.display_name)),
        ("architecture", _e(model.architecture or "–")),
        ("base val loss", _num(model.base_val_loss)),
        ("adapter val loss", _num(model.final_val_loss)),
        ("change", "–" if delta is None else f"{delta:+.4f}"),
        ("final train loss", _num(model.final_train_loss)),
        ("steps / epochs", f"{_num(model.steps)} / {_num(model.epochs)}"),
        ("origin", _origin(model)),
    ]
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return (
        f'<section class="card model" data-model="{_e(model.key)}">'
        f"<h3>{_e(model.key)} {_verdict(model)}</h3>"
        f'<div class="grid2"><div>{_loss_chart(model)}</div>'
        f"<div>{_val_bars(model)}<dl>{rows}</dl></div></div></section>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _resolution_table(view: RunView) -> str:
    rows = []
    for row in view.resolution:
        rule = (
            _e(row.rule)
            if row.recorded
            else f'{_e(row.rule)} <span class="muted">(assumed: not recorded)</span>'
        )
        css = "ok" if row.exact else "warn"
        rows.append(
            [
                f"<td><code>{_e(row.requested)}</code></td>",
                f"<td><code>{_e(row.key)}</code></td>",
                f'<td><span class="badge {css}">{rule}</span></td>',
            ]
        )
    return _table(["requested name", "model key", "rule that matched"], rows, css="resolution")


def _data_table(view: RunView) -> str:
    rows = []
    for m in view.models:
        rows.append(
            [
                f"<td><code>{_e(m.key)}</code></td>",
                f'<td class="num">{_num(m.samples)}</td>',
                f'<td class="num">{_num(m.train_tokens)}</td>',
                f'<td class="num">{_num(m.steps)}</td>',
                f'<td class="num">{_num(m.tokens_per_second, 0)}</td>',
                f'<td class="num">{_duration(m.duration_seconds)}</td>',
                f"<td>{_e(_hardware(m.hardware))}</td>",
            ]
        )
    return _table(
        [
            "model",
            "train records",
            "real tokens",
            "steps",
            "tokens/s (loop)",
            "duration",
            "hardware",
        ],
        rows,
        css="throughput",
    )


def _hyperparameter_table(view: RunView) -> str:
    if not view.hyperparameters:
        return ""
    from oneseek_job.telemetry.sinks import flatten_params

    flat = flatten_params(view.hyperparameters)
    # Three setting/value pairs per row: two dozen settings fit on a few lines.
    items = "".join(
        f"<dt><code>{_e(k)}</code></dt><dd>{_e(v if v != '' else '(default)')}</dd>"
        for k, v in sorted(flat.items())
    )
    return (
        f'<h2>Hyper-parameters</h2><section class="card"><dl class="hparams">{items}</dl></section>'
    )


def _hardware(hardware: Mapping[str, Any]) -> str:
    if not hardware:
        return "not recorded"
    device = str(hardware.get("device", ""))
    gpu = hardware.get("gpu_name")
    count = hardware.get("gpu_count")
    parts = [f"{count}× {gpu}" if gpu and count else device or "?"]
    if hardware.get("cpu_count"):
        parts.append(f"{hardware['cpu_count']} CPUs")
    if hardware.get("host"):
        parts.append(f"host {hardware['host']}")
    return ", ".join(parts)


def _verification(view: RunView) -> str:
    signature = (
        f'<span class="badge ok">signed</span> key <code>{_e(view.signer)}</code>'
        if view.signed
        else '<span class="badge warn">unsigned</span> (no ONESEEK_SIGNING_KEY_FILE)'
    )
    if view.verification is None:
        checks = (
            '<p class="muted">Rendered at certification, before the signature existed: this '
            "page is itself one of the signed files. Check the run with "
            f"<code>oneseek-job verify &lt;ARTIFACTS_URI&gt; --run-id {_e(view.run_id)} "
            "--public-key KEY.pub</code>, or render this report again with "
            "<code>oneseek-job report</code> to include a fresh verification.</p>"
        )
    else:
        ok = all(c.ok for c in view.verification)
        badge = (
            '<span class="badge ok">verification passed</span>'
            if ok
            else '<span class="badge bad">verification FAILED</span>'
        )
        rows = [
            [
                f"<td>{_e(c.name)}</td>",
                f'<td><span class="badge {"ok" if c.ok else "bad"}">'
                f"{'ok' if c.ok else 'FAIL'}</span></td>",
                f'<td class="mono">{_e(c.detail)}</td>',
            ]
            for c in view.verification
        ]
        checks = f"<p>{badge}</p>" + _table(["check", "result", "detail"], rows, css="checks")
    files = (
        f'<p class="muted">MANIFEST.json lists {_num(view.file_count)} files, '
        f"{_num(view.total_size)} bytes.</p>"
        if view.file_count is not None
        else ""
    )
    return f"<p>{signature}</p>{files}{checks}"


def render_html(view: RunView) -> str:
    """The report page for ``view``: one HTML document, nothing outside it."""
    status_css = {"certified": "ok", "partially-certified": "warn"}.get(view.status, "bad")
    summary = [
        ("run", f"<code>{_e(view.run_id)}</code>"),
        ("status", f'<span class="badge {status_css}">{_e(view.status or "unknown")}</span>'),
        ("DNA", f'<code class="dna">{_e(view.dna)}</code>'),
        ("version", _e(view.version)),
        ("certified at", _e(view.timestamp)),
        ("duration", _duration(view.duration_seconds)),
        (
            "dataset",
            f"{_e(', '.join(view.dataset_files) or view.dataset)} "
            f"({_num(view.samples)} training records)",
        ),
        ("dataset sha256", f"<code>{_e(view.dataset_sha256)}</code>"),
    ]
    dl = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in summary)
    models = "".join(_model_section(m) for m in view.models) or '<p class="muted">No models.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        # Nothing may be fetched: not a script, font, image or stylesheet.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>OneSeek-7B-Zero run {_e(view.run_id)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>OneSeek-7B-Zero · run {_e(view.run_id)}</h1>"
        '<p class="muted">LoRA adapters trained and certified by oneseek-job.</p>'
        f'<section class="card"><dl>{dl}</dl></section>'
        f"<h2>Models</h2>{models}"
        f"<h2>Resolution of BASE_MODELS</h2>{_resolution_table(view)}"
        f"<h2>Data, throughput and hardware</h2>{_data_table(view)}"
        f"{_hyperparameter_table(view)}"
        f'<h2>Signature and verification</h2><section class="card">{_verification(view)}'
        "</section></main></body></html>\n"
    )
