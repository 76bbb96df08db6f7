"""PNG charts of the dashboard panels (``threadline report --png-dir``), for slides and mail."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.analytics.panels import PanelResult

CHART_KINDS = ("timeseries", "barchart", "piechart")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_png(result: PanelResult, folder: Path, prefix: str) -> Path | None:
    """One PNG for a chart panel with rows; None for tables, stats and empty panels."""
    series = result.numeric_columns()
    if result.panel.kind not in CHART_KINDS or not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display here or on servers
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 3.6), dpi=100)
    labels = [row[0] for row in result.rows]
    if result.panel.kind == "timeseries":
        for i in series:
            axes.plot(labels, [row[i] for row in result.rows], marker="o", markersize=3, label=result.columns[i])
        figure.autofmt_xdate()
    elif result.panel.kind == "piechart":
        axes.pie([row[series[0]] for row in result.rows], labels=[str(label) for label in labels], autopct="%1.0f%%")
        axes.axis("equal")
    else:
        width = 0.8 / len(series)
        for n, i in enumerate(series):
            axes.bar([k + n * width for k in range(len(labels))], [row[i] for row in result.rows], width,
                     label=result.columns[i])
        axes.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))], [str(label) for label in labels])
    if len(series) > 1 or result.panel.kind == "timeseries":
        axes.legend(fontsize=8)
    axes.set_title(result.panel.title)
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{_slug(result.panel.title)}.png"
    figure.savefig(path)
    pyplot.close(figure)
    return path
