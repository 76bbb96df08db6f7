"""The one producer for records written from outside the agents' batches (ingest, IMAP, the
campaign command, synthetic traffic): idempotent, counting every delivery and keeping the first
delivery errors, so that a caller can tell after :meth:`RecordProducer.finish` (a flush) whether
everything it produced is durable before it acknowledges its own source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.broker import topic_name
from pipeline.contracts.records import MailRawCodec, MailTooLarge, SourcePosition, deadletter_record
from pipeline.runtime.kafka import new_producer, produce_when_room
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

    def _delivered(self, error, _message) -> None:
        if error is None:
            self.report.delivered += 1
        elif len(self.report.errors) < 100:
            self.report.errors.append(str(error))

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
            letter = deadletter_record(SourcePosition("mail.raw", -1, -1), key, record["raw"], reason=exc.reason,
                                       error=str(exc), agent=agent, source_ref=record["source"])
            self.produce("deadletter", key, mail_raw.codec.encode("deadletter", letter))
            self.report.dead_lettered += 1
            return False
        self.produce("mail.raw", key, value)
        return True

    def finish(self, timeout_s: float = 120.0) -> IngestReport:
        remaining = self.producer.flush(timeout_s)
        if remaining:
            self.report.errors.append(f"{remaining} records still undelivered after {timeout_s:.0f} s")
        return self.report
