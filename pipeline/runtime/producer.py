"""The one producer of the package's records (the agents' batch outputs, ingest, IMAP, the
SMTP relay, the campaign command, synthetic traffic): idempotent, counting every delivery and
keeping the first delivery errors, so that a caller knows whether everything it produced is
durable before it commits or moves its own position (:meth:`RecordProducer.send_all` raises,
``finish`` reports), or, for the relay, before it answers its client (a future per mail).
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field

from pipeline.contracts.records import MailRawCodec, MailTooLarge, SourcePosition, deadletter_record
from pipeline.contracts.topics import DEADLETTER, MAIL_RAW
from pipeline.runtime.kafka import new_producer, produce_when_room, topic_name
from pipeline.settings import KafkaSettings


@dataclass
class IngestReport:
    produced: int = 0
    delivered: int = 0
    dead_lettered: int = 0  # mail refused at the door (over mail.max_message_bytes), as dead letters
    errors: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """A record for :meth:`RecordProducer.send_records`: its topic's name on the cluster, its partition."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None  # None: a tombstone


class RecordWriteError(RuntimeError):
    """A record the broker did not acknowledge; ``permanent`` when it never will (over a size limit)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


_TOO_LARGE = ("MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE")


class RecordProducer:
    """An idempotent producer that counts deliveries and keeps the first delivery errors.

    ``answer_within_s``, for a caller that answers someone from each record's delivery report (the
    SMTP relay, :meth:`produce_mail_acknowledged`): the longest wait for an acknowledgement
    (librdkafka's ``message.timeout.ms``), and the reports are served from a thread of this
    producer until :meth:`finish`."""

    def __init__(self, kafka: KafkaSettings, bootstrap: str, *, answer_within_s: float | None = None) -> None:
        self.kafka = kafka
        self._bootstrap = bootstrap
        timeout_ms = None if answer_within_s is None else int(answer_within_s * 1000)
        self._options = {} if timeout_ms is None else {"message.timeout.ms": timeout_ms,
                                                       "request.timeout.ms": min(30_000, timeout_ms)}
        self.producer = new_producer(kafka, bootstrap, self._options)
        self.report = IngestReport()
        self._replacing = threading.Lock()  # self.producer, replaced after a fatal error
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="record-producer-poll", daemon=True)
        if timeout_ms is not None:
            self._poller.start()

    def _delivered(self, error, message) -> None:
        if error is None:
            self.report.delivered += 1
        elif len(self.report.errors) < 100:
            self.report.errors.append(f"{message.topic()}: {error}")

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        produce_when_room(self.producer, topic_name(self.kafka, topic), value, key, on_delivery=self._delivered)
        self.producer.poll(0)
        self.report.produced += 1

    def produce_mail(self, mail_raw: MailRawCodec, record: dict, agent: str = "ingest") -> bool:
        """One mail to ``mail.raw`` (big mail through the blob store), or, when it is over the
        limit, a dead letter naming where it came from. True when it went to ``mail.raw``."""
        key = record["tenant"].encode()
        try:
            value = mail_raw.encode(record)
        except MailTooLarge as exc:
            letter = deadletter_record(SourcePosition(MAIL_RAW, -1, -1), key, record["raw"], reason=exc.reason,
                                       error=str(exc), agent=agent, source_ref=record["source"])
            self.produce(DEADLETTER, key, mail_raw.codec.encode(DEADLETTER, letter))
            self.report.dead_lettered += 1
            return False
        self.produce(MAIL_RAW, key, value)
        return True

    def send_all(self, outputs: list) -> None:
        """An agent's batch outputs (:class:`~pipeline.runtime.batch.Output`); returns once every
        one is acknowledged by the broker, else raises, so that the batch is not committed."""
        errors_before = len(self.report.errors)  # not deliveries: agents share this producer from several threads
        for output in outputs:
            self._produce_or_explain(topic_name(self.kafka, output.topic), output.key, output.value, self._delivered)
        self._flush_all(errors_before)

    def send_records(self, records: list[TopicRecord]) -> dict[tuple[str, int], int]:
        """Records to given partitions of topics named as on the cluster (a Faust table's
        changelog); returns once every one is acknowledged, with the offset of the last one in
        each (topic, partition), else raises."""
        last: dict[tuple[str, int], int] = {}

        def delivered(error, message) -> None:
            self._delivered(error, message)
            if error is None:
                where = (message.topic(), message.partition())
                last[where] = max(last.get(where, -1), message.offset())

        errors_before = len(self.report.errors)
        for record in records:
            self._produce_or_explain(record.topic, record.key, record.value, delivered, partition=record.partition)
        self._flush_all(errors_before)
        return last

    def _produce_or_explain(self, topic: str, key: bytes | None, value: bytes | None, on_delivery, **kwargs) -> None:
        """Produce one record of a batch (no poll per record: :meth:`_flush_all` serves the reports)."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            produce_when_room(self.producer, topic, value, key, on_delivery=on_delivery, **kwargs)
        except KafkaException as exc:  # refused before it left: librdkafka says "Broker: ..." even then
            error, hint = exc.args[0], ""
            if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                limit = self.kafka.producer_options.get("message.max.bytes", 1_000_000)
                hint = (f" (over this producer's message.max.bytes, {limit}: kafka.producer_options raises it; "
                        "the broker's record limit must allow it too)")
            raise RuntimeError(f"cannot produce a record of {len(value or b'')} bytes to {topic}: "
                               f"{error.name()}, {error.str()}{hint}") from exc
        self.report.produced += 1

    def _flush_all(self, errors_before: int) -> None:
        remaining = self.producer.flush(60)
        if remaining or len(self.report.errors) > errors_before:
            raise RuntimeError(f"{remaining} records undelivered, errors: {self.report.errors[errors_before:][:5]}")

    def _poll(self) -> None:
        while not self._stop_polling.is_set():
            with self._replacing:
                producer = self.producer
            producer.poll(0.1)

    def produce_mail_acknowledged(self, mail_raw: MailRawCodec, record: dict) -> concurrent.futures.Future:
        """One mail to ``mail.raw`` whose future resolves with ``(partition, offset)`` once the
        broker acknowledged it, or fails with :class:`RecordWriteError`, so that the SMTP relay
        answers its client from the delivery report.  It never waits: a full local queue fails
        the future at once.  Needs ``answer_within_s``."""
        from confluent_kafka import KafkaException

        future: concurrent.futures.Future = concurrent.futures.Future()

        def failed(reason: str, permanent: bool = False) -> concurrent.futures.Future:
            future.set_exception(RecordWriteError(f"mail.raw: {reason}", permanent=permanent))
            return future

        def delivered(error, message) -> None:
            if error is None:
                future.set_result((message.partition(), message.offset()))
                return
            if error.fatal():  # an idempotent producer in a fatal state takes no more records
                with self._replacing:
                    self.producer = new_producer(self.kafka, self._bootstrap, self._options)
            failed(error.str(), error.name() in _TOO_LARGE)

        try:
            value = mail_raw.encode(record)
        except MailTooLarge as exc:  # the relay's own header fields can push a mail at the limit over it
            return failed(str(exc), permanent=True)
        except OSError as exc:
            return failed(f"the blob store cannot be written ({exc})")
        try:
            with self._replacing:
                self.producer.produce(topic_name(self.kafka, MAIL_RAW), value, record["tenant"].encode(),
                                      on_delivery=delivered)
        except BufferError as exc:
            failed(f"producer queue full ({exc})")
        except KafkaException as exc:
            failed(exc.args[0].str(), exc.args[0].name() in _TOO_LARGE)
        return future

    def finish(self, timeout_s: float = 120.0) -> IngestReport:
        self._stop_polling.set()
        if self._poller.is_alive():
            self._poller.join(2)
        remaining = self.producer.flush(timeout_s)
        if remaining:
            self.report.errors.append(f"{remaining} records still undelivered after {timeout_s:.0f} s")
        return self.report
