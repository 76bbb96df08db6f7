"""Read a topic from the beginning to its current end, decoded: for tests, the demo and replays;
or follow it (``threadline tail``).

Tansu's high watermarks are wrong for multi-record batches (INFRA.md §2), so the end of each
partition is found by consuming to EOF (``enable.partition.eof``), never from watermarks; with a
short ``fetch.wait.max.ms``, as the broker holds a fetch at the end that long (500 ms by default).
Reading from the end starts at the broker's end offset and skips what comes before each
partition's first EOF: on Tansu that end lies inside the last batch, on Kafka it is exact.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from pipeline.runtime.kafka import cluster_metadata, new_reader, topic_name
from pipeline.contracts.avro import AvroCodec
from pipeline.settings import KafkaSettings


class TopicMissing(LookupError):
    """The topic is not on the broker."""


def read_topic(kafka: KafkaSettings, bootstrap: str, topic: str, codec: AvroCodec | None = None,
               timeout_s: float = 30.0) -> Iterator[tuple[int, int, bytes | None, dict | bytes]]:
    """(partition, offset, key, value) of every record now in ``topic``; values decoded when a
    codec is given.  No consumer group is joined and no offset committed."""
    for message in read_messages(kafka, bootstrap, topic_name(kafka, topic), timeout_s):
        value = message.value()
        yield message.partition(), message.offset(), message.key(), codec.decode(topic, value) if codec else value


def read_messages(kafka: KafkaSettings, bootstrap: str, name: str, timeout_s: float = 30.0, *,
                  from_end: bool = False, follow: bool = False, missing_ok: bool = True,
                  on_end: Callable[[], None] | None = None, stop: Callable[[], bool] | None = None) -> Iterator:
    """Every confluent-kafka message now in the topic called ``name`` (no prefix added), in
    partition order within each partition; nothing when the topic does not exist (or
    :class:`TopicMissing` unless ``missing_ok``).  ``from_end``: only records written after the
    read began; ``follow``: do not stop at the end, wait for more until the caller stops;
    ``on_end`` is called once, when every partition has reached its end; ``stop`` is asked
    between polls (at least every half second, every second while waiting for the broker's
    metadata) whether to stop now.

    ``timeout_s`` bounds the wait for the topic's metadata and, when not following, for each
    next record or end of a partition (TimeoutError): a long topic takes as long as it takes."""
    from confluent_kafka import OFFSET_END, KafkaError, KafkaException, TopicPartition

    # Following, the broker may hold a fetch at the end as long as it likes: that is the wait.
    consumer = new_reader(kafka, bootstrap, "threadline-reader",
                          {"enable.partition.eof": True, "auto.offset.reset": "earliest",
                           **({} if follow else {"fetch.wait.max.ms": 10})})
    try:
        metadata = cluster_metadata(consumer, timeout_s, name, stop)
        if metadata is None:
            return  # stopped while waiting for the broker
        if name not in metadata.topics or metadata.topics[name].error is not None:
            if missing_ok:
                return
            raise TopicMissing(f"there is no topic {name} on the broker at {bootstrap}")
        partitions = sorted(metadata.topics[name].partitions)
        consumer.assign([TopicPartition(name, p, OFFSET_END if from_end else 0) for p in partitions])
        ended: set[int] = set()  # partitions whose end was reached once
        deadline = time.monotonic() + timeout_s
        while (follow or len(ended) < len(partitions)) and not (stop is not None and stop()):
            if not follow and time.monotonic() > deadline:
                pending = sorted(set(partitions) - ended)
                raise TimeoutError(f"reading {name}: partitions {pending} gave no record and no end within {timeout_s} s")
            message = consumer.poll(0.5)
            if message is None:
                continue
            deadline = time.monotonic() + timeout_s
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    if message.partition() not in ended:
                        ended.add(message.partition())
                        if on_end is not None and len(ended) == len(partitions):
                            on_end()
                    continue
                raise KafkaException(message.error())
            if from_end and message.partition() not in ended:
                continue
            yield message
    finally:
        consumer.close()
