"""Charts of the dashboard panels, drawn by matplotlib: inline SVG in ``threadline report`` and PNG
files for ``--png-dir`` (slides and mail), from one drawing.

Time series are placed by time on a date axis over the report's whole time range (a day without
rows is an empty day, not a step towards the next one), with day or week ticks from matplotlib's
date locator; counts and money per day are bars, shares points joined by lines that stop at a
missing day.  Categories (bar and pie chart panels) are horizontal bars, their names cut to one
line with an ellipsis (the table below a chart holds them in full).  The value axis carries the
panel's unit (hours or days, %, EUR, counts) and the panel's thresholds as dashed lines.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from pipeline.analytics.dashboards import COUNT, CURRENCY, DURATION, LABEL_CHARACTERS, NUMBER, SHARE, Thresholds
from pipeline.analytics.panels import PanelResult
from pipeline.escalation.figures import format_duration

CHART_KINDS = ("timeseries", "barchart", "piechart")
# Colour-blind safe (Okabe-Ito); Grafana's threshold colour names to the same palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
THRESHOLD_COLOURS = {"green": "#1a9850", "orange": "#f28e2b", "red": "#d73027", "transparent": "#888888"}
CURRENCY_SYMBOLS = {CURRENCY: "€"}
MAX_CATEGORIES = 15
_WIDTH_IN = 10.0


def label(column: str) -> str:
    """A column name as words: ``human_opens`` -> ``human opens``."""
    return column.replace("_", " ")


def shorten(text: str, limit: int = LABEL_CHARACTERS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def format_value(value, unit: str | None) -> str:
    """A value as a manager reads it, by its Grafana unit: "9 d 1 h", "85.3%", "€1,234.50", "1,234"."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if unit == DURATION:
        return format_duration(value)
    if unit == SHARE:
        return f"{value:.1%}"
    if unit in CURRENCY_SYMBOLS:
        return f"{'-' if value < 0 else ''}{CURRENCY_SYMBOLS[unit]}{abs(value):,.2f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}" if unit == NUMBER else f"{value:,.2f}"
    return f"{int(value):,}" if unit != NUMBER else str(int(value))


@dataclass(frozen=True)
class ValueAxis:
    """How a unit shows on a value axis: values divided by ``divisor``, ticks by ``tick``."""

    divisor: float
    name: str
    tick: Callable[[float], str]


def value_axis(unit: str, peak: float) -> ValueAxis:
    if unit == DURATION:
        for divisor, name, short in ((86_400, "days", "d"), (3_600, "hours", "h"), (60, "minutes", "min")):
            if peak >= 2 * divisor or divisor == 60:
                return ValueAxis(divisor, name, lambda v, short=short: f"{v:g} {short}")
    if unit == SHARE:
        return ValueAxis(1, "share", lambda v: f"{v:.0%}")
    if unit in CURRENCY_SYMBOLS:
        symbol = CURRENCY_SYMBOLS[unit]
        return ValueAxis(1, unit.removeprefix("currency"), lambda v: f"{symbol}{v:,.0f}")
    return ValueAxis(1, "", lambda v: f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}")


def _noun(columns: list[str]) -> str:
    """What the series count: the column of one, the last word several share (human_opens,
    machine_opens: "opens"), else nothing (the legend names them)."""
    if len(columns) == 1:
        return label(columns[0])
    last = {column.rsplit("_", 1)[-1] for column in columns}
    return last.pop() if len(last) == 1 else ""


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display here or on servers; Figure objects, no pyplot state
    from matplotlib import dates, ticker
    from matplotlib.figure import Figure

    return Figure, dates, ticker


def _bucket(times: list[datetime]) -> timedelta:
    steps = [b - a for a, b in zip(times, times[1:]) if b > a]
    return min(steps) if steps else timedelta(days=1)


