"""`threadline report`: the page on the seeded store (two tenants), its charts (matplotlib), the
tenant and time range it states, and a screenshot in headless Chromium where one is installed."""

from __future__ import annotations

import html
import math
import re
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.analytics.charts import LABEL_CHARACTERS, figure_of, format_value, shorten, svg
from pipeline.analytics.dashboards import (CAMPAIGN_ROI, COUNT, CURRENCY, DASHBOARDS, DURATION, RESPONSE_TIMES,
                                           SHARE, SHARE_MET, SLA_TARGETS, Panel)
from pipeline.analytics.panels import PanelResult, data_time_range, default_variables, run_dashboard, tenants_by_mail
from pipeline.analytics.report import render_report, report_scope
from pipeline.analytics.screenshot import find_chromium, screenshot
from pipeline.escalation.figures import format_duration

DAY = timedelta(days=1)
START = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _plain(page: str) -> str:
    """The page with the cells' attributes (alignment, threshold colours) left out."""
    return re.sub(r"<td[^>]*>", "<td>", page)


@pytest.fixture(scope="module")
def tenant_1_page(seeded):
    scope = report_scope(seeded, tenant="tenant-1")
    return scope, render_report(seeded, scope)


def test_report_shows_durations_in_days_hours_and_minutes(seeded, tenant_1_page):
    scope, page = tenant_1_page
    page = _plain(page)
    assert (scope.time_from, scope.time_to) == data_time_range(seeded)  # the seed spans less than 30 days
    kwargs = {"time_from": scope.time_from, "time_to": scope.time_to}
    results = {r.panel.title: r for r in run_dashboard(seeded, RESPONSE_TIMES, **kwargs,
                                                       variables=default_variables(seeded, RESPONSE_TIMES, "tenant-1"))}
    owners = results["First response time per owner"]
    assert owners.columns[2:] == ("p50", "p90", "p99")
    for row in owners.rows:
        assert f"<td>{format_duration(row[2])}</td><td>{format_duration(row[3])}</td>" in page
    waiting = results["Oldest unanswered mail"]
    longest = waiting.rows[0][waiting.columns.index("waiting")]
    assert longest > 86_400 and f"<td>{format_duration(longest)}</td>" in page
    assert re.search(r"<td>\d+ d \d+ h</td>", page) and re.search(r"<td>\d+ h \d+ min</td>", page)
    (sla,) = run_dashboard(seeded, SLA_TARGETS, **kwargs,
                           variables=default_variables(seeded, SLA_TARGETS, "tenant-1"))[-1:]
    assert sla.panel.title == "Time to meet a target" and len(sla.rows) == 3
    for target, met, p50, p90 in sla.rows:
        assert f"<td>{target}</td><td>{met}</td><td>{format_duration(p50)}</td><td>{format_duration(p90)}</td>" in page
    assert re.search(r"<td>\d+\.\d%</td>", page)  # shares met
    assert re.search(r"<td>€[\d,]+\.\d\d</td>", page)  # revenue in its currency


def test_report_colours_cells_by_the_dashboards_thresholds(tenant_1_page):
    _, page = tenant_1_page
    sla = page[page.index(f'<h2 id="{SLA_TARGETS.uid}">'):]
    sla = sla[:sla.index("<h2", 1)]
    shares = re.findall(r'<td class=n(?: style="background:(#\w+)")?>(-?\d+\.\d)%</td>', sla)
    assert len(shares) >= 4
    backgrounds = {"red": "#f8d0cc", "orange": "#fde2c0", "green": "#d9f0d3"}
    for background, share in shares:  # every share of the SLA dashboard is a share met, coloured by SHARE_MET
        assert background == backgrounds[SHARE_MET.colour_of(float(share) / 100)], share


def test_report_renders_every_panel_and_writes_chart_pngs(seeded, tmp_path):
    page = render_report(seeded, report_scope(seeded, tenant="tenant-1"), png_dir=tmp_path)
    for dashboard in DASHBOARDS:
        assert f"<h2 id=\"{dashboard.uid}\">{html.escape(dashboard.title)}</h2>" in page
        for panel in dashboard.panels:
            assert f"<h3>{html.escape(panel.title)}</h3>" in page
    charts = [p for d in DASHBOARDS for p in d.panels if p.kind in ("timeseries", "barchart", "piechart")]
    assert page.count("<svg") == len(charts) and "<script" not in page and "http://" not in page.replace(
        "http://www.w3.org/", "")  # self-contained: nothing loaded from anywhere
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == len(charts)
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000 for path in pngs)


