"""The consumer loop's contract, driven with an in-process consumer and producer in place of the
client factory's (the loop logic, not Kafka: tests/integration/test_sink.py and test_notify.py
run it on the real broker).

Nothing is committed before the handler is done and the dead letters are flushed; an undecodable
record becomes a dead letter and the batch goes on; a failing step is retried with back-off and
then fails the batch uncommitted."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.runtime import consumer_loop
from pipeline.runtime.consumer_loop import Batch, ConsumerLoop
from pipeline.settings import load_settings

CODEC = AvroCodec(EmbeddedRegistry())
KAFKA = load_settings(None, environ={"THREADLINE_KAFKA_TOPIC_PREFIX": "t."}).kafka


class LoopFailed(RuntimeError):
    pass


class Message:
    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self._topic, self._offset, self._value = topic, offset, value

    def topic(self):
        return self._topic

    def partition(self):
        return 0

    def offset(self):
        return self._offset

    def key(self):
        return b"acme"

    def value(self):
        return self._value

    def error(self):
        return None


class Consumer:
    def __init__(self, events: list, batches: list[list[Message]]) -> None:
        self.events, self.batches, self.subscribed = events, batches, None

    def subscribe(self, names):
        self.subscribed = names

    def consume(self, max_records, timeout_s):
        return self.batches.pop(0) if self.batches else []

    def commit(self, asynchronous=True):
        assert asynchronous is False  # the commit is synchronous: done when poll_once returns
        self.events.append("commit")


class Producer:
    def __init__(self, events: list, undelivered: int = 0) -> None:
        self.events, self.undelivered, self.produced = events, undelivered, []

    def produce(self, topic, value, key):
        self.produced.append((topic, CODEC.decode("deadletter", value), key))
        self.events.append("dead letter")

    def flush(self, timeout_s):
        self.events.append("flush")
        return self.undelivered


def _alert(n: int) -> bytes:
    return CODEC.encode("alerts", {
        "event_id": f"alert-{n}", "tenant": "acme", "event_type": "escalation_warned", "user": "anna@acme.test",
        "event_time": datetime(2026, 3, 2, 9, n, tzinfo=timezone.utc), "source_record_id": f"esc-{n}",
        "assigned_on": None, "record_owner": None, "message": f"Mail {n} is unanswered"})


@pytest.fixture
def clients(monkeypatch):
    """Makes ``_loop`` build its loop over an in-process consumer and dead-letter producer."""
    made = {}

    def new_group_consumer(kafka, bootstrap, group_id):
        made["group_id"] = group_id
        return made["consumer"]

    monkeypatch.setattr(consumer_loop, "new_group_consumer", new_group_consumer)
    monkeypatch.setattr(consumer_loop, "new_producer", lambda kafka, bootstrap: made["producer"])
    return made


class Loop(ConsumerLoop):
    agent, error, log, max_records = "test-agent", LoopFailed, logging.getLogger("test"), 100
    max_attempts, backoff_s = 3, 0.5

    def __init__(self, handle, topics) -> None:
        self.topics, self.handle = topics, handle
        super().__init__(KAFKA, "localhost:9092", "test", CODEC)


def _loop(clients, events, batches, handle, *, topics=("alerts",), undelivered=0):
    clients.update(consumer=Consumer(events, batches), producer=Producer(events, undelivered))
    return Loop(handle, topics), clients["consumer"], clients["producer"]


def test_commit_after_the_handler_and_the_dead_letters_and_an_undecodable_record_does_not_stop_the_batch(clients):
    events, handled = [], []

    def handle(batch: Batch) -> None:
        handled.append(batch)
        events.append("handled")

    batch = [Message("t.alerts", 5, _alert(1)), Message("t.alerts", 6, b"not avro"), Message("t.alerts", 7, _alert(2))]
    loop, consumer, producer = _loop(clients, events, [batch], handle)
    assert (clients["group_id"], consumer.subscribed) == ("test-test-agent", ["t.alerts"])  # <app_id>-<agent>
    assert loop.poll_once() == 3
    assert events == ["dead letter", "handled", "flush", "commit"]
    [batch] = handled
    assert list(batch) == ["alerts"]
    assert [(offset, record["event_id"]) for _, offset, record in batch["alerts"]] == [(5, "alert-1"), (7, "alert-2")]
    [(topic, letter, key)] = producer.produced
    assert (topic, key) == ("t.deadletter", b"acme")
    assert (letter["source_topic"], letter["source_offset"], letter["reason"], letter["agent"], letter["value"]) == (
        "t.alerts", 6, "not_confluent_wire_format", "test-agent", b"not avro")


def test_nothing_is_committed_when_the_dead_letters_are_not_delivered(clients):
    events = []
    loop, _, _ = _loop(clients, events, [[Message("t.alerts", 0, b"not avro")]], lambda batch: None, undelivered=1)
    with pytest.raises(LoopFailed, match="dead letters of the test-agent"):
        loop.poll_once()
    assert "commit" not in events


def test_an_empty_poll_neither_handles_nor_commits(clients):
    events = []
    loop, _, _ = _loop(clients, events, [], lambda batch: events.append("handled"))
    assert loop.poll_once() == 0
    assert events == []


def test_an_undecodable_dead_letter_is_not_fed_back_to_the_dead_letter_topic(clients):
    events = []
    loop, _, producer = _loop(clients, events, [[Message("t.deadletter", 0, b"not avro")]], lambda batch: None,
                              topics=("deadletter",))
    assert loop.poll_once() == 1
    assert producer.produced == [] and events == ["flush", "commit"]


def test_a_failing_step_is_retried_with_exponential_backoff_until_it_succeeds(monkeypatch, clients):
    delays, events, failures = [], [], [OSError("down"), OSError("still down")]
    monkeypatch.setattr(consumer_loop.time, "sleep", delays.append)

    def step() -> None:
        if failures:
            raise failures.pop(0)
        events.append("stored")

    loop, _, _ = _loop(clients, events, [[Message("t.alerts", 0, _alert(1))]], lambda batch: loop.retry("store", step))
    assert loop.poll_once() == 1
    assert delays == [0.5, 1.0] and events == ["stored", "flush", "commit"]


def test_a_step_failing_max_attempts_times_raises_without_a_commit(monkeypatch, clients):
    delays, events = [], []
    monkeypatch.setattr(consumer_loop.time, "sleep", delays.append)

    def step() -> None:
        raise OSError("down")

    loop, _, _ = _loop(clients, events, [[Message("t.alerts", 0, _alert(1))]], lambda batch: loop.retry("store", step))
    loop.max_attempts, loop.backoff_s = 4, 0.25
    with pytest.raises(LoopFailed, match="store failed 4 times: down"):
        loop.poll_once()
    assert delays == [0.25, 0.5, 1.0] and events == []
