"""pipeline/runtime/kafka.py BrokerWatch: a real client of the factory against a closed loopback
port logs one line, then a counter now and then, and one line when a broker answers there."""

from __future__ import annotations

import json
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


def librdkafka_record(facility: str, text: str) -> logging.LogRecord:
    """A record as confluent-kafka logs it (facility, client name, text)."""
    return logging.LogRecord(kafka.KAFKA_LOGGER, logging.ERROR, "", 0, "%s [%s] %s",
                             (facility, "rdkafka#consumer-1", text), None)


def test_other_librdkafka_records_pass_unchanged():
    watch = kafka.BrokerWatch()
    for record in (librdkafka_record("CONFWARN", "[thrd:app]: Configuration property x is ignored"),
                   # FAIL lines that name no broker, or that are a coordinator's but no connection's
                   librdkafka_record("FAIL", "[thrd:main]: Fatal error: Local: Fatal error"),
                   librdkafka_record("FAIL", "[thrd:GroupCoordinator]: GroupCoordinator: Disconnected")):
        text = record.args[2]
        assert watch.filter(record) and record.getMessage().endswith(text), record.getMessage()
    assert not watch._down


def test_a_coordinators_connection_failures_are_its_brokers_outage():
    """The two shapes a group consumer's coordinator gave with the embedded broker killed (librdkafka
    2.16): with and without the broker's name. Both are that broker's outage: one line, then counted."""
    watch = kafka.BrokerWatch()
    broker = "127.0.0.1:54991"
    named = librdkafka_record("FAIL", f"[thrd:GroupCoordinator]: GroupCoordinator: {broker}: Connect to ipv4#{broker} "
                                      "failed: Connection refused (after 0ms in state CONNECT)")
    assert watch.filter(named)
    assert named.getMessage() == (f"broker at {broker} unreachable (Connect to ipv4#{broker} failed: Connection "
                                  "refused); retrying, a line every 60 s while it stays so")
    for text in (f"[thrd:{broker}/bootstrap]: {broker}/bootstrap: Connect to ipv4#{broker} failed: Connection refused "
                 "(after 0ms in state CONNECT)",
                 f"[thrd:GroupCoordinator]: GroupCoordinator: Connect to ipv4#{broker} failed: Connection refused "
                 "(after 0ms in state CONNECT)"):
        assert not watch.filter(librdkafka_record("FAIL", text))
    assert list(watch._down) == [broker] and watch._down[broker].attempts == 3



def test_a_broker_with_a_host_name_and_its_coordinators_address_are_one_outage():
    """bootstrap.servers with a host name: the broker's lines name it, its coordinator's may give
    only the address it connects to. One line, in either order, and its return said once, by name."""
    port = 54991
    broker = f"[thrd:localhost:{port}/bootstrap]: localhost:{port}/bootstrap: Connect to ipv4#127.0.0.1:{port} " \
             "failed: Connection refused (after 0ms in state CONNECT)"
    coordinator = f"[thrd:GroupCoordinator]: GroupCoordinator: Connect to ipv4#127.0.0.1:{port} failed: Connection " \
                  "refused (after 0ms in state CONNECT)"
    for first, second in ((broker, coordinator), (coordinator, broker)):
        watch = kafka.BrokerWatch()
        said = [record.getMessage() for record in map(lambda text: librdkafka_record("FAIL", text),
                                                      (first, second, first, second)) if watch.filter(record)]
        assert len(said) == 1 and "unreachable (Connect to ipv4#127.0.0.1" in said[0], said
        assert list(watch._down) == [f"localhost:{port}"] and watch._down[f"localhost:{port}"].attempts == 4
        watch.stats(json.dumps({"brokers": {f"localhost:{port}/1": {"nodename": f"localhost:{port}", "state": "UP"}}}))
        assert not watch._down  # back: said, and a next outage is a new one


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


@pytest.mark.integration
def test_a_group_consumer_whose_broker_is_killed_says_it_once(kafka_lines, monkeypatch, tmp_path):
    """A consumer in a group (its coordinator is a connection of its own) and the embedded broker
    killed under it: one line for the broker, then at most the counter; no raw FAIL line of the coordinator."""
    from pipeline.broker import EmbeddedBroker, create_topics

    monkeypatch.setattr(kafka.BROKER_WATCH, "every_s", 4.0)
    settings = load_settings(None, environ={}).kafka
    with EmbeddedBroker.start(tmp_path / "broker.log") as broker:
        create_topics(settings, broker.bootstrap)
        consumer = kafka.new_group_consumer(settings, broker.bootstrap, f"watch-{tmp_path.name}")
        try:
            consumer.subscribe(["mail.correlated"])
            poll_for(consumer, 30.0, until=lambda: bool(consumer.assignment()))
            assert consumer.assignment() and kafka_lines == []  # in the group, nothing said
            broker.process.kill()
            broker.process.wait(10)
            poll_for(consumer, 14.0)
        finally:
            consumer.close()
    name = broker.bootstrap
    # the first failure: the connection reset, or the next connect refused
    assert kafka_lines[0].startswith(f"broker at {name} unreachable ("), kafka_lines
    assert sum(line.startswith(f"broker at {name} unreachable (") for line in kafka_lines) == 1, kafka_lines
    assert not [line for line in kafka_lines if line.startswith("FAIL")], kafka_lines
    # librdkafka tried many times more (its tries become rarer once the group's session has timed out)
    assert kafka.BROKER_WATCH._down[name].attempts > 20
    counters = [line for line in kafka_lines if line.startswith(f"broker at {name} unreachable since ")]
    assert len(counters) <= 4, kafka_lines
    # besides: the group's session timing out, once
    assert len(kafka_lines) <= 1 + len(counters) + 1, kafka_lines
