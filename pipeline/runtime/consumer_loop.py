"""The one consume -> handle -> commit loop of the plain consumer groups (the ClickHouse sink, the
alert notifier; the stream agents' loop is Faust's): at least once, nothing skipped or dropped.

An undecodable record becomes a dead letter and the batch goes on without it.  A batch is
committed, synchronously, only after ``handle`` returned and its dead letters are flushed; an
error or a crash before that hands the whole batch to the group again, so ``handle`` is idempotent.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from pipeline.contracts.avro import AvroCodec, AvroDecodeError
from pipeline.contracts.records import SourcePosition, deadletter_record
from pipeline.contracts.topics import DEADLETTER
from pipeline.runtime.kafka import new_group_consumer, new_producer, topic_name
from pipeline.settings import KafkaSettings

# A batch's decoded records: logical topic name -> [(partition, offset, record)], in consumed order.
Batch = dict[str, list[tuple[int, int, dict]]]


class ConsumerLoop:
    """A consumer in the group ``<app_id>-<agent>`` -> :meth:`handle` -> commit, with a dead-letter
    producer.  A subclass sets the class attributes below and implements :meth:`handle`."""

    topics: tuple[str, ...]  # logical names, without the installation's prefix
    agent: str  # names its group and its dead letters
    error: type[Exception]  # raised when a batch cannot be made durable
    log: logging.Logger
    max_records: int  # per batch
    max_attempts: int  # per step of :meth:`retry`; the first retry waits backoff_s, each further one twice as long
    backoff_s: float

    def __init__(self, kafka: KafkaSettings, bootstrap: str, app_id: str, codec: AvroCodec) -> None:
        self.consumer = new_group_consumer(kafka, bootstrap, f"{app_id}-{self.agent}")
        self.deadletters = new_producer(kafka, bootstrap)
        self.deadletter_topic = topic_name(kafka, DEADLETTER)
        self.codec = codec
        self._topics = {topic_name(kafka, topic): topic for topic in self.topics}
        self.consumer.subscribe(list(self._topics))

    def handle(self, batch: Batch) -> None:
        """Make one decoded batch's output durable; the loop commits the batch after it returns."""
        raise NotImplementedError

    def retry(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action`` until it succeeds; after ``max_attempts`` failures raise ``error``."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return action()
            except Exception as exc:  # network, server, protocol and type errors all mean: not durable
                if attempt == self.max_attempts:
                    raise self.error(f"{what} failed {attempt} times: {exc}") from exc
                delay = self.backoff_s * 2 ** (attempt - 1)
                self.log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                time.sleep(delay)

    def poll_once(self, timeout_s: float = 1.0) -> int:
        """Consume, handle and commit one batch; returns the number of records consumed."""
        messages = [m for m in self.consumer.consume(self.max_records, timeout_s) if m.error() is None]
        if not messages:
            return 0
        batch: Batch = {}
        for message in messages:
            topic = self._topics[message.topic()]
            try:
                record = self.codec.decode(topic, message.value())
            except AvroDecodeError as exc:
                self._dead_letter(topic, message, exc)
                continue
            batch.setdefault(topic, []).append((message.partition(), message.offset(), record))
        self.handle(batch)
        if self.deadletters.flush(30):
            raise self.error(f"dead letters of the {self.agent} could not be delivered")
        self.consumer.commit(asynchronous=False)
        return len(messages)

    def _dead_letter(self, topic: str, message, exc: AvroDecodeError) -> None:
        if topic == DEADLETTER:
            # Never feed the dead-letter topic its own records back; it keeps the original.
            self.log.error("undecodable dead letter at %s/%d/%d: %s", message.topic(), message.partition(),
                           message.offset(), exc)
            return
        position = SourcePosition(message.topic(), message.partition(), message.offset())
        record = deadletter_record(position, message.key(), message.value() or b"", reason=exc.reason, error=str(exc),
                                   agent=self.agent)
        self.deadletters.produce(self.deadletter_topic, self.codec.encode(DEADLETTER, record), message.key())

    def close(self) -> None:
        self.consumer.close()
