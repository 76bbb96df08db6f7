"""Read a topic from the beginning to its current end, decoded: for tests, the demo and replays.

Tansu's high watermarks are wrong for multi-record batches (INFRA.md §2), so the end of each
partition is found by consuming to EOF (``enable.partition.eof``), never from watermarks; with a
short ``fetch.wait.max.ms``, as the broker holds a fetch at the end that long (500 ms by default).
"""

from __future__ import annotations

import time
from typing import Iterator

from pipeline.runtime.kafka import new_reader, topic_name
from pipeline.contracts.avro import AvroCodec
from pipeline.settings import KafkaSettings


def read_topic(kafka: KafkaSettings, bootstrap: str, topic: str, codec: AvroCodec | None = None,
               timeout_s: float = 30.0) -> Iterator[tuple[int, int, bytes | None, dict | bytes]]:
    """(partition, offset, key, value) of every record now in ``topic``; values decoded when a
    codec is given.  No consumer group is joined and no offset committed."""
    for message in read_messages(kafka, bootstrap, topic_name(kafka, topic), timeout_s):
        value = message.value()
        yield message.partition(), message.offset(), message.key(), codec.decode(topic, value) if codec else value


def read_messages(kafka: KafkaSettings, bootstrap: str, name: str, timeout_s: float = 30.0) -> Iterator:
    """Every confluent-kafka message now in the topic called ``name`` (no prefix added), in
    partition order within each partition; nothing when the topic does not exist."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    consumer = new_reader(kafka, bootstrap, "threadline-reader",
                          {"enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
    try:
        metadata = consumer.list_topics(name, timeout=timeout_s)
        if name not in metadata.topics or metadata.topics[name].error is not None:
            return
        partitions = sorted(metadata.topics[name].partitions)
        consumer.assign([TopicPartition(name, p, 0) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {name}: partitions {sorted(pending)} gave no end within {timeout_s} s")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                raise KafkaException(message.error())
            yield message
    finally:
        consumer.close()
