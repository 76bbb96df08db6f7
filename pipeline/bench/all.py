"""``threadline bench all``: every benchmark in one go, summarised into docs/benchmarks.md.

Runs the correlation core at growing index sizes, the pipeline (with its raw confluent-kafka
baseline) at growing mail counts, ClickHouse inserts and dashboard queries, and the tracking
endpoint; writes every result as JSON, plots cost against work size as PNGs, and replaces the
generated section of docs/benchmarks.md (between the markers below) with the tables, the date
and the machine.  The hand-written analysis around that section is kept.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pipeline.bench.clickhouse import run_clickhouse_bench
from pipeline.bench.common import machine_facts
from pipeline.bench.correlate import run_correlate_bench
from pipeline.bench.pipeline import run_pipeline_bench
from pipeline.bench.tracking import run_tracking_bench
from pipeline.settings import Settings

START_MARKER = "<!-- threadline bench all: start -->"
END_MARKER = "<!-- threadline bench all: end -->"


def _plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]],
          log_x: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 3.6), dpi=100)
    for label, points in series.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    if log_x:
        axes.set_xscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


def run_all(settings: Settings, *, data_dir: Path, results_dir: Path, docs_path: Path, quick: bool,
            progress: Callable[[str], None]) -> dict:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    pipeline_sizes = [5_000, 10_000] if quick else [10_000, 30_000]
    progress("correlation core")
    correlate = run_correlate_bench(sizes, measure=10_000 if quick else 20_000, progress=False)
    pipeline = []
    for mails in pipeline_sizes:
        progress(f"pipeline, {mails} mails")
        pipeline.append(run_pipeline_bench(settings, mails=mails, seed=7, data_dir=data_dir, progress=progress))
    progress("clickhouse")
    clickhouse = run_clickhouse_bench(settings, mails=1_000_000 if quick else 10_000_000, repeat=3,
                                      insert_mails=20_000, data_dir=data_dir, progress=progress)
    progress("tracking endpoint")
    tracking = run_tracking_bench(settings, seconds=5 if quick else 10, concurrency=32, data_dir=data_dir,
                                  progress=progress)
    results = {"correlate": correlate, "pipeline": pipeline, "clickhouse": clickhouse, "tracking": tracking}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "all.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    figures = docs_path.parent / "figures"
    _plot(figures / "bench-correlate.png", "Correlation core: mails/s by index size", "indexed mails", "mails/s",
          {"engine": [(s["indexed_mails"], s["mails_per_s"]) for s in correlate["sizes"]]}, log_x=True)
    _plot(figures / "bench-pipeline.png", "Pipeline vs raw confluent-kafka", "mails", "mails/s",
          {"pipeline (1 worker)": [(r["settings"]["mails"], r["pipeline_mails_per_s"]) for r in pipeline],
           "raw confluent-kafka": [(r["settings"]["mails"], r["baseline_confluent_kafka_mails_per_s"]) for r in pipeline]})
    queries = clickhouse["queries"]
    _plot(figures / "bench-clickhouse.png", f"Dashboard queries at {clickhouse['settings']['mails']:,} mails",
          "panel", "median ms", {"median": [(n, q["median_ms"]) for n, q in enumerate(queries, start=1)],
                                 "target": [(1, 200), (len(queries), 200)]})
    _write_docs(docs_path, results, quick)
    return results


def _section(results: dict, quick: bool) -> str:
    machine = machine_facts()
    correlate, pipeline = results["correlate"], results["pipeline"]
    clickhouse, tracking = results["clickhouse"], results["tracking"]
    lines = [START_MARKER, "", "## Latest `threadline bench all` run",
             "", f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine['cpu']} ({machine['cpus']} CPUs), "
             f"Python {machine['python']}, threadline {machine['threadline']}"
             + (" (`--quick`: smaller sizes than the sections above)." if quick else "."), "",
             "| benchmark | work | result |", "|---|---|---|"]
    for size in correlate["sizes"]:
        lines.append(f"| correlation core | {size['indexed_mails']:,} indexed mails | {size['mails_per_s']:,} mails/s |")
    lines.append(f"| RFC 5322 parsing | {correlate['parse']['synthetic_mails']:,} synthetic mails | "
                 f"{correlate['parse']['synthetic_mails_per_s']:,} mails/s |")
    for run in pipeline:
        lines.append(f"| pipeline, 1 worker | {run['settings']['mails']:,} mails | {run['pipeline_mails_per_s']:,} mails/s "
                     f"({run['summary']['ratio_to_confluent_kafka']:.3f} of raw confluent-kafka "
                     f"{run['baseline_confluent_kafka_mails_per_s']:,}/s) |")
    lines.append(f"| ClickHouse inserts | {clickhouse['insert']['rows']:,} rows | {clickhouse['insert']['rows_per_s']:,} rows/s |")
    slowest = clickhouse["summary"]
    lines.append(f"| dashboard queries | {clickhouse['settings']['mails']:,} mails, {slowest['queries']} panels | "
                 f"{slowest['queries_under_target']} under {slowest['target_ms']} ms; slowest median "
                 f"{slowest['slowest_median_ms']} ms ({slowest['slowest_query']}) |")
    lines.append(f"| tracking endpoint | {tracking['requests']:,} pixel requests | {tracking['requests_per_s']:,} req/s, "
                 f"p99 {tracking['latency_ms']['p99']} ms |")
    lines += ["", "![correlation core](figures/bench-correlate.png)", "![pipeline](figures/bench-pipeline.png)",
              "![clickhouse](figures/bench-clickhouse.png)", "", END_MARKER]
    return "\n".join(lines)


def _write_docs(path: Path, results: dict, quick: bool) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    section = _section(results, quick)
    if START_MARKER in text and END_MARKER in text:
        before, rest = text.split(START_MARKER, 1)
        after = rest.split(END_MARKER, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
