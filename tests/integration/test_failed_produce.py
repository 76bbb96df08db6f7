"""Issue 12: a failed produce stops the batch before anything is acknowledged.

Faust's ``take_events`` acknowledges a batch when the agent leaves it, by an exception too, and
then commits it; so a worker whose outputs cannot be produced must end at once (exit code 70)
instead, and the restarted worker must read the batch again.

The failure is a real one: the worker's own librdkafka producer refuses a record over its
``message.max.bytes``, set low for the first run through ``kafka.producer_options`` (as on a
cluster whose record limit is too small for a mail to 6,000 recipients); the second run has the
default limit, as after an operator raised it.  Tansu, the embedded broker, enforces no record
limit of its own (a topic's ``max.message.bytes`` is stored but not applied) and takes records
for deleted topics, so the broker cannot be made to refuse them.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.runtime.kafka import client_config, new_producer, topic_name
from pipeline.mail.parse import parse_mail
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import WorkerProcess, first_crash, wait_for_outputs
from test_pipeline import engine_decisions, ingest_all, pipeline_decisions, synthetic

pytestmark = pytest.mark.integration

EXIT_BATCH_FAILED = 70
LIMIT = 100_000  # bytes: every usual output fits; the wide mail's mail.correlated record (~160 kB) does not


def wide_mail(recipients: int = 6000) -> bytes:
    """One mail to many recipients: a 180 kB header (under the 256 KB limit), so a 160 kB record."""
    to = ",\r\n ".join(f"customer{n:05d}@wide.example" for n in range(recipients))
    return (f"From: Ann Agent <ann@acme.example>\r\nTo: {to}\r\nSubject: The new price list\r\n"
            "Message-ID: <price-list-2026@acme.example>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\n"
            "Hello all, the new prices are attached.\r\n").encode()


def committed(settings, bootstrap: str, group: str) -> dict[int, int]:
    """The consumer group's committed ``mail.raw`` offsets (next record to read), by partition."""
    topic = topic_name(settings.kafka, "mail.raw")
    consumer = Consumer({**client_config(settings.kafka, bootstrap), "group.id": group,
                         "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(settings.kafka.partitions)],
                                     timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


def test_a_failed_produce_exits_70_without_committing_and_the_restarted_worker_loses_nothing(sandbox):
    settings = sandbox.settings()
    group = f"{sandbox.app_id}-g0"
    messages = synthetic("acme", 400, seed=70)
    before, after = messages[:200], [("wide:acme", wide_mail())] + messages[200:]
    mail = {"acme": before + after}

    data_dir = sandbox.root / "worker-data"
    first = WorkerProcess.start(bootstrap=sandbox.bootstrap, data_dir=data_dir, generation=0,
                                log_path=sandbox.root / "first.log", settings_file=sandbox.settings_file(),
                                extra_env={"THREADLINE_KAFKA_PRODUCER_OPTIONS": json.dumps({"message.max.bytes": LIMIT})})
    sandbox.workers.append(first)

    # First the mail that fits, and a record that is no mail at all: handled and committed.
    producer = new_producer(settings.kafka, sandbox.bootstrap)
    producer.produce(topic_name(settings.kafka, "mail.raw"), b"not avro at all", b"acme")
    assert producer.flush(10) == 0
    assert ingest_all(sandbox, settings, {"acme": before}) == len(before)
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, len(before) + 1, workers=[first],
                     timeout_s=90)
    (partition,) = {p for p, _, _, _ in read_topic(settings.kafka, sandbox.bootstrap, "mail.raw")}  # acme's
    deadline = time.monotonic() + 30
    while committed(settings, sandbox.bootstrap, group) != {partition: len(before) + 1}:
        assert first.alive, first.exit_report()
        assert time.monotonic() < deadline, f"not committed: {committed(settings, sandbox.bootstrap, group)}"
        time.sleep(0.5)

    # Then the wide mail and the rest: its output is refused, the worker ends acknowledging nothing.
    assert ingest_all(sandbox, settings, {"acme": after}) == len(after)
    try:
        first.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop on a failed produce:\n{first.log_tail()}")
    report = first.exit_report()
    assert first.process.returncode == EXIT_BATCH_FAILED, report
    crash = first_crash(first.log_path.read_text(errors="replace"))
    assert "a batch failed, the worker stops without committing" in crash.header, report
    assert crash.reason.startswith("RuntimeError: cannot produce a record of ") and (
        f"bytes to {topic_name(settings.kafka, 'mail.correlated')}: MSG_SIZE_TOO_LARGE" in crash.reason), report
    assert f"over this producer's message.max.bytes, {LIMIT}: kafka.producer_options raises it" in crash.reason
    assert committed(settings, sandbox.bootstrap, group) == {partition: len(before) + 1}
    correlated = {v["message_id"] for _, _, _, v in
                  read_topic(settings.kafka, sandbox.bootstrap, "mail.correlated", sandbox.codec)}
    wide_id = parse_mail(wide_mail()).message_id
    assert wide_id not in correlated

    # The limit raised (the default), the same worker again: it reads the batch again.
    last = sandbox.start_worker(data_dir=data_dir, name="last")
    total = len(before) + len(after) + 1
    counts = wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, total, workers=[last],
                              timeout_s=90)
    assert counts["deadletter"] == 1
    assert last.alive and first_crash(last.log_path.read_text(errors="replace")) is None, last.log_tail()
    decided = pipeline_decisions(sandbox, settings, 0)
    assert decided == engine_decisions(settings, mail)
    assert ("acme", wide_id) in decided
    letters = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec)]
    assert [(v["source_partition"], v["source_offset"], v["reason"]) for v in letters] == [
        (partition, 0, "not_confluent_wire_format")]
