"""pipeline/runtime/kafka.py BrokerWatch: a real client of the factory against a closed loopback
port logs one line, then a counter now and then, and one line when a broker answers there."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from pipeline.broker import free_port
from pipeline.runtime import kafka
from pipeline.settings import load_settings


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def kafka_lines():
    handler = Lines()
    logger = logging.getLogger(kafka.KAFKA_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def poll_for(producer, seconds: float, until=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        producer.poll(0.2)


@pytest.mark.integration  # a real client and broker on loopback
def test_a_closed_port_gives_one_line_then_a_counter_then_one_line_when_a_broker_answers(kafka_lines, monkeypatch,
                                                                                         tmp_path):
    from pipeline.bench.tracking import broker_on_port

    monkeypatch.setattr(kafka.BROKER_WATCH, "every_s", 3.0)
    port = free_port()  # closed: nothing listens there
    producer = kafka.new_producer(load_settings(None, environ={}).kafka, f"127.0.0.1:{port}")
    producer.produce("watch", b"waits for the broker")
    poll_for(producer, 7.0)
    broker = f"127.0.0.1:{port}"
    assert kafka_lines[0] == (f"broker at {broker} unreachable (Connect to ipv4#{broker} failed: Connection refused); "
                              "retrying, a line every 3 s while it stays so")
    counters = kafka_lines[1:]
    assert 1 <= len(counters) <= 3, kafka_lines  # librdkafka tried many times more
    assert all(line.startswith(f"broker at {broker} unreachable since ") for line in counters)
    attempts = int(counters[-1].rsplit("(", 1)[1].split()[0])
    assert attempts > len(kafka_lines)

    with broker_on_port(port, tmp_path / "broker.log"):
        poll_for(producer, 20.0, until=lambda: "reachable again" in kafka_lines[-1])
        assert kafka_lines[-1].startswith(f"broker at {broker} reachable again after ")
        assert producer.flush(10) == 0  # it is really connected: the waiting record is delivered
        poll_for(producer, 6.0)  # a statistics report later: nothing more to say
    assert sum("reachable again" in line for line in kafka_lines) == 1
    assert len(kafka_lines) == 2 + len(counters)


def test_other_librdkafka_records_pass_unchanged():
    watch = kafka.BrokerWatch()
    record = logging.LogRecord(kafka.KAFKA_LOGGER, logging.WARNING, "", 0, "%s [%s] %s",
                               ("CONFWARN", "rdkafka#producer-1", "[thrd:app]: Configuration property x is ignored"),
                               None)
    assert watch.filter(record) and record.getMessage().startswith("CONFWARN [rdkafka#producer-1]")


@pytest.mark.integration
def test_threadline_tracking_against_a_closed_port_prints_a_few_lines_not_hundreds(tmp_path):
    port = free_port()
    environment = {"THREADLINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "THREADLINE_WORKER_DATA_DIR": str(tmp_path),
                   "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tracking", "--port", str(free_port())],
                               env={**environment, "PYTHONPATH": ":".join(sys.path)}, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(12)
    finally:
        process.terminate()
        err = process.communicate(timeout=30)[1]
    lines = err.splitlines()
    assert sum(f"broker at 127.0.0.1:{port} unreachable" in line for line in lines) == 1, err
    assert not [line for line in lines if line.startswith("%")], err  # no raw librdkafka line
    assert len(lines) <= 6, err


@pytest.mark.integration
def test_commands_against_a_closed_port_say_it_once_and_fail_in_one_line(tmp_path):
    """`convert` (topics created first) and `erase` (the topics' metadata read by the command):
    the watch's line within a second or two, then one error line, no traceback."""
    port = free_port()
    environment = {"THREADLINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "THREADLINE_WORKER_DATA_DIR": str(tmp_path),
                   "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    commands = {"convert": ["convert", "--campaign", "c1", "--revenue", "1"],
                "erase": ["erase", "--address", "someone@example.com", "--yes"]}
    processes = {name: subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], env=environment, cwd=tmp_path,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, argv in commands.items()}
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        lines = err.splitlines()
        assert process.returncode == 2 and out == "", (name, err)
        assert lines[0].startswith(f"broker at 127.0.0.1:{port} unreachable (Connect to"), (name, err)
        assert len(lines) == 2 and lines[1].startswith("threadline: "), (name, err)
        assert "_TRANSPORT" in lines[1] and "Traceback" not in err, (name, err)