def _threshold_bands(axes, thresholds: Thresholds | None, axis: ValueAxis, top: float) -> None:
    """Each threshold's range as a light band of its colour, its steps as dashed lines."""
    if thresholds is None:
        return
    starts = [None, *(start / axis.divisor for start, _ in thresholds.steps)]
    colours = [thresholds.base, *(colour for _, colour in thresholds.steps)]
    for k, (start, colour) in enumerate(zip(starts, colours)):
        end = starts[k + 1] if k + 1 < len(starts) else None
        if colour == "transparent":
            continue
        low, high = (start if start is not None else 0), (end if end is not None else top)
        if start is None:
            name = f"below {axis.tick(end)}"
        elif end is None:
            name = f"from {axis.tick(start)}"
        else:
            name = f"{axis.tick(start)} to {axis.tick(end)}"
        shade = THRESHOLD_COLOURS.get(colour, colour)
        axes.axhspan(low, high, color=shade, alpha=0.10, linewidth=0, zorder=0, label=f"{colour}: {name}")
        if start is not None:
            axes.axhline(start, color=shade, linestyle="--", linewidth=1.1, zorder=1)


def _time_series(figure, result: PanelResult, time_range: tuple[datetime, datetime] | None) -> None:
    _, dates, ticker = _matplotlib()
    axes = figure.subplots()
    series = result.numeric_columns()
    times = [row[0] for row in result.rows]
    unit = result.panel.unit_of(result.columns[series[0]])
    peak = max((row[i] or 0 for row in result.rows for i in series), default=0)
    bars = unit != SHARE
    if bars and len(series) > 1:  # stacked: the bar is the day's total
        peak = max(sum(row[i] or 0 for i in series) for row in result.rows)
    axis = value_axis(unit, peak)
    bucket = _bucket(times)
    bottom = [0.0] * len(times)
    for n, i in enumerate(series):
        values = [(row[i] if row[i] is not None else math.nan) / axis.divisor for row in result.rows]
        colour = PALETTE[n % len(PALETTE)]
        if bars:
            axes.bar(times, values, width=bucket * 0.8, bottom=bottom, align="edge" if bucket >= timedelta(days=1)
                     else "center", color=colour, label=label(result.columns[i]), zorder=2)
            bottom = [b + (v if not math.isnan(v) else 0) for b, v in zip(bottom, values)]
        else:
            # A missing bucket breaks the line: a gap shows as a gap.
            # Each point in the middle of its bucket (the span a bar covers).
            xs, ys = [], []
            for k, (when, value) in enumerate(zip(times, values)):
                if k and when - times[k - 1] > bucket * 1.5:
                    xs.append(times[k - 1] + bucket)
                    ys.append(math.nan)
                xs.append(when + bucket / 2)
                ys.append(value)
            axes.plot(xs, ys, color=colour, marker="o", markersize=4, linewidth=1.8, label=label(result.columns[i]),
                      zorder=3)
        _threshold_bands(axes, result.panel.thresholds_of(result.columns[i]), axis, 1.05 if unit == SHARE else
                         peak / axis.divisor * 1.1)
    if time_range is not None:
        start, end = time_range
        axes.set_xlim(min(start, times[0]), max(end, times[-1] + bucket))
    locator = dates.AutoDateLocator(minticks=4, maxticks=12)
    axes.xaxis.set_major_locator(locator)
    # Days as "05 Jan", the year once beside the axis.
    axes.xaxis.set_major_formatter(dates.ConciseDateFormatter(
        locator, formats=["%Y", "%b", "%d %b", "%H:%M", "%H:%M", "%S.%f"],
        zero_formats=["", "%Y", "%b", "%d %b", "%H:%M", "%H:%M"],
        offset_formats=["", "%Y", "%Y", "%d %b %Y", "%d %b %Y", "%d %b %Y %H:%M"]))
    axes.set_xlabel("day (UTC)" if bucket >= timedelta(days=1) else "time (UTC)")
    if unit == SHARE:
        axes.set_ylim(0, 1.05)
    else:
        axes.set_ylim(bottom=0)
        axes.yaxis.set_major_locator(ticker.MaxNLocator(nbins=6, integer=unit in (COUNT, NUMBER) and axis.divisor == 1))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: axis.tick(v)))
    axes.set_ylabel(axis.name or _noun([result.columns[i] for i in series]))
    axes.grid(axis="y", color="#dddddd", linewidth=0.8, zorder=0)
    if len(series) > 1 or result.panel.thresholds_of(result.columns[series[0]]) is not None:
        axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=6, frameon=False, fontsize=9,
                    borderaxespad=0.2)


