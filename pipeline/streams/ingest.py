"""Mail files -> ``mail.raw``: one Avro record per message, keyed by tenant.

The producer is idempotent (no duplicates from its own retries); a message ingested twice
(same tenant, same bytes) carries the same ``event_id`` and the correlator reports the second
copy as a duplicate.  Delivery errors are counted and reported, never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from pipeline.broker import topic_name
from pipeline.runtime.kafka import new_producer, produce_when_room
from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import MailRawCodec, MailTooLarge, SourcePosition, deadletter_record, mail_raw_record
from pipeline.settings import Settings

_FROM_DOMAIN = re.compile(rb"^From:[^\r\n]*@([A-Za-z0-9.-]+)", re.IGNORECASE | re.MULTILINE)


def mail_direction(raw: bytes, direction: str, own_domains: frozenset[str]) -> str:
    """``in``/``out`` as given; ``auto``: ``out`` when the From address is in one of our own
    domains (the organisation sent it), else ``in``."""
    if direction != "auto":
        return direction
    header_end = raw.find(b"\r\n\r\n")
    if header_end < 0:
        header_end = raw.find(b"\n\n")
    match = _FROM_DOMAIN.search(raw, 0, header_end if header_end >= 0 else len(raw))
    return "out" if match and match.group(1).decode("ascii").lower().rstrip(".") in own_domains else "in"


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


def ingest(messages: Iterable[tuple[str, bytes]], settings: Settings, codec: AvroCodec, bootstrap: str, *,
           tenant: str = "default", direction: str = "in", mailbox: str | None = None,
           on_progress: Callable[[int], None] | None = None) -> IngestReport:
    """Produce every ``(source_ref, raw bytes)`` to ``mail.raw`` (a mail over the limit as a dead
    letter instead); returns after all are acknowledged. ``on_progress`` gets the number produced so far."""
    own_domains = frozenset(d.lower() for d in settings.untracked.own_domains)
    if direction == "auto" and not own_domains:
        raise ValueError("direction 'auto' needs untracked.own_domains (the organisation's mail domains)")
    producer = RecordProducer(settings, bootstrap)
    mail_raw = MailRawCodec(settings, codec)
    for source_ref, raw in messages:
        record = mail_raw_record(tenant=tenant, mailbox=mailbox or source_ref.partition("#")[0],
                                 direction=mail_direction(raw, direction, own_domains), source=source_ref, raw=raw,
                                 received_at=datetime.now(timezone.utc))
        producer.produce_mail(mail_raw, record)
        producer.report.bytes += len(raw)
        if on_progress is not None:
            on_progress(producer.report.produced)
    return producer.finish()
