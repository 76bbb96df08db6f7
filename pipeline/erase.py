"""``threadline erase --address X``: remove one person's data from the topics and ClickHouse.

Kafka cannot delete single records, so every topic holding a record that mentions the address
(the raw mail, the outputs, the tracking hits, and the workers' changelog topics) is rewritten:
read to its end, deleted, created again with the same partition count, and every other record
produced back to its partition, in order, with its key.  A record "mentions" the address when
its bytes contain it, case-insensitively (headers and Avro strings hold addresses as plain
UTF-8).  Offsets change in a rewritten topic, and the workers' tables (and their offset markers)
describe the old ones, so the procedure is: stop the pipeline, erase, then start the next
generation (``threadline replay``: new consumer groups and tables, reading the rewritten
``mail.raw`` from the start) and retire the old one; the sink re-reads the rewritten output
topics, which its idempotent inserts allow.  In ClickHouse every row with the
address in an address column is deleted (synchronously).  Rollups keep only hashes of
recipients (``uniqExact`` states), which are not personal data by themselves.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

from pipeline.blobs import BlobError
from pipeline.broker import new_topic
from pipeline.runtime.kafka import cluster_metadata, new_admin, new_producer, produce_when_room
from pipeline.contracts.avro import AvroCodec, AvroDecodeError, registry_from_settings
from pipeline.contracts.records import MailRawCodec
from pipeline.contracts.topics import ADDRESS_COLUMNS, MAIL_RAW
from pipeline.settings import Settings
from pipeline.streams.reader import read_messages

_ADDRESS = re.compile(r"^[^@\s]{1,200}@[^@\s]{1,200}$")


class EraseError(RuntimeError):
    pass


@dataclass
class EraseReport:
    records_removed: dict[str, int] = field(default_factory=dict)
    topics_rewritten: list[str] = field(default_factory=list)
    blobs_deleted: int = 0


def _where(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"has(arrayMap(x -> lower(x), `{column}`), {{address:String}})" if column in ("to", "cc", "bcc")
                       else f"lower(ifNull(`{column}`, '')) = {{address:String}}" for column in columns)


def erase_from_clickhouse(store, address: str) -> dict[str, int]:
    deleted = {}
    existing = {row[0] for row in store.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                              parameters={"db": store.database}).result_rows}
    for table, columns in ADDRESS_COLUMNS.items():
        if table not in existing:
            continue
        condition = _where(columns)
        count = store.query(f"SELECT count() FROM {{db}}.{table} WHERE {condition}",
                            parameters={"address": address}).result_rows[0][0]
        if count:
            store.client.command(store.sql(f"ALTER TABLE {{db}}.{table} DELETE WHERE {condition} "
                                           "SETTINGS mutations_sync = 2"), parameters={"address": address})
        deleted[table] = count
    return deleted


def _read_all(settings: Settings, bootstrap: str, topic: str, partitions: int) -> dict[int, list]:
    """(offset, key, value, headers) of every record of ``topic``, per partition."""
    from confluent_kafka import KafkaException

    records: dict[int, list] = {p: [] for p in range(partitions)}
    try:
        for message in read_messages(settings.kafka, bootstrap, topic):
            records[message.partition()].append((message.offset(), message.key(), message.value(), message.headers()))
    except (TimeoutError, KafkaException) as exc:
        raise EraseError(f"{topic}: {exc}") from exc
    return records


def erase_from_topics(settings: Settings, bootstrap: str, address: str,
                      progress: Callable[[str], None] = lambda _m: None) -> EraseReport:
    from confluent_kafka import KafkaException

    needle = address.lower().encode()
    admin = new_admin(settings.kafka, bootstrap)
    metadata = cluster_metadata(admin, 10)
    prefix = settings.kafka.topic_prefix
    topics = sorted(name for name in metadata.topics
                    if not name.startswith("__") and (not prefix or name.startswith(prefix) or "-changelog" in name))
    report = EraseReport()
    big_mail = _BigMail(settings)
    for topic in topics:
        partitions = len(metadata.topics[topic].partitions)
        records = _read_all(settings, bootstrap, topic, partitions)
        in_blobs = topic == prefix + MAIL_RAW
        kept = {p: [r for r in items if needle not in (r[2] or b"").lower() and needle not in (r[1] or b"").lower()
                    and not (in_blobs and big_mail.mentions(r[2], needle))]
                for p, items in records.items()}
        removed = sum(len(records[p]) - len(kept[p]) for p in records)
        if not removed:
            continue
        progress(f"{topic}: removing {removed} records, keeping {sum(map(len, kept.values()))}")
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            future.result(30)
        for attempt in range(50):  # the deletion takes a moment to settle
            try:
                for future in admin.create_topics([new_topic(settings.kafka, topic, partitions)]).values():
                    future.result(30)
                break
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS" or attempt == 49:
                    raise EraseError(f"cannot create {topic} again: {exc}") from exc
                time.sleep(0.2)
        producer = new_producer(settings.kafka, bootstrap)
        errors: list[str] = []
        for partition, items in kept.items():
            for _, key, value, headers in items:
                produce_when_room(producer, topic, value, key, partition=partition, headers=headers,
                                  on_delivery=lambda err, _m: err and errors.append(str(err)))
                producer.poll(0)
        if producer.flush(60) or errors:
            raise EraseError(f"{topic}: rewriting failed ({errors[:3]}); the removed records are gone, "
                             "the kept ones may be incomplete: stop and check before restarting workers")
        report.records_removed[topic] = removed
        report.topics_rewritten.append(topic)
    report.blobs_deleted = big_mail.delete_matched()
    return report


class _BigMail:
    """Mail over ``mail.inline_max_bytes`` is in the blob store, not in its ``mail.raw`` record:
    such a record mentions the address when its blob does, and that blob is deleted with it."""

    def __init__(self, settings: Settings) -> None:
        codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
        self.mail_raw = MailRawCodec(settings.mail, settings.blob_dir, codec)
        self.matched: set[str] = set()

    def mentions(self, value: bytes | None, needle: bytes) -> bool:
        try:
            record = self.mail_raw.codec.decode(MAIL_RAW, value or b"")
        except AvroDecodeError:
            return False
        if not record.get("raw_blob"):
            return False
        try:
            found = needle in self.mail_raw.raw_of(record).lower()
        except BlobError:
            return False  # already gone: nothing of it left to erase
        if found:
            self.matched.add(record["raw_blob"]["sha256"])
        return found

    def delete_matched(self) -> int:
        return sum(self.mail_raw.blobs.delete(digest) for digest in self.matched)


def validate_address(address: str) -> str:
    address = address.strip().lower()
    if not _ADDRESS.match(address):
        raise EraseError(f"{address!r} is not an e-mail address")
    return address
