"""ClickHouse: the store (embedded chDB or a real server), its migrations, and the topic sink.

The sink is a plain consumer group over the output topics: it decodes a batch, inserts it table
by table, and commits the offsets only after every insert succeeded.  A failed insert is
retried with back-off; after ``max_attempts`` the sink stops with an error instead of skipping
the batch (the records stay in Kafka, uncommitted, for the next start).  Tables are
``ReplacingMergeTree`` on each event's stable id, so redelivered batches and replays collapse.

chDB allows one data folder per process: while a process holds the embedded store (the sink
in ``threadline up``), other processes cannot open it; point ``THREADLINE_CLICKHOUSE_URL`` at a
server to share one.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.runtime.kafka import new_group_consumer, new_producer, topic_name
from pipeline.contracts.avro import AvroCodec, AvroDecodeError
from pipeline.contracts.records import SourcePosition, deadletter_record
from pipeline.contracts.topics import DEADLETTER, SINK_TOPICS
from pipeline.redact import redact_url
from pipeline.settings import Settings
from pipeline.sinks.tables import META_COLUMNS, expected_columns, table_name

log = logging.getLogger("threadline.sink")
_MIGRATION_FILE = re.compile(r"^(\d{4})_[\w]+\.sql$")


class SinkError(RuntimeError):
    pass


def _statements(sql: str) -> list[str]:
    without_comments = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in without_comments.split(";") if statement.strip()]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    folder = resources.files("pipeline.sinks") / "migrations"
    found = []
    for item in folder.iterdir():
        match = _MIGRATION_FILE.match(item.name)
        if match:
            found.append((int(match.group(1)), item.name, item.read_text(encoding="utf-8")))
    return sorted(found)


class ClickHouseStore:
    def __init__(self, settings: Settings, *, chdb_path: Path | None = None) -> None:
        import clickhouse_connect

        self.database = settings.clickhouse.database
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.database):
            raise SinkError(f"clickhouse.database {self.database!r} is not a plain identifier")
        if settings.clickhouse.url:
            self.client = clickhouse_connect.get_client(dsn=settings.clickhouse.url)
            self.location = redact_url(settings.clickhouse.url)  # printed and logged: never the password
        else:
            path = chdb_path or settings.worker.data_dir.resolve() / "clickhouse"
            path.mkdir(parents=True, exist_ok=True)
            self.client = clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware")
            self.location = f"chdb:{path}"

    def sql(self, statement: str) -> str:
        return statement.replace("{db}", self.database)

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet; returns their names. Safe to run any time."""
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self.client.command(self.sql(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
            "applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY version"))
        applied = {row[0] for row in self.client.query(self.sql("SELECT version FROM {db}.schema_migrations FINAL")).result_rows}
        done = []
        for version, name, sql in migrations():
            if version in applied:
                continue
            for statement in _statements(sql):
                self.client.command(self.sql(statement))
            self.client.insert(f"{self.database}.schema_migrations", [[version, name, datetime.now(timezone.utc)]],
                               column_names=["version", "name", "applied_at"])
            done.append(name)
        return done

    def query(self, sql: str, parameters: dict | None = None):
        return self.client.query(self.sql(sql), parameters=parameters)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        self.client.insert(f"{self.database}.{table}", rows, column_names=list(columns))

    def close(self) -> None:
        self.client.close()


def rows_for(topic: str, records: Sequence[tuple[int, int, dict]], inserted_at: datetime) -> tuple[list[str], list[list]]:
    """Columns and rows of ``(partition, offset, record)`` items of one topic."""
    columns = list(expected_columns(topic))
    fields = columns[: len(columns) - len(META_COLUMNS)]
    rows = [[record.get(name) for name in fields] + [partition, offset, inserted_at]
            for partition, offset, record in records]
    return columns, rows


class ClickHouseSink:
    """Output topics -> ClickHouse, batch by batch, commit after insert."""

    def __init__(self, settings: Settings, bootstrap: str, store: ClickHouseStore, codec: AvroCodec, *,
                 group_id: str | None = None, max_attempts: int = 8, backoff_s: float = 0.5) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.consumer = new_group_consumer(settings.kafka, bootstrap,
                                           group_id or f"{settings.worker.app_id}-clickhouse-sink")
        self._topics = {topic_name(settings.kafka, t): t for t in SINK_TOPICS}
        self.consumer.subscribe(list(self._topics))
        self._deadletters = new_producer(settings.kafka, bootstrap)
        self.inserted: Counter = Counter()

    def _insert_with_retry(self, table: str, columns: list[str], rows: list[list]) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.store.insert(table, rows, columns)
                return
            except Exception as exc:  # network, server and type errors all mean: not stored
                if attempt == self.max_attempts:
                    raise SinkError(f"insert of {len(rows)} rows into {table} failed {attempt} times: {exc}") from exc
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("insert into %s failed (%s); retry %d in %.1f s", table, exc, attempt, delay)
                time.sleep(delay)

    def write(self, messages: list) -> Counter:
        """Insert one consumed batch; returns rows per table. Offsets are NOT committed here."""
        by_topic: dict[str, list] = {}
        now = datetime.now(timezone.utc)
        for message in messages:
            topic = self._topics[message.topic()]
            try:
                record = self.codec.decode(topic, message.value())
            except AvroDecodeError as exc:
                self._dead_letter(message, exc.reason, str(exc))
                continue
            by_topic.setdefault(topic, []).append((message.partition(), message.offset(), record))
        written: Counter = Counter()
        for topic, records in by_topic.items():
            columns, rows = rows_for(topic, records, now)
            self._insert_with_retry(table_name(topic), columns, rows)
            written[table_name(topic)] += len(rows)
        if self._deadletters.flush(30):
            raise SinkError("dead letters of the sink could not be delivered")
        return written

    def _dead_letter(self, message, reason: str, error: str) -> None:
        if self._topics[message.topic()] == DEADLETTER:
            # Never feed the dead-letter topic its own records back; it keeps the original.
            log.error("undecodable dead letter at %s/%d/%d: %s", message.topic(), message.partition(),
                      message.offset(), error)
            return
        position = SourcePosition(message.topic(), message.partition(), message.offset())
        record = deadletter_record(position, message.key(), message.value() or b"", reason=reason, error=error,
                                   agent="clickhouse-sink")
        self._deadletters.produce(topic_name(self.settings.kafka, DEADLETTER), self.codec.encode(DEADLETTER, record),
                                  message.key())

    def poll_once(self, max_records: int = 5000, timeout_s: float = 1.0) -> int:
        """Consume, insert and commit one batch; returns the number of records consumed."""
        messages = [m for m in self.consumer.consume(max_records, timeout_s) if m.error() is None]
        if not messages:
            return 0
        self.inserted.update(self.write(messages))
        self.consumer.commit(asynchronous=False)
        return len(messages)

    def run(self, should_stop: Callable[[], bool], on_batch: Callable[[int], None] | None = None) -> None:
        while not should_stop():
            count = self.poll_once()
            if count and on_batch is not None:
                on_batch(count)

    def close(self) -> None:
        self.consumer.close()


def sink_until(sink: ClickHouseSink, done: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Run the sink until ``done()`` is true (checked after each idle poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if sink.poll_once() == 0 and done():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink not done after {timeout_s} s: {dict(sink.inserted)}")