def _categories(figure, result: PanelResult) -> None:
    _, _, ticker = _matplotlib()
    series = result.numeric_columns()
    rows = result.rows
    if result.panel.kind == "piechart":  # parts of a whole: largest first, with their share
        rows = sorted(rows, key=lambda row: -(row[series[0]] or 0))
    shown, hidden = rows[:MAX_CATEGORIES], rows[MAX_CATEGORIES:]
    axes = figure.subplots()
    unit = result.panel.unit_of(result.columns[series[0]])
    peak = max((row[i] or 0 for row in shown for i in series), default=0)
    axis = value_axis(unit, peak)
    height = 0.7 / len(series)
    total = sum(row[series[0]] or 0 for row in rows) or 1
    for n, i in enumerate(series):
        positions = [k + (n - (len(series) - 1) / 2) * height for k in range(len(shown))]
        values = [(row[i] or 0) / axis.divisor for row in shown]
        bars = axes.barh(positions, values, height=height * 0.9, color=PALETTE[n % len(PALETTE)],
                         label=label(result.columns[i]), zorder=2)
        texts = [format_value(row[i], result.panel.unit_of(result.columns[i])) for row in shown]
        if result.panel.kind == "piechart":
            texts = [f"{text} ({(row[i] or 0) / total:.0%})" for text, row in zip(texts, shown)]
        axes.bar_label(bars, texts, padding=3, fontsize=9)
    axes.set_yticks(range(len(shown)), [shorten(row[0]) for row in shown])
    axes.set_ylim(len(shown) - 0.5, -0.5)  # the first row on top, as in the table
    axes.set_xlim(0, (peak / axis.divisor or 1) * 1.25)  # room for the value labels
    axes.xaxis.set_major_locator(ticker.MaxNLocator(nbins=6, integer=unit in (COUNT, NUMBER) and axis.divisor == 1))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: axis.tick(v)))
    axes.set_xlabel(axis.name or _noun([result.columns[i] for i in series]))
    axes.grid(axis="x", color="#dddddd", linewidth=0.8, zorder=0)
    if len(series) > 1:
        axes.legend(loc="lower right", frameon=False, fontsize=9)
    if hidden:
        axes.set_title(f"the first {len(shown)} of {len(rows)}; the table lists all", fontsize=9, loc="right")


def figure_of(result: PanelResult, *, time_range: tuple[datetime, datetime] | None = None, title: bool = False):
    """The matplotlib Figure of a chart panel with rows, or None (tables, stats, no data)."""
    if result.panel.kind not in CHART_KINDS or not result.rows or not result.numeric_columns():
        return None
    Figure, _, _ = _matplotlib()
    if result.panel.kind == "timeseries" and isinstance(result.rows[0][0], datetime):
        figure = Figure(figsize=(_WIDTH_IN, 3.4), dpi=100, layout="constrained")
        _time_series(figure, result, time_range)
    else:
        bars = min(len(result.rows), MAX_CATEGORIES) * len(result.numeric_columns())
        figure = Figure(figsize=(_WIDTH_IN, 0.8 + 0.3 * bars), dpi=100, layout="constrained")
        _categories(figure, result)
    for axes in figure.axes:
        axes.spines[["top", "right"]].set_visible(False)
        axes.tick_params(labelsize=9)
    if title:
        figure.suptitle(result.panel.title, fontsize=12, x=0.01, ha="left")
    return figure


def svg(result: PanelResult, *, time_range: tuple[datetime, datetime] | None = None) -> str | None:
    """A chart as an inline ``<svg>`` element that scales to the page's width."""
    figure = figure_of(result, time_range=time_range)
    if figure is None:
        return None
    import matplotlib

    buffer = io.StringIO()
    # Text as paths: the chart looks the same whatever fonts the reader has; fixed ids, no date.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": result.panel.title}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], count=1, flags=re.DOTALL)
    aria = result.panel.title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', rf'<svg\1 width="100%" role="img" aria-label="{aria}"',
                  text, count=1)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_png(result: PanelResult, folder: Path, prefix: str, *,
              time_range: tuple[datetime, datetime] | None = None) -> Path | None:
    """One PNG (with its title) for a chart panel with rows; None for tables, stats and empty panels."""
    figure = figure_of(result, time_range=time_range, title=True)
    if figure is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{_slug(result.panel.title)}.png"
    figure.savefig(path, dpi=100, metadata={"Software": None})
    return path