def test_report_states_and_chooses_the_tenant_and_the_time_range(seeded):
    start, end = data_time_range(seeded)
    busiest, other = (tenant for tenant, _ in tenants_by_mail(seeded, start, end))
    scope = report_scope(seeded)
    assert scope.tenant == busiest and "the most mail" in scope.tenant_reason
    assert scope.range_reason == "all stored mail and tracking events (they span at most 92 days)"
    page = render_report(seeded, scope)
    header = page[page.index("<header>"):page.index("</header>")]
    assert f"<h1>Threadline report: {busiest}</h1>" in header
    assert f"Other tenants: <b>{other}</b>" in header and "threadline report --tenant NAME" in header
    assert f"{start:%a %d %b %Y %H:%M} – {end:%a %d %b %Y %H:%M} UTC" in header and "--from" in header

    chosen = report_scope(seeded, tenant=other)
    assert chosen.tenant == other and chosen.tenant_reason == "as chosen with --tenant"
    unknown = report_scope(seeded, tenant="nosuchtenant")
    assert unknown.tenant_reason.endswith("it has no mail in this time range")
    # A range given on one side: the other from the stored data, said so.
    later = report_scope(seeded, time_from=end - DAY)
    assert (later.time_from, later.time_to) == (end - DAY, end) and later.range_reason.startswith("--from as chosen")
    # Data over the span shown whole: its last days only.
    month = report_scope(seeded, days=1, whole_up_to_days=2)
    assert month.time_from == end - DAY and month.range_reason.startswith("the last 1 days")
    assert report_scope(seeded, days=1).time_from == start  # the seed's few days are shown whole


def test_report_command_takes_dates_and_refuses_nonsense(cli, tmp_path):
    out = tmp_path / "range.html"
    code, _ = cli("report", "--from", "2026-01-05", "--to", "2026-01-06", "--out", str(out))
    assert code == 0
    assert "Mon 05 Jan 2026 00:00 – Tue 06 Jan 2026 23:59 UTC" in out.read_text()  # --to a date: the whole day
    assert cli("report", "--from", "yesterday", "--out", str(out))[0] == 2
    assert cli("report", "--from", "2026-01-06", "--to", "2026-01-05", "--out", str(out))[0] == 2


# -- the charts ------------------------------------------------------------------------------

def _series(unit: str, rows, columns=("time", "value"), **panel) -> PanelResult:
    return PanelResult(Panel("A series", "SELECT 1", kind="timeseries", unit=unit, **panel), columns, rows)


def _ticks(labels) -> list[str]:
    return [text.get_text() for text in labels if text.get_text()]


def test_time_series_place_days_by_time_and_show_a_missing_day_as_a_gap():
    from matplotlib import dates

    days = [START, START + DAY, START + 4 * DAY]  # nothing on the 7th and 8th
    shares = figure_of(_series(SHARE, [(day, value) for day, value in zip(days, (0.9, 0.5, 0.97))],
                               thresholds=(("value", SHARE_MET),)), time_range=(START, START + 6 * DAY))
    (axes,) = shares.axes
    shares.canvas.draw()
    (line,) = [line for line in axes.get_lines() if len(line.get_xdata()) > 1 and line.get_marker() == "o"]
    x = [dates.date2num(v) if isinstance(v, datetime) else v for v in line.get_xdata()]
    assert math.isnan(line.get_ydata()[2])  # between the 6th and the 9th: the line stops
    points = [v for v, y in zip(x, line.get_ydata()) if y == y]
    assert points == [dates.date2num(day + DAY / 2) for day in days]  # in the middle of each day, by time
    assert axes.get_xlim() == (dates.date2num(START), dates.date2num(START + 6 * DAY))  # the whole range
    assert "05 Jan" in _ticks(axes.get_xticklabels()) and all(t.endswith("%") for t in _ticks(axes.get_yticklabels()))
    assert {text.get_text() for text in axes.get_legend().get_texts()} >= {
        "value", "red: below 80%", "orange: 80% to 95%", "green: from 95%"}

    counts = figure_of(_series(COUNT, [(day, n) for day, n in zip(days, (3, 5, 2))]), time_range=(START, START + 6 * DAY))
    (axes,) = counts.axes
    bars = axes.patches
    assert [bar.get_x() for bar in bars] == [dates.date2num(day) for day in days]  # bars at their days
    assert len({round(bar.get_width(), 6) for bar in bars}) == 1  # a day wide, whatever comes next


