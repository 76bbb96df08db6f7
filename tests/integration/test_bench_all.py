"""``threadline bench all --quick`` on real processes (embedded broker, workers, chDB, the tracking
endpoint): every part runs, the JSON holds each figure with its machine and same-run baseline, and
the docs section and plots are written. No speed is asserted."""

from __future__ import annotations

import gc
import json

import pytest

from pipeline.bench.all import END_MARKER, FIGURES, START_MARKER
from pipeline.cli.main import main
from pipeline.settings import Settings


@pytest.mark.slow
def test_bench_all_quick_writes_every_figure_the_docs_section_and_the_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("THREADLINE_WORKER_DATA_DIR", str(tmp_path / "data"))
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text(f"# Benchmarks\n\nhand-written analysis\n\n{START_MARKER}\nold run\n{END_MARKER}\n\nafter\n")
    out = tmp_path / "results" / "all-summary.json"
    corpus = tmp_path / "corpus" / "ponymail"
    corpus.mkdir(parents=True)
    (corpus / "messages.mbox").write_bytes(b"".join(
        b"From sender@example.org Mon Jan  1 00:00:00 2024\n"
        + f"Message-ID: <m{n}@example.org>\nFrom: a@example.org\nSubject: mail {n}\n\nbody {n}\n\n".encode()
        for n in range(50)))
    collector = gc.get_threshold()
    assert main(["bench", "all", "--quick", "--docs", str(docs), "--corpus", str(corpus.parent), "-o", str(out)]) == 0
    assert gc.get_threshold() == collector  # the core ran with the worker's thresholds, then gave them back

    results = json.loads((out.parent / "all.json").read_text())
    assert set(results) == {"parse", "correlate", "pipeline", "replay", "clickhouse", "tracking", "run"}
    assert results["run"]["quick"] and set(results["run"]["seconds"]) == {
        "parsing the real corpora", "correlation core", "pipeline", "replay", "clickhouse", "tracking endpoint"}
    for name in ("parse", "correlate", "replay", "clickhouse", "tracking"):
        assert results[name]["machine"]["date"] and results[name]["machine"]["cpu"], name
    assert [size["indexed_mails"] for size in results["correlate"]["sizes"]] == [1_000, 10_000]
    assert all(size["baseline_dict_threading_mails_per_s"] > 0 for size in results["correlate"]["sizes"])
    assert results["correlate"]["settings"]["gc_thresholds"] == list(Settings().worker.gc_thresholds)
    assert results["parse"]["overall"]["mails"] == 50 and results["parse"]["overall"]["by_size"]
    assert [run["settings"]["workers"] for run in results["pipeline"]] == [1, 2]
    assert all(run["baseline_confluent_kafka_mails_per_s"] > 0 for run in results["pipeline"])
    replay = results["replay"]["summary"]
    assert replay["mails"] == 3_000 and replay["workers"] == 2 and replay["baseline_confluent_kafka_read_mails_per_s"] > 0
    assert results["tracking"]["summary"]["all_hits_recorded"]
    summary = json.loads(out.read_text())["summary"]
    assert summary["replay"] == replay and len(summary["pipeline"]) == len(results["pipeline"])

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written analysis\n\n") and text.endswith(f"{END_MARKER}\n\nafter\n")
    section = text.split(START_MARKER)[1].split(END_MARKER)[0]
    assert "old run" not in section and results["run"]["machine"]["cpu"] in section and "`--quick`" in section
    for figure in ("parsing", "correlation core", "pipeline, 1 worker", "pipeline, 2 workers", "replay", "ClickHouse inserts",
                   "dashboard queries", "tracking endpoint"):
        assert f"| {figure}" in section, figure
    assert f"{replay['seconds']:,} s to the last output" in section
    for png in FIGURES.values():
        assert (docs.parent / "figures" / png).read_bytes().startswith(b"\x89PNG"), png
        assert f"figures/{png}" in section
