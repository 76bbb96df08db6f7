"""``threadline bench correlate``: the pure engine's speed as its index grows, and the parse rate.

For each size N a fresh engine is filled with N synthetic mails (seeded, see pipeline.synth),
then the next ``measure`` mails are timed.  The baseline, timed on the same records in the same
run, is the least any threading must do: one dict lookup of In-Reply-To and one dict insert per
mail.  Machines here are shared, so compare ratios, not absolute rates.  The collector runs with
the worker's thresholds (``worker.gc_thresholds``, :mod:`pipeline.runtime.collector`).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from pipeline.bench.common import current_rss_mb, machine_facts
from pipeline.correlation.engine import Correlator
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError, MailRecord
from pipeline.runtime.collector import tune_collector
from pipeline.settings import Settings
from pipeline.synth import START, MailGenerator, render_rfc5322

# Flat means: the rate at the largest index is at least this share of the rate at the smallest.
FLAT_WITHIN = 0.25
TARGET_MAILS_PER_S = 50_000


def _baseline_rate(mails: Sequence[MailRecord]) -> float:
    """Mails/s of the minimal In-Reply-To threading loop on the same records."""
    parents: dict[str, str] = {}
    started = time.perf_counter()
    for mail in mails:
        parent = parents.get(mail.in_reply_to[0]) if mail.in_reply_to else None
        parents[mail.message_id] = parent or mail.message_id
    return len(mails) / (time.perf_counter() - started)


def _timed_correlation(correlator: Correlator, mails: Sequence[MailRecord]) -> tuple[float, float]:
    """(mails/s of wall time, mails/s of this process's CPU time): on a shared machine the second
    is the rate of one core, whatever else runs."""
    gc.collect()
    started, cpu_started = time.perf_counter(), time.process_time()
    correlate = correlator.correlate
    for mail in mails:
        correlate(mail)
    cpu = time.process_time() - cpu_started
    return len(mails) / (time.perf_counter() - started), len(mails) / cpu if cpu else float("inf")


def _one_size(size: int, measure: int, seed: int, progress: Callable[[str], None]) -> dict:
    settings = Settings()
    generator = MailGenerator(seed)
    correlator = Correlator(settings.correlation, clock=lambda: START)
    rss_before = current_rss_mb()
    filled = 0
    fill_seconds = 0.0
    chunk = 50_000
    while filled < size:
        batch = list(generator.mails(min(chunk, size - filled)))
        started = time.perf_counter()
        for mail in batch:
            correlator.correlate(mail)
        fill_seconds += time.perf_counter() - started
        filled += len(batch)
        progress(f"size {size:,}: indexed {filled:,}")
    timed = list(generator.mails(measure))
    rate, cpu_rate = _timed_correlation(correlator, timed)
    baseline = _baseline_rate(timed)
    return {
        "indexed_mails": size,
        "index_entries_after": len(correlator.index),
        "measured_mails": measure,
        "mails_per_s": round(rate),
        "cpu_mails_per_s": round(cpu_rate),
        "fill_mails_per_s": round(filled / fill_seconds) if fill_seconds else None,
        "baseline_dict_threading_mails_per_s": round(baseline),
        "ratio_to_baseline": round(rate / baseline, 4),
        "index_rss_mb": round(current_rss_mb() - rss_before, 1),
    }


def _parse_rates(seed: int, corpus_mbox: Path | None) -> dict:
    generator = MailGenerator(seed)
    raws = [render_rfc5322(mail) for mail in generator.mails(20_000)]
    started = time.perf_counter()
    for raw in raws:
        parse_mail(raw)
    result = {"synthetic_mails": len(raws), "synthetic_mails_per_s": round(len(raws) / (time.perf_counter() - started))}
    if corpus_mbox is not None and corpus_mbox.is_file():
        from pipeline.mail.sources import iter_mbox

        messages = [raw for _, raw in iter_mbox(corpus_mbox)]
        started = time.perf_counter()
        for raw in messages:
            try:
                parse_mail(raw)
            except MailParseError:
                pass
        elapsed = time.perf_counter() - started
        result.update(corpus=str(corpus_mbox.parent.name), corpus_mails=len(messages),
                      corpus_mails_per_s=round(len(messages) / elapsed),
                      corpus_mb_per_s=round(sum(map(len, messages)) / elapsed / 2**20, 2))
    return result


def _corpus_rates(corpora: Path, report: Callable[[str], None]) -> list[dict]:
    """The engine alone on each real corpus's parsed mail (parsing not timed), as ``threadline
    eval`` feeds it: with the threading headers and without them, a fresh engine each; beside the
    same dict In-Reply-To baseline on the same records."""
    from pipeline.batch import ParseFailure, parse_sources, strip_threading_headers

    settings = Settings().correlation
    results = []
    for folder in sorted(path for path in corpora.iterdir() if (path / "messages.mbox").is_file()):
        report(f"corpus {folder.name}: parse")
        mails = [item for item in parse_sources([str(folder / "messages.mbox")], settings)
                 if not isinstance(item, ParseFailure)]
        row: dict = {"corpus": folder.name, "mails": len(mails)}
        for mode, records in (("headers", mails), ("stripped", [strip_threading_headers(mail) for mail in mails])):
            report(f"corpus {folder.name}: {mode}")
            rate, cpu_rate = _timed_correlation(Correlator(settings, clock=lambda: START), records)
            row[mode] = {"mails_per_s": round(rate), "cpu_mails_per_s": round(cpu_rate),
                         "baseline_dict_threading_mails_per_s": round(_baseline_rate(records))}
        results.append(row)
    return results


def run_correlate_bench(sizes: Sequence[int], *, seed: int = 7, measure: int = 20_000, progress: bool = True,
                        corpus_mbox: Path | None = None, corpora: Path | None = None,
                        gc_thresholds: tuple[int, int, int] | None = None) -> dict:
    """``corpora``: a folder of corpora (``messages.mbox`` each) to time the engine on real mail too;
    ``gc_thresholds``: the collector's thresholds while it runs (default: the worker's, so that the
    engine is measured as the worker runs it)."""
    def report(message: str) -> None:
        if progress:
            print(f"\r{message:<60}", end="", flush=True, file=sys.stderr)

    worker = Settings().worker
    if gc_thresholds is not None:
        worker = worker.model_copy(update={"gc_thresholds": gc_thresholds})
    before = tune_collector(worker)
    try:
        results = [_one_size(size, measure, seed, report) for size in sorted(sizes)]
        real = _corpus_rates(corpora, report) if corpora is not None else None
        report("parse rate")
        parse = _parse_rates(seed, corpus_mbox)
    finally:
        gc.set_threshold(*before)
    if progress:
        print(file=sys.stderr)
    smallest, largest = results[0], results[-1]
    flatness = largest["mails_per_s"] / smallest["mails_per_s"]
    result = {
        "benchmark": "correlate",
        "machine": machine_facts(),
        "settings": {"seed": seed, "measure": measure, "strategy": Settings().correlation.smart_matching.strategy,
                     "gc_thresholds": list(worker.gc_thresholds)},
        "sizes": results,
        "parse": parse,
        "summary": {
            "mails_per_s_at_largest": largest["mails_per_s"],
            "cpu_mails_per_s_at_largest": largest["cpu_mails_per_s"],
            "largest_index": largest["indexed_mails"],
            "index_rss_mb_at_largest": largest["index_rss_mb"],
            "target_mails_per_s": TARGET_MAILS_PER_S,
            "meets_target": largest["mails_per_s"] >= TARGET_MAILS_PER_S,
            "largest_over_smallest": round(flatness, 3),
            "flat_within_25_percent": flatness >= 1 - FLAT_WITHIN,
            "parse_mails_per_s": parse["synthetic_mails_per_s"],
        },
    }
    if real is not None:
        result["corpora"] = real
    return result
