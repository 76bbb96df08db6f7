"""``threadline report``: the dashboards' panels as one self-contained HTML page.

For users without Grafana: the same SQL as the dashboards, run on the store, rendered as tables
and inline SVG charts (no scripts, no external files; the page works offline and in mail).
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from pipeline.analytics.dashboards import DASHBOARDS, DURATION, SHARE
from pipeline.analytics.panels import PanelResult, data_time_range, default_variables, run_dashboard
from pipeline.analytics.png import write_png
from pipeline.escalation.figures import format_duration
from pipeline.sinks.clickhouse import ClickHouseStore

_MAX_TABLE_ROWS = 50
_COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")


def _cell(value, unit: str | None = None) -> str:
    if value is None:
        return "–"
    if unit == DURATION:
        return format_duration(value)
    if unit == SHARE:
        return f"{value:.1%}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return f"{value:,.2f}"
    return html.escape(str(value))


def _table(result: PanelResult) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in result.columns)
    units = [result.panel.unit_of(column) for column in result.columns]
    body = "".join("<tr>" + "".join(f"<td>{_cell(v, unit)}</td>" for v, unit in zip(row, units)) + "</tr>"
                   for row in result.rows[:_MAX_TABLE_ROWS])
    more = f"<p class=note>{len(result.rows) - _MAX_TABLE_ROWS} more rows not shown</p>" if len(result.rows) > _MAX_TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _bars(result: PanelResult, width: int = 640, bar_height: int = 18) -> str:
    """Horizontal bars: one group per row (label = first column), one bar per numeric column."""
    series = result.numeric_columns()
    if not series:
        return ""
    rows = result.rows[:30]
    peak = max((row[i] for row in rows for i in series), default=0) or 1
    label_width, height = 180, (len(rows) * len(series)) * bar_height + 10
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(result.panel.title)}">']
    y = 0
    for row in rows:
        for n, i in enumerate(series):
            length = (width - label_width - 60) * row[i] / peak
            label = _cell(row[0]) if n == 0 else ""
            value = _cell(row[i], result.panel.unit_of(result.columns[i]))
            parts.append(f'<text x="0" y="{y + 13}" font-size="11">{label}</text>'
                         f'<rect x="{label_width}" y="{y + 2}" width="{max(length, 0):.1f}" height="{bar_height - 4}" '
                         f'fill="{_COLORS[n % len(_COLORS)]}"><title>{html.escape(result.columns[i])}: {value}</title></rect>'
                         f'<text x="{label_width + max(length, 0) + 4:.1f}" y="{y + 13}" font-size="11">{value}</text>')
            y += bar_height
    parts.append("</svg>")
    return "".join(parts)


def _lines(result: PanelResult, width: int = 640, height: int = 180) -> str:
    series = result.numeric_columns()
    if not series or len(result.rows) < 2:
        return _bars(result)
    rows = result.rows
    peak = max(row[i] for row in rows for i in series) or 1
    step = (width - 50) / (len(rows) - 1)
    parts = [f'<svg width="{width}" height="{height + 20}" role="img" aria-label="{html.escape(result.panel.title)}">',
             f'<text x="0" y="12" font-size="11">{_cell(peak, result.panel.unit_of(result.columns[series[0]]))}</text>',
             f'<line x1="45" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>']
    for n, i in enumerate(series):
        points = " ".join(f"{45 + k * step:.1f},{height - (height - 20) * row[i] / peak:.1f}" for k, row in enumerate(rows))
        parts.append(f'<polyline fill="none" stroke="{_COLORS[n % len(_COLORS)]}" stroke-width="2" points="{points}">'
                     f'<title>{html.escape(result.columns[i])}</title></polyline>')
    parts.append(f'<text x="45" y="{height + 15}" font-size="11">{_cell(rows[0][0])}</text>'
                 f'<text x="{width - 110}" y="{height + 15}" font-size="11">{_cell(rows[-1][0])}</text></svg>')
    legend = " ".join(f'<span style="color:{_COLORS[n % len(_COLORS)]}">&#9632; {html.escape(result.columns[i])}</span>'
                      for n, i in enumerate(series))
    return "".join(parts) + f"<p class=note>{legend}</p>"


def _panel_html(result: PanelResult) -> str:
    kind = result.panel.kind
    if not result.rows:
        body = "<p class=note>no data in this time range</p>"
    elif kind == "stat":
        body = f'<p class=stat>{_cell(result.rows[0][0], result.panel.unit_of(result.columns[0]))}</p>'
    elif kind == "timeseries":
        body = _lines(result) + _table(result)
    elif kind in ("barchart", "piechart"):
        body = _bars(result) + _table(result)
    else:
        body = _table(result)
    description = f"<p class=note>{html.escape(result.panel.description)}</p>" if result.panel.description else ""
    return f"<section><h3>{html.escape(result.panel.title)}</h3>{description}{body}</section>"


def render_report(store: ClickHouseStore, *, tenant: str | None = None, time_from: datetime | None = None,
                  time_to: datetime | None = None, png_dir: Path | None = None) -> str:
    """The HTML page; with ``png_dir``, every chart panel is also written there as a PNG."""
    if time_from is None or time_to is None:
        start, end = data_time_range(store)
        time_from, time_to = time_from or start, time_to or end
    sections = []
    for dashboard in DASHBOARDS:
        variables = default_variables(store, dashboard, tenant)
        results = run_dashboard(store, dashboard, time_from=time_from, time_to=time_to, variables=variables)
        if png_dir is not None:
            for result in results:
                write_png(result, png_dir, dashboard.uid)
        chosen = ", ".join(f"{k} = {v}" for k, v in variables.items())
        sections.append(f"<h2>{html.escape(dashboard.title)}</h2><p class=note>{html.escape(dashboard.description)} "
                        f"({html.escape(chosen)})</p>" + "".join(_panel_html(r) for r in results))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Threadline report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: .5em 0; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
section {{ margin: 1.5em 0; }}
.note {{ color: #666; font-size: 13px; }}
.stat {{ font-size: 40px; font-weight: 600; margin: .2em 0; }}
</style></head><body>
<h1>Threadline report</h1>
<p class=note>{html.escape(store.location)}; time range {_cell(time_from)} to {_cell(time_to)} (UTC); generated {generated}.</p>
{''.join(sections)}
</body></html>
"""
