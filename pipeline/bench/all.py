"""``threadline bench all``: every figure of the throughput targets in one run, each with the
baseline taken in that same run, summarised into docs/benchmarks.md.

The parts: RFC 5322 parsing of the real corpora (against the stdlib parser alone), the correlation core at growing index sizes (against the least any
threading does), the pipeline with one and more workers (against raw confluent-kafka on the same
broker), the replay of a million mails with two workers (against raw confluent-kafka reading the
same ``mail.raw``), ClickHouse inserts and dashboard queries, and the tracking endpoint.  Every
result goes into one JSON file; cost against size is plotted as PNGs (mails/s against indexed
mails, against mail size, against workers); the generated section of docs/benchmarks.md (between the markers below)
is replaced with a table of every figure against its target and baseline, the date, the machine
and how long each part took.  The hand-written analysis around that section is kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pipeline.bench import clickhouse as clickhouse_bench
from pipeline.bench import correlate as correlate_bench
from pipeline.bench import parse as parse_bench
from pipeline.bench import pipeline as pipeline_bench
from pipeline.bench import replay as replay_bench
from pipeline.bench import tracking as tracking_bench
from pipeline.bench.common import machine_facts
from pipeline.settings import Settings

START_MARKER = "<!-- threadline bench all: start -->"
END_MARKER = "<!-- threadline bench all: end -->"
FIGURES = {"correlate": "bench-correlate.png", "size": "bench-mail-size.png", "workers": "bench-workers.png",
           "clickhouse": "bench-clickhouse.png"}


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    parse_repeat: int  # passes over the corpora; each mail's best time counts
    correlate: tuple[int, ...]  # indexed mails
    correlate_measure: int  # mails timed at each index size
    pipeline_mails: int
    pipeline_workers: tuple[int, ...]
    replay_mails: int
    replay_workers: int
    clickhouse_mails: int  # mails in the tables the dashboard queries read
    clickhouse_insert_mails: int
    clickhouse_repeat: int
    tracking_seconds: float


FULL = Sizes(parse_repeat=3, correlate=(10_000, 100_000, 1_000_000), correlate_measure=20_000, pipeline_mails=30_000,
             pipeline_workers=(1, 2), replay_mails=1_000_000, replay_workers=2, clickhouse_mails=10_000_000,
             clickhouse_insert_mails=20_000, clickhouse_repeat=3, tracking_seconds=10)
# Small enough for a test (a minute or two), large enough that every part runs for real.
QUICK = Sizes(parse_repeat=1, correlate=(1_000, 10_000), correlate_measure=2_000, pipeline_mails=2_000, pipeline_workers=(1, 2),
              replay_mails=3_000, replay_workers=2, clickhouse_mails=100_000, clickhouse_insert_mails=2_000,
              clickhouse_repeat=1, tracking_seconds=2)


def run_all(settings: Settings, *, data_dir: Path, results_dir: Path, docs_path: Path, sizes: Sizes,
            corpus_dir: Path, progress: Callable[[str], None]) -> dict:
    seconds: dict[str, float] = {}
    results: dict = {}
    machine = machine_facts()
    results_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["run"] = {"machine": machine, "finished": machine_facts()["date"],
                          "load_average_1m_at_end": machine_facts()["load_average_1m"], "sizes": asdict(sizes),
                          "seconds": seconds, "quick": sizes == QUICK}
        (results_dir / "all.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    def part(key: str, name: str, run: Callable[[], dict | list]) -> None:
        progress(f"== {name}")
        started = time.monotonic()
        results[key] = run()
        seconds[name] = round(time.monotonic() - started, 1)
        progress(f"== {name}: {seconds[name]:,.0f} s")
        save()  # a part that fails later leaves the ones before it on disk

    part("parse", "parsing the real corpora", lambda: parse_bench.run_parse_corpus_bench(
        corpus_dir, repeat=sizes.parse_repeat, progress=False))
    part("correlate", "correlation core", lambda: correlate_bench.run_correlate_bench(
        sizes.correlate, measure=sizes.correlate_measure, progress=False))
    part("pipeline", "pipeline", lambda: [pipeline_bench.run_pipeline_bench(
        settings, mails=sizes.pipeline_mails, seed=7, data_dir=data_dir, progress=progress, workers=workers)
        for workers in sizes.pipeline_workers])
    part("replay", "replay", lambda: replay_bench.run_replay_bench(
        settings, mails=sizes.replay_mails, workers=sizes.replay_workers, seed=7, data_dir=data_dir,
        progress=progress))
    part("clickhouse", "clickhouse", lambda: clickhouse_bench.run_clickhouse_bench(
        settings, mails=sizes.clickhouse_mails, repeat=sizes.clickhouse_repeat,
        insert_mails=sizes.clickhouse_insert_mails, data_dir=data_dir, progress=progress))
    part("tracking", "tracking endpoint", lambda: tracking_bench.run_tracking_bench(
        settings, seconds=sizes.tracking_seconds, concurrency=32, data_dir=data_dir, progress=progress))
    _plots(docs_path.parent / "figures", results)
    _write_docs(docs_path, _section(results))
    return results


# -- plots ------------------------------------------------------------------------------------

def _plot(path: Path, title: str, subtitle: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]],
          *, log_x: bool = False, log_y: bool = False, dashed: dict[str, list[tuple[float, float]]] | None = None,
          x_ticks: list[float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FuncFormatter

    figure, axes = pyplot.subplots(figsize=(9, 3.6), dpi=100)
    for label, points in series.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    for label, points in (dashed or {}).items():
        axes.plot([x for x, _ in points], [y for _, y in points], linestyle="--", label=label)
    if log_x:
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    if x_ticks:
        axes.set_xticks(x_ticks)
    thousands = FuncFormatter(lambda value, _pos: f"{value:,.0f}")
    axes.xaxis.set_major_formatter(thousands)
    axes.yaxis.set_major_formatter(thousands)
    axes.set_title(f"{title}\n{subtitle}", fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, never on them
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


def _plots(figures: Path, results: dict) -> None:
    machine = results["run"]["machine"]
    when = f"{machine['date'][:16].replace('T', ' ')} UTC, {machine['cpu']} ({machine['cpus']} CPUs)"
    sizes = results["correlate"]["sizes"]
    xs = [s["indexed_mails"] for s in sizes]
    _plot(figures / FIGURES["correlate"], "Correlation core: mails/s vs indexed mails", when, "indexed mails",
          "mails/s (one core)", {"Correlator": [(s["indexed_mails"], s["mails_per_s"]) for s in sizes]},
          log_x=True, x_ticks=xs,
          dashed={f"target {correlate_bench.TARGET_MAILS_PER_S:,}": [(xs[0], correlate_bench.TARGET_MAILS_PER_S),
                                                                    (xs[-1], correlate_bench.TARGET_MAILS_PER_S)]})
    _size_plot(figures / FIGURES["size"], "Parsing: mails/s vs mail size (log scale)", when, results["parse"])
    pipeline = sorted(results["pipeline"], key=lambda r: r["settings"]["workers"])
    one = pipeline[0]["pipeline_mails_per_s"] / pipeline[0]["settings"]["workers"]
    replay = results["replay"]["summary"]
    workers = sorted({r["settings"]["workers"] for r in pipeline} | {replay["workers"]})
    _plot(figures / FIGURES["workers"], "Pipeline: mails/s vs workers (log scale)", when, "worker processes",
          "mails/s, all workers together",
          {f"bench pipeline ({pipeline[0]['settings']['mails']:,} mails)":
               [(r["settings"]["workers"], r["pipeline_mails_per_s"]) for r in pipeline],
           f"bench replay ({replay['mails']:,} mails)": [(replay["workers"], replay["mails_per_s"])],
           "baseline: raw confluent-kafka, same run (bench pipeline)":
               [(r["settings"]["workers"], r["baseline_confluent_kafka_mails_per_s"]) for r in pipeline]},
          x_ticks=workers, log_y=True,
          dashed={"1 worker x workers": [(w, one * w) for w in workers],
                  f"target {pipeline_bench.TARGET_MAILS_PER_S:,}/s per worker":
                      [(w, pipeline_bench.TARGET_MAILS_PER_S * w) for w in workers]})
    clickhouse = results["clickhouse"]
    _query_bars(figures / FIGURES["clickhouse"], f"Dashboard queries at {clickhouse['settings']['mails']:,} mails",
                when, clickhouse["queries"])


def _size_plot(path: Path, title: str, subtitle: str, parse: dict) -> None:
    """parse_mail and the stdlib parser alone by mail size bucket, over every corpus."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FuncFormatter

    buckets = parse["overall"]["by_size"]
    figure, axes = pyplot.subplots(figsize=(9, 3.6), dpi=100)
    xs = list(range(len(buckets)))
    for key, label in (("parse_mail", "parse_mail"), ("stdlib_message_from_bytes",
                                                     "baseline: stdlib message_from_bytes alone")):
        axes.plot(xs, [b[key]["mails_per_s"] for b in buckets], marker="o", label=label)
    target = parse_bench.CORPUS_TARGET_MAILS_PER_S
    axes.plot(xs, [target] * len(xs), linestyle="--", label=f"target {target:,}/s (all sizes together)")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    axes.set_xticks(xs, [f"{b['bucket']}\n{b['mails']:,} mails" for b in buckets], fontsize=8)
    axes.set_xlabel(f"mail size ({parse['overall']['mails']:,} real mails of {len(parse['corpora'])} corpora)")
    axes.set_ylabel("mails/s (one core)")
    axes.set_title(f"{title}\n{subtitle}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


def _query_bars(path: Path, title: str, subtitle: str, queries: list[dict]) -> None:
    """The median of every dashboard panel, one bar each, against the target."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 1.2 + 0.22 * len(queries)), dpi=100)
    labels = [f"{q['dashboard'].removeprefix('threadline-')} / {q['panel']}"[:60] for q in queries]
    medians = [q["median_ms"] for q in queries]
    colours = ["tab:blue" if m < clickhouse_bench.TARGET_MS else "tab:red" for m in medians]
    axes.barh(range(len(queries)), medians, color=colours)
    axes.axvline(clickhouse_bench.TARGET_MS, linestyle="--", color="tab:orange",
                 label=f"target {clickhouse_bench.TARGET_MS} ms")
    axes.set_yticks(range(len(queries)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("median ms (red: over the target)")
    axes.set_title(f"{title}\n{subtitle}", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


# -- the docs section -------------------------------------------------------------------------

def _yes(met: bool | None) -> str:
    return "—" if met is None else ("**yes**" if met else "no")


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.3g}" if baseline else "—"


def _rows(results: dict) -> list[str]:
    """| figure | work | result | same-run baseline | ratio | target | met |"""
    rows = []
    parse = results["parse"]
    target = parse_bench.CORPUS_TARGET_MAILS_PER_S
    for row in [*parse["corpora"], parse["overall"]]:
        ours, alone = row["parse_mail"], row["stdlib_message_from_bytes"]
        rows.append(f"| parsing (`parse_mail`) | {row['mails']:,} real mails ({row['corpus']}, {row['mb']} MB) | "
                    f"{ours['mails_per_s']:,} mails/s ({ours['mb_per_s']} MB/s) | stdlib `message_from_bytes` alone "
                    f"{alone['mails_per_s']:,}/s | {row['ratio_to_message_from_bytes']} | >= {target:,} mails/s per "
                    f"core | {_yes(ours['mails_per_s'] >= target)} |")
    correlate = results["correlate"]
    for size in correlate["sizes"]:
        largest = size is correlate["sizes"][-1]
        rows.append(f"| correlation core | {size['indexed_mails']:,} indexed mails | {size['mails_per_s']:,} mails/s "
                    f"({size['cpu_mails_per_s']:,} per CPU-second) | "
                    f"dict In-Reply-To threading {size['baseline_dict_threading_mails_per_s']:,}/s | "
                    f"{_ratio(size['mails_per_s'], size['baseline_dict_threading_mails_per_s'])} | "
                    + (f">= {correlate_bench.TARGET_MAILS_PER_S:,} mails/s | {_yes(correlate['summary']['meets_target'])} |"
                       if largest else "— | — |"))
    summary = correlate["summary"]
    rows.append(f"| correlation core, flat | {correlate['sizes'][0]['indexed_mails']:,} to "
                f"{summary['largest_index']:,} indexed mails | largest/smallest {summary['largest_over_smallest']} | — | — | "
                f"within {correlate_bench.FLAT_WITHIN:.0%} | {_yes(summary['flat_within_25_percent'])} |")
    for run in sorted(results["pipeline"], key=lambda r: r["settings"]["workers"]):
        workers = run["settings"]["workers"]
        met = run["summary"]["meets_target_mails_per_s"] and run["summary"]["meets_target_ratio"]
        per_worker = run["summary"]["pipeline_mails_per_s_per_worker"]
        rows.append(f"| pipeline, {workers} worker{'s' if workers > 1 else ''} | {run['settings']['mails']:,} mails | "
                    f"{run['pipeline_mails_per_s']:,} mails/s ({per_worker:,} per worker) | "
                    f"raw confluent-kafka {run['baseline_confluent_kafka_mails_per_s']:,}/s | "
                    f"{run['summary']['ratio_to_confluent_kafka']:.3g} | >= {pipeline_bench.TARGET_MAILS_PER_S:,} "
                    f"mails/s per worker and >= {pipeline_bench.TARGET_RATIO:.0%} of raw | {_yes(met)} |")
    replay = results["replay"]["summary"]
    rows.append(f"| replay (`threadline replay`) | {replay['mails']:,} mails, {replay['workers']} workers | "
                f"{replay['seconds']:,} s to the last output, {replay['mails_per_s']:,} mails/s "
                f"(command: {replay['command_seconds']:,} s) | raw confluent-kafka read "
                f"{replay['baseline_confluent_kafka_read_mails_per_s']:,}/s | {replay['ratio_to_confluent_kafka']} | "
                f"1,000,000 mails in < {replay_bench.TARGET_SECONDS_PER_MILLION:.0f} s | {_yes(replay['meets_target'])} |")
    clickhouse = results["clickhouse"]
    rows.append(f"| ClickHouse inserts | {clickhouse['insert']['rows']:,} rows | "
                f"{clickhouse['insert']['rows_per_s']:,} rows/s | — | — | — | — |")
    slowest = clickhouse["summary"]
    rows.append(f"| dashboard queries | {clickhouse['settings']['mails']:,} mails, {slowest['queries']} panels | "
                f"{slowest['queries_under_target']} of {slowest['queries']} under {slowest['target_ms']} ms; slowest "
                f"median {slowest['slowest_median_ms']} ms ({slowest['slowest_query']}) | — | — | every median < "
                f"{slowest['target_ms']} ms | {_yes(slowest['queries_under_target'] == slowest['queries'])} |")
    tracking = results["tracking"]
    rows.append(f"| tracking endpoint | {tracking['requests']:,} pixel requests | {tracking['requests_per_s']:,} req/s, "
                f"p99 {tracking['latency_ms']['p99']} ms | — | — | >= {tracking_bench.TARGET_RPS:,} req/s, p99 < "
                f"{tracking_bench.TARGET_P99_MS:g} ms | {_yes(tracking['summary']['meets_target'])} |")
    return rows


def _smaller_than_full(run: dict) -> str:
    """What a full run did at other sizes than the defaults (to fit the time it had), named."""
    full = asdict(FULL)
    other = [f"{name} {value:,}" if isinstance(value, int) else f"{name} {value}"
             for name, value in run["sizes"].items() if not run["quick"] and full[name] != value
             and not (isinstance(value, list) and tuple(value) == full[name])]
    return f" Sizes other than the defaults in this run: {', '.join(other)}." if other else ""


def _section(results: dict) -> str:
    run = results["run"]
    machine = run["machine"]
    replay = results["replay"]["summary"]
    took = ", ".join(f"{name} {s:,.0f} s" for name, s in run["seconds"].items())
    lines = [START_MARKER, "", "## Latest `threadline bench all` run", "",
             f"{machine['date'][:16].replace('T', ' ')} UTC to {run['finished'][11:16]}, {machine['cpu']} "
             f"({machine['cpus']} CPUs), Python {machine['python']}, threadline {machine['threadline']}; "
             f"1-minute load average {machine['load_average_1m']} at the start, {run['load_average_1m_at_end']} "
             "at the end" + (" (`--quick`: much smaller sizes than the targets name)." if run["quick"] else "."),
             f"Each part took: {took}. Every ratio is against the baseline taken in the same run."
             + _smaller_than_full(run), "",
             "| figure | work | result | baseline, same run | ratio | target | met |",
             "|---|---|---|---|---:|---|:---:|", *_rows(results), "",
             f"Replay: peak RSS of the workers {', '.join(f'{m:,.0f}' for m in replay['workers_peak_rss_mb'])} MB "
             f"(their {replay['worker_helpers']} parse processes {replay['worker_helpers_peak_rss_mb']:,.0f} MB together), "
             f"of the broker {replay['broker_peak_rss_mb']:,.0f} MB; CPU seconds: workers {replay['cpu_s']['workers']:,}, "
             f"parse processes {replay['cpu_s']['worker_helpers']:,}, the replay command "
             f"{replay['cpu_s']['replay_command']:,}, the broker {replay['cpu_s']['broker']:,}. Ingest of the "
             f"{results['replay']['ingest']['mails']:,} mails ({results['replay']['ingest']['raw_mb']:,} MB, "
             "generation included) took "
             f"{results['replay']['ingest']['seconds']:,} s.", "",
             f"![mails/s vs indexed mails](figures/{FIGURES['correlate']})",
             f"![mails/s vs mail size](figures/{FIGURES['size']})",
             f"![mails/s vs workers](figures/{FIGURES['workers']})",
             f"![dashboard queries](figures/{FIGURES['clickhouse']})", "", END_MARKER]
    return "\n".join(lines)


def _write_docs(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if START_MARKER in text and END_MARKER in text:
        before, rest = text.split(START_MARKER, 1)
        after = rest.split(END_MARKER, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
