"""``threadline bench replay`` on a real embedded broker, small: the product's replay command
with two workers handles every ingested mail, and the result says what it measured (no speed
is asserted: that is the benchmark's job)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli.main import main


@pytest.mark.slow
def test_bench_replay_runs_threadline_replay_with_two_workers_and_reports_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THREADLINE_WORKER_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "replay.json"
    assert main(["bench", "replay", "--mails", "2000", "--workers", "2", "--tenants-per-partition", "1", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["mails"] == 2000 and summary["workers"] == 2
    assert summary["seconds"] > 0 and summary["mails_per_s"] > 0 and summary["command_seconds"] >= summary["seconds"]
    assert summary["meets_target"] is None  # not measured at the target's size
    assert summary["ratio_to_confluent_kafka"] == pytest.approx(
        summary["mails_per_s"] / summary["baseline_confluent_kafka_read_mails_per_s"], rel=0.02)
    assert result["ingest"]["mails"] == 2000
    assert result["replay"]["outputs_seen"] >= 2000
    # The command's own report: a new generation, and every mail in it.
    assert any("new generation 1 compared with generation 0: 2000 mails" in line
               for line in result["replay"]["command_output"])
    names = [p["name"] for p in result["processes"]]
    assert names.count("worker 1") == names.count("worker 2") == 1 and "broker" in names
    assert len(summary["workers_peak_rss_mb"]) == 2 and all(rss > 50 for rss in summary["workers_peak_rss_mb"])
    assert summary["broker_peak_rss_mb"] > 0
    assert set(summary["cpu_s"]) == {"workers", "worker_helpers", "replay_command", "broker"}
    assert summary["cpu_s"]["workers"] > 0 and summary["worker_helpers"] == names.count("worker 1 helper") + names.count(
        "worker 2 helper")
    assert result["machine"]["date"] and result["machine"]["cpu"]
    assert json.loads(capsys.readouterr().out) == summary
