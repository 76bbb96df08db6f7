"""`make demo` runs `threadline up`: the whole embedded stack end to end, in a fresh folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_up_runs_the_sample_end_to_end_and_writes_the_report(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "up", "--exit-when-done", "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    out = result.stdout
    assert "mails handled" in out and "InReplyTo" in out and "SmartMatching" in out
    assert "ESCALATED" in out and "dead letters: none" in out
    # The sample's automatic mail is labelled, and the figures are per conversation and per target.
    assert "automatic mail (labelled" in out and "auto_reply" in out and "bounce" in out
    assert "escalations now, per conversation" in out and "first_response" in out and "resolution" in out
    report = (tmp_path / "data" / "report.html").read_text()
    assert "Threadline: SLA targets" in report
    assert "Spring offer 1" in report  # campaign ROI from the generated traffic, through the tracking agent
    assert "Threadline: correlation quality" in report


def test_up_reports_the_agent_crash_that_stopped_a_worker_not_the_cancellations_after_it(sandbox):
    """A table entry the escalation agent cannot read (not JSON) crashes it on the first mail,
    while the correlator goes on or has finished: whichever step of `up` sees the worker gone
    (the wait for outputs, the final check, or the keep-running loop) must name that crash and
    its traceback, and exit non-zero."""
    from confluent_kafka import Producer

    from pipeline.broker import create_topics
    from pipeline.runtime.kafka import client_config
    from pipeline.up import write_sample_mbox

    settings = sandbox.settings()
    changelog = f"{sandbox.app_id}-g0-escalation-state-changelog"  # Faust's name for the table's topic
    create_topics(settings.kafka.model_copy(update={"topic_prefix": ""}), sandbox.bootstrap, (changelog,))
    producer = Producer(client_config(settings.kafka, sandbox.bootstrap))
    for partition in range(settings.kafka.partitions):
        producer.produce(changelog, b"not json", json.dumps("default\x1fbroken").encode(), partition=partition)
    assert producer.flush(10) == 0
    mailbox = write_sample_mbox(sandbox.root / "small.mbox", count=20)

    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    env["THREADLINE_KAFKA_BOOTSTRAP"] = sandbox.bootstrap
    # Without --exit-when-done: `up` must end by itself because the worker crashed.
    up = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--settings", str(sandbox.settings_file()), "up",
                           str(mailbox), "--direction", "in", "--no-progress"],
                          cwd=sandbox.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = up.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        up.send_signal(signal.SIGTERM)  # `up` stops the worker and the endpoint it started
        stdout, stderr = up.communicate(timeout=60)
        pytest.fail(f"up did not notice the crashed worker: {stdout[-2000:]}{stderr[-2000:]}")
    output = stdout + stderr
    assert up.returncode != 0, output[-3000:]
    # On stderr when the wait for outputs saw it ("threadline: a worker exited ..."), else on stdout.
    first = next((line for line in output.splitlines() if "a worker exited (code" in line), output[-3000:])
    assert "JSONDecodeError" in first, output[-3000:]
    assert 'pipeline/streams/escalation.py", line' in output and "json.loads(value)" in output
    assert f"first crash in {sandbox.root / 'data' / 'workers' / '0.log'}:" in output
    assert "CancelledError" not in output  # what Faust logs for the other agents, when it does, is left out
