"""``threadline report``: the dashboards' panels as one self-contained HTML page.

For users without Grafana: the same SQL as the dashboards, run on the store, rendered as tables
and charts drawn by matplotlib (inline SVG: no scripts, no external files; the page works offline
and in mail).  The page says at the top which tenant and time range it shows, why, which other
tenants there are, and how to choose another.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.analytics.charts import THRESHOLD_COLOURS, format_value, label, svg, write_png
from pipeline.analytics.dashboards import DASHBOARDS, Dashboard
from pipeline.analytics.panels import (PanelResult, data_time_range, default_variables, run_dashboard,
                                       tenants_by_mail)
from pipeline.sinks.clickhouse import ClickHouseStore

DEFAULT_DAYS = 30  # as the Grafana dashboards (now-30d), but ending at the last stored event
# Stored data spanning at most this many days is shown whole: the last 30 days of a short history
# cut off its start (the demo's support mail spans its first 3 of 43 days; campaign replies the rest).
WHOLE_UP_TO_DAYS = 92
_MAX_TABLE_ROWS = 25
# Table cells of a column with thresholds: a light background of the threshold's colour.
_CELL_BACKGROUNDS = {"green": "#d9f0d3", "orange": "#fde2c0", "red": "#f8d0cc"}


@dataclass(frozen=True)
class ReportScope:
    """The tenant and time range a report shows, and why (stated at the top of the page)."""

    tenant: str
    tenant_reason: str
    tenants: tuple[tuple[str, int], ...]  # every tenant with its mails in the range, the most first
    time_from: datetime
    time_to: datetime
    range_reason: str


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def report_scope(store: ClickHouseStore, *, tenant: str | None = None, time_from: datetime | None = None,
                 time_to: datetime | None = None, days: int = DEFAULT_DAYS,
                 whole_up_to_days: int = WHOLE_UP_TO_DAYS) -> ReportScope:
    """The tenant (given, else the one with the most mail in the range) and the time range (given,
    else all stored data when it spans at most ``whole_up_to_days``, else its last ``days`` days)."""
    first, last = (_utc(moment) for moment in data_time_range(store))
    given = [name for name, value in (("--from", time_from), ("--to", time_to)) if value is not None]
    time_to = _utc(time_to) if time_to is not None else last
    if time_from is not None:
        time_from = _utc(time_from)
    elif time_to - first <= timedelta(days=whole_up_to_days):
        time_from = first
    else:
        time_from = max(first, time_to - timedelta(days=days))
    if len(given) == 2:
        range_reason = "as chosen with --from and --to"
    elif given:
        range_reason = f"{given[0]} as chosen, " + (
            "the end at the last stored mail or tracking event" if given[0] == "--from" else
            f"the start at the first stored event, or {days} days before it when that is over "
            f"{whole_up_to_days} days earlier")
    elif time_from > first:
        range_reason = (f"the last {days} days of stored data (it starts {first:%d %b %Y}, over {whole_up_to_days} "
                        "days earlier)")
    else:
        range_reason = f"all stored mail and tracking events (they span at most {whole_up_to_days} days)"
    tenants = tuple(tenants_by_mail(store, time_from, time_to))
    mails = dict(tenants)
    if tenant is not None:
        tenant_reason = "as chosen with --tenant" + ("" if mails.get(tenant) else "; it has no mail in this time range")
    elif tenants and tenants[0][1]:
        tenant, count = tenants[0]
        tenant_reason = f"the tenant with the most mail in this time range, {count:,} mails"
    else:
        tenant = tenants[0][0] if tenants else "default"
        tenant_reason = "no tenant has mail in this time range"
    return ReportScope(tenant, tenant_reason, tenants, time_from, time_to, range_reason)


_LONG_TEXT = 40  # a text cell longer than this wraps (within a minimum width) instead of widening the table


def _cell(value, unit: str | None = None, thresholds=None) -> str:
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M")
    else:
        text = html.escape(format_value(value, unit))
    if isinstance(value, str) and len(value) > _LONG_TEXT:
        return f"<td class=long>{text}</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        colour = thresholds.colour_of(value) if thresholds is not None else None
        style = f' style="background:{_CELL_BACKGROUNDS[colour]}"' if colour in _CELL_BACKGROUNDS else ""
        return f'<td class=n{style}>{text}</td>'
    return f"<td>{text}</td>"


def _table(result: PanelResult) -> str:
    panel = result.panel
    head = "".join(f"<th>{html.escape(label(column))}</th>" for column in result.columns)
    formats = [(panel.unit_of(column), panel.thresholds_of(column)) for column in result.columns]
    body = "".join("<tr>" + "".join(_cell(value, unit, thresholds) for value, (unit, thresholds) in zip(row, formats))
                   + "</tr>" for row in result.rows[:_MAX_TABLE_ROWS])
    hidden = len(result.rows) - _MAX_TABLE_ROWS
    more = f"<p class=note>{hidden} more rows not shown (the Grafana dashboard lists them all)</p>" if hidden > 0 else ""
    wide = " class=wide" if len(result.columns) > 9 else ""
    return f"<div class=scroll><table{wide}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}"


def _stat(result: PanelResult) -> str:
    column = result.columns[0]
    value = result.rows[0][0]
    thresholds = result.panel.thresholds_of(column)
    colour = THRESHOLD_COLOURS.get(thresholds.colour_of(value)) if thresholds is not None and value is not None else None
    style = f' style="color:{colour}"' if colour and colour != THRESHOLD_COLOURS["transparent"] else ""
    return f"<p class=stat{style}>{html.escape(format_value(value, result.panel.unit_of(column)))}</p>"


def _described(text: str, dashboard: Dashboard, variables: dict[str, str]) -> str:
    """A description with its $variables as the values shown (as Grafana interpolates them)."""
    for variable in dashboard.variables:
        text = re.sub(rf"\${variable.name}\b", lambda _: variables[variable.name] + (
            " hours" if variable.name.endswith("_hours") else ""), text)
    return text


def _panel_html(result: PanelResult, dashboard: Dashboard, variables: dict[str, str],
                time_range: tuple[datetime, datetime]) -> str:
    kind = result.panel.kind
    if not result.rows:
        body = "<p class=note>no data in this time range</p>"
    elif kind == "stat":
        body = _stat(result)
    else:
        chart = svg(result, time_range=time_range)
        table = _table(result)
        if chart and kind == "timeseries":  # the chart says it; the numbers one click away
            table = f"<details><summary>the numbers ({len(result.rows)} rows)</summary>{table}</details>"
        body = (f"<figure>{chart}</figure>" if chart else "") + table
    description = _described(result.panel.description, dashboard, variables)
    description = f"<p class=note>{html.escape(description)}</p>" if description else ""
    css = "stat-panel" if kind == "stat" else "panel"
    return f"<section class={css}><h3>{html.escape(result.panel.title)}</h3>{description}{body}</section>"


def _dashboard_html(dashboard: Dashboard, results: list[PanelResult], variables: dict[str, str],
                    time_range: tuple[datetime, datetime]) -> str:
    chosen = " · ".join(f"{html.escape(v.label)}: {html.escape(variables[v.name])}"
                        for v in dashboard.variables if v.name != "tenant")
    body = "".join(_panel_html(result, dashboard, variables, time_range) for result in results)
    settings = f"<p class=note>Settings: {chosen}.</p>" if chosen else ""
    return (f'<h2 id="{dashboard.uid}">{html.escape(dashboard.title)}</h2>'
            f"<p class=note>{html.escape(dashboard.description)}</p>{settings}{body}")


def _heading(dashboard: Dashboard) -> str:
    """A dashboard's name in the page's table of contents: "SLA targets"."""
    name = dashboard.title.removeprefix("Threadline: ")
    return name[:1].upper() + name[1:]


def _moment(moment: datetime) -> str:
    return f"{moment:%a %d %b %Y %H:%M}"


def _header(store: ClickHouseStore, scope: ReportScope) -> str:
    others = [(name, mails) for name, mails in scope.tenants if name != scope.tenant]
    if others:
        listed = ", ".join(f"<b>{html.escape(name)}</b> ({mails:,} mails)" for name, mails in others)
        other_tenants = f"Other tenants: {listed}. "
    else:
        other_tenants = "There is no other tenant. "
    span = scope.time_to - scope.time_from
    length = f"{span.days} days" if span.days >= 2 else f"{span.total_seconds() / 3600:.0f} hours"
    contents = " · ".join(f'<a href="#{d.uid}">{html.escape(_heading(d))}</a>'
                          for d in DASHBOARDS)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    location = store.location
    if location.startswith("chdb:") and Path(location[5:]).is_relative_to(Path.cwd()):
        location = f"chdb:{Path(location[5:]).relative_to(Path.cwd())}"  # as the user named it: data/clickhouse
    return f"""<header>
