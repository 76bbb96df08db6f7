"""``topic_extent`` on the real embedded broker, whose high watermark is the base offset of the
last batch + 1 (INFRA.md §2): the end found is exact however the records were batched, without
reading the partition, and partitions without records are left out."""

from __future__ import annotations

from confluent_kafka import Producer

from pipeline.broker import create_topics
from pipeline.contracts.topics import MAIL_RAW
from pipeline.runtime.kafka import topic_name
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import topic_extent


def test_extent_is_exact_for_batched_and_single_records_and_skips_empty_partitions(sandbox):
    kafka = sandbox.settings().kafka
    create_topics(kafka, sandbox.bootstrap)
    assert topic_extent(kafka, sandbox.bootstrap, MAIL_RAW) == {}
    assert topic_extent(kafka, sandbox.bootstrap, "no.such.topic") == {}
    name = topic_name(kafka, MAIL_RAW)
    producer = Producer({"bootstrap.servers": sandbox.bootstrap, "linger.ms": 50})
    for n in range(1_112):  # large batches: the broker's high watermark says 1 for most partitions
        producer.produce(name, b"x" * 100, partition=n % 3)
    producer.flush(30)
    for _ in range(5):  # then batches of one record on partition 0
        producer.produce(name, b"y", partition=0)
        producer.flush(30)
    ends: dict[int, int] = {}
    for partition, offset, _, _ in read_topic(kafka, sandbox.bootstrap, MAIL_RAW):
        ends[partition] = offset + 1
    assert ends == {0: 376, 1: 371, 2: 370}
    assert topic_extent(kafka, sandbox.bootstrap, MAIL_RAW) == {p: (0, end) for p, end in ends.items()}
