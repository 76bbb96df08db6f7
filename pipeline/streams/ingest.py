"""Mail files -> ``mail.raw``: one Avro record per message, keyed by tenant.

The producer is idempotent (no duplicates from its own retries); a message ingested twice
(same tenant, same bytes) carries the same ``event_id`` and the correlator reports the second
copy as a duplicate.  Delivery errors are counted and reported, never dropped silently.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Iterable

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import MailRawCodec, mail_raw_record
from pipeline.mail.parse import mail_direction
from pipeline.runtime.producer import IngestReport, RecordProducer
from pipeline.settings import Settings


def ingest(messages: Iterable[tuple[str, bytes]], settings: Settings, codec: AvroCodec, bootstrap: str, *,
           tenant: str = "default", direction: str = "in", mailbox: str | None = None,
           on_progress: Callable[[int], None] | None = None) -> IngestReport:
    """Produce every ``(source_ref, raw bytes)`` to ``mail.raw`` (a mail over the limit as a dead
    letter instead); returns after all are acknowledged. ``on_progress`` gets the number produced so far."""
    own_domains = frozenset(d.lower() for d in settings.untracked.own_domains)
    if direction == "auto" and not own_domains:
        raise ValueError("direction 'auto' needs untracked.own_domains (the organisation's mail domains)")
    producer = RecordProducer(settings.kafka, bootstrap)
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, codec)
    for source_ref, raw in messages:
        record = mail_raw_record(tenant=tenant, mailbox=mailbox or source_ref.partition("#")[0],
                                 direction=mail_direction(raw, direction, own_domains), source=source_ref, raw=raw,
                                 received_at=datetime.now(timezone.utc))
        producer.produce_mail(mail_raw, record)
        producer.report.bytes += len(raw)
        if on_progress is not None:
            on_progress(producer.report.produced)
    return producer.finish()