<h1>Threadline report: {html.escape(scope.tenant)}</h1>
<p class=scope><span class=key>Tenant</span> <b>{html.escape(scope.tenant)}</b>: {html.escape(scope.tenant_reason)}.
{other_tenants}Choose one with <code>threadline report --tenant NAME</code>.</p>
<p class=scope><span class=key>Time range</span> <b>{_moment(scope.time_from)} – {_moment(scope.time_to)} UTC</b>
({length}): {html.escape(scope.range_reason)}. Choose another with
<code>--from {scope.time_from:%Y-%m-%d} --to {scope.time_to:%Y-%m-%d}</code> (UTC; a date alone is the whole day).</p>
<nav>{contents}</nav>
<p class=note>The panels of the Grafana dashboards (<code>dashboards/*.json</code>), run on {html.escape(location)};
generated {generated}. Response and waiting times are calendar time, the SLA panels' times working time of the
policy's calendar; colours follow the dashboards' thresholds (SLA share met: red below 80 %, green from 95 %;
response and waiting times against the default policy's warning and breach hours).</p>
</header>"""


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto;
       padding: 1.5em 2em; color: #222; max-width: 1100px; line-height: 1.4; }
h1 { font-size: 26px; margin: 0 0 .4em; }
h2 { font-size: 21px; margin: 1.8em 0 .2em; padding-top: .6em; border-top: 2px solid #ccc; }
h3 { font-size: 16px; margin: 0 0 .2em; }
header { background: #f5f7fa; border: 1px solid #dde3ea; border-radius: 6px; padding: 1em 1.2em; }
.scope { font-size: 15px; margin: .35em 0; }
.key { display: inline-block; min-width: 6.5em; color: #555; text-transform: uppercase; font-size: 12px;
       letter-spacing: .04em; }
nav { margin: .6em 0 .2em; font-size: 14px; }
nav a { color: #0b5cad; }
code { background: #e8ecf1; padding: 0 .3em; border-radius: 3px; font-size: 13px; }
section { margin: 1.2em 0 1.6em; }
figure { margin: .4em 0; }
figure svg { display: block; max-width: 100%; height: auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: .4em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td { white-space: nowrap; }
td.long { white-space: normal; min-width: 16em; }
table.wide { font-size: 12px; }
table.wide th, table.wide td { padding: 2px 5px; }
table.wide td.long { min-width: 12em; }
code { white-space: nowrap; }
details summary { color: #0b5cad; font-size: 13px; cursor: pointer; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 13px; margin: .2em 0 .4em; }
.stat-panel { display: inline-block; min-width: 20em; border: 1px solid #dde3ea; border-radius: 6px; padding: .6em 1em; margin: .6em 0; }
.stat { font-size: 40px; font-weight: 600; margin: .1em 0; }
"""


def render_report(store: ClickHouseStore, scope: ReportScope | None = None, *, png_dir: Path | None = None) -> str:
    """The HTML page of ``scope`` (default: :func:`report_scope`); with ``png_dir``, every chart
    panel is also written there as a PNG."""
    scope = scope or report_scope(store)
    time_range = (scope.time_from, scope.time_to)
    sections = []
    for dashboard in DASHBOARDS:
        variables = default_variables(store, dashboard, scope.tenant)
        results = run_dashboard(store, dashboard, time_from=scope.time_from, time_to=scope.time_to,
                                variables=variables)
        if png_dir is not None:
            for result in results:
                write_png(result, png_dir, dashboard.uid, time_range=time_range)
        sections.append(_dashboard_html(dashboard, results, variables, time_range))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Threadline report: {html.escape(scope.tenant)}</title>
<style>{_STYLE}</style></head><body>
{_header(store, scope)}
{''.join(sections)}
</body></html>
"""
