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

from pipeline.avro import AvroCodec
from pipeline.broker import producer_config, topic_name
from pipeline.settings import Settings
from pipeline.streams.records import mail_raw_record

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
    errors: list[str] = field(default_factory=list)
    bytes: int = 0


def ingest(messages: Iterable[tuple[str, bytes]], settings: Settings, codec: AvroCodec, bootstrap: str, *,
           tenant: str = "default", direction: str = "in", mailbox: str | None = None,
           on_progress: Callable[[int], None] | None = None) -> IngestReport:
    """Produce every ``(source_ref, raw bytes)`` to ``mail.raw``; returns after all are acknowledged.
    ``on_progress`` gets the number produced so far."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings.kafka, bootstrap))
    topic = topic_name(settings.kafka, "mail.raw")
    report = IngestReport()
    key = tenant.encode()
    own_domains = frozenset(d.lower() for d in settings.untracked.own_domains)
    if direction == "auto" and not own_domains:
        raise ValueError("direction 'auto' needs untracked.own_domains (the organisation's mail domains)")

    def delivered(error, _message) -> None:
        if error is None:
            report.delivered += 1
        elif len(report.errors) < 100:
            report.errors.append(str(error))

    for source_ref, raw in messages:
        record = mail_raw_record(tenant=tenant, mailbox=mailbox or source_ref.partition("#")[0], direction=mail_direction(raw, direction, own_domains),
                                 source=source_ref, raw=raw, received_at=datetime.now(timezone.utc))
        value = codec.encode("mail.raw", record)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        report.produced += 1
        report.bytes += len(raw)
        if on_progress is not None:
            on_progress(report.produced)
    remaining = producer.flush(120)
    if remaining:
        report.errors.append(f"{remaining} records still undelivered after 120 s")
    return report