def test_value_axes_carry_units():
    hours = figure_of(_series(DURATION, [(START, 3 * 3600), (START + DAY, 60 * 3600)]))
    hours.canvas.draw()
    assert all(t.endswith(" d") for t in _ticks(hours.axes[0].get_yticklabels())) and hours.axes[0].get_ylabel() == "days"
    minutes = figure_of(_series(DURATION, [(START, 600), (START + DAY, 5400)]))
    minutes.canvas.draw()
    assert all(t.endswith(" min") for t in _ticks(minutes.axes[0].get_yticklabels()))
    money = figure_of(_series(CURRENCY, [(START, 120.5), (START + DAY, 800.0)]))
    money.canvas.draw()
    assert all(t.startswith("€") for t in _ticks(money.axes[0].get_yticklabels()))
    assert format_value(1234.5, CURRENCY) == "€1,234.50" and format_value(-3.0, CURRENCY) == "-€3.00"
    assert format_value(0.853, SHARE) == "85.3%" and format_value(97_200, DURATION) == "1 d 3 h"


def test_category_names_stay_on_one_line_and_the_table_has_them_in_full(seeded, tenant_1_page):
    _, page = tenant_1_page
    kwargs = dict(zip(("time_from", "time_to"), data_time_range(seeded)))
    results = {r.panel.title: r for r in run_dashboard(seeded, CAMPAIGN_ROI, **kwargs,
                                                       variables=default_variables(seeded, CAMPAIGN_ROI, "tenant-1"))}
    campaigns = results["Revenue and cost per campaign"]
    names = [row[0] for row in campaigns.rows]
    assert max(len(name) for name in names) > LABEL_CHARACTERS  # the seed has long names
    figure = figure_of(campaigns)
    figure.canvas.draw()
    labels = _ticks(figure.axes[0].get_yticklabels())
    assert labels == [shorten(name) for name in names]
    assert all(len(text) <= LABEL_CHARACTERS and "\n" not in text for text in labels)
    assert any(text.endswith("…") for text in labels)
    assert {text.get_text() for text in figure.axes[0].get_legend().get_texts()} == {"revenue", "cost"}
    for name in names:
        assert f">{html.escape(name)}</td>" in page
    chart = svg(campaigns)
    assert chart.startswith("<svg") and 'width="100%"' in chart and "<script" not in chart


# -- the screenshot --------------------------------------------------------------------------

@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (chromium, chromium-browser, google-chrome): "
                    "install Debian's with `apt-get install -y chromium` (.ci/install-test-services does as root)")
def test_headless_chromium_renders_the_whole_report(seeded, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render_report(seeded, report_scope(seeded, tenant="tenant-1")), encoding="utf-8")
    width, height = screenshot(page, tmp_path / "report.png")
    assert width == 1200 and 3000 < height < 16_000  # the whole page, its empty bottom cut off
    with Image.open(tmp_path / "report.png") as image:
        assert image.size == (width, height)
        rgb = image.convert("RGB")
        assert rgb.getpixel((1000, 30)) == (0xF5, 0xF7, 0xFA)  # the header's background: the page's styles applied
        colours = rgb.resize((300, height // 4)).getcolors(maxcolors=1 << 16)
    # Charts drawn: the palette's blue is on the page, and far more than a few colours.
    assert colours is None or len(colours) > 200
    assert any(abs(r - 0x00) < 20 and abs(g - 0x72) < 20 and abs(b - 0xB2) < 20 for _, (r, g, b) in (colours or []))
