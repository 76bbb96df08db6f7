"""The one producer of the package's records (the agents' batch outputs, ingest, IMAP, the
campaign command, synthetic traffic): idempotent, counting every delivery and keeping the first
delivery errors, so that a caller knows whether everything it produced is durable before it
commits or moves its own position (:meth:`RecordProducer.send_all` raises, ``finish`` reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.contracts.records import MailRawCodec, MailTooLarge, SourcePosition, deadletter_record
from pipeline.contracts.topics import DEADLETTER, MAIL_RAW
from pipeline.runtime.kafka import new_producer, produce_when_room, topic_name
from pipeline.settings import Settings


@dataclass
class IngestReport:
    produced: int = 0
    delivered: int = 0
    dead_lettered: int = 0  # mail refused at the door (over mail.max_message_bytes), as dead letters
    errors: list[str] = field(default_factory=list)
    bytes: int = 0


class RecordProducer:
    """An idempotent producer that counts deliveries and keeps the first delivery errors."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.kafka = settings.kafka
        self.producer = new_producer(settings.kafka, bootstrap)
        self.report = IngestReport()

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
        from confluent_kafka import KafkaError, KafkaException

        errors_before = len(self.report.errors)  # not deliveries: agents share this producer from several threads
        for output in outputs:
            try:
                self.produce(output.topic, output.key, output.value)
            except KafkaException as exc:  # refused before it left: librdkafka says "Broker: ..." even then
                error, hint = exc.args[0], ""
                if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    limit = self.kafka.producer_options.get("message.max.bytes", 1_000_000)
                    hint = (f" (over this producer's message.max.bytes, {limit}: kafka.producer_options raises it; "
                            "the broker's record limit must allow it too)")
                raise RuntimeError(f"cannot produce a record of {len(output.value)} bytes to "
                                   f"{topic_name(self.kafka, output.topic)}: {error.name()}, {error.str()}{hint}") from exc
        remaining = self.producer.flush(60)
        if remaining or len(self.report.errors) > errors_before:
            raise RuntimeError(f"{remaining} outputs undelivered, errors: {self.report.errors[errors_before:][:5]}")

    def finish(self, timeout_s: float = 120.0) -> IngestReport:
        remaining = self.producer.flush(timeout_s)
        if remaining:
            self.report.errors.append(f"{remaining} records still undelivered after {timeout_s:.0f} s")
        return self.report
