"""ClickHouse: the store (embedded chDB or a real server), its migrations, and the topic sink.

The sink is the runtime's consumer loop over the output topics: it inserts a batch table by
table, and the offsets are committed only after every insert succeeded.  A failed insert is
retried with back-off; after ``max_attempts`` the sink stops with an error instead of skipping
the batch (the records stay in Kafka, uncommitted, for the next start).  Tables are
``ReplacingMergeTree`` on each event's stable id, so redelivered batches and replays collapse.

chDB allows one data folder per process: while a process holds the embedded store (the sink
in ``threadline up``), other processes cannot open it themselves.  ``up`` serves it over
ClickHouse's HTTP interface (pipeline/sinks/http_interface.py) and publishes where in its
running-stack file, and a store opened with ``served=`` that stack reaches it there; or point
``THREADLINE_CLICKHOUSE_URL`` at a server to share one.
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

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.topics import BY_NAME, SINK_TOPICS
from pipeline.redact import redact_url
from pipeline.running import RunningStack
from pipeline.runtime.consumer_loop import Batch, ConsumerLoop
from pipeline.settings import ClickHouseSettings, KafkaSettings
from pipeline.sinks.tables import META_COLUMNS, expected_columns

_MIGRATION_FILE = re.compile(r"^(\d{4})_[\w]+\.sql$")


class SinkError(RuntimeError):
    pass


def _statements(sql: str) -> list[str]:
    without_comments = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in without_comments.split(";") if statement.strip()]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    folder = resources.files("pipeline.sinks") / "migrations"
    return sorted((int(match.group(1)), item.name, item.read_text(encoding="utf-8"))
                  for item in folder.iterdir() if (match := _MIGRATION_FILE.match(item.name)))


class ClickHouseStore:
    def __init__(self, clickhouse: ClickHouseSettings, chdb_path: Path | None = None, *,
                 served: RunningStack | None = None) -> None:
        """The server of ``clickhouse.url``; else the embedded store a running ``threadline up``
        serves (``served``, its running stack); else the embedded chDB in the folder ``chdb_path``.
        Every way is one clickhouse-connect client (``self.client``), with aware UTC datetimes."""
        import clickhouse_connect

        self.database = clickhouse.database
        self.served = False  # True: another process owns the store and migrated it
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.database):
            raise SinkError(f"clickhouse.database {self.database!r} is not a plain identifier")
        if clickhouse.url:
            self.client = clickhouse_connect.get_client(dsn=clickhouse.url, tz_mode="aware")
            self.location = redact_url(clickhouse.url)  # printed and logged: never the password
        elif served is not None and served.clickhouse_url:
            from urllib.parse import urlsplit

            address = urlsplit(served.clickhouse_url)
            self.client = clickhouse_connect.get_client(host=address.hostname, port=address.port,
                                                        username=served.clickhouse_user,
                                                        password=served.clickhouse_password or "", tz_mode="aware")
            self.location = f"{served.clickhouse_url} (served by threadline up, pid {served.pid})"
            self.served = True
        else:
            chdb_path.mkdir(parents=True, exist_ok=True)
            self.client = clickhouse_connect.get_client(interface="chdb", path=str(chdb_path), tz_mode="aware")
            self.location = f"chdb:{chdb_path}"

    def sql(self, statement: str) -> str:
        return statement.replace("{db}", self.database)

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet; returns their names. Safe to run any time. A
        served store is read-only and was migrated by the process that serves it: nothing to do."""
        if self.served:
            return []
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

    def raw_query(self, sql: str, parameters: dict | None = None, fmt: str | None = None) -> bytes:
        """The answer's bytes as the store formats them: in ``fmt``, else in the query's own
        ``FORMAT``, else TabSeparated. ``{db}`` is the database; parameters bind ``{name:Type}``."""
        return self.client.raw_query(self.sql(sql), parameters=parameters, fmt=fmt)

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


class ClickHouseSink(ConsumerLoop):
    """Output topics -> ClickHouse, batch by batch, commit after insert."""

    topics, agent, error, log = SINK_TOPICS, "clickhouse-sink", SinkError, logging.getLogger("threadline.sink")
    max_records, max_attempts, backoff_s = 5000, 8, 0.5

    def __init__(self, kafka: KafkaSettings, bootstrap: str, store: ClickHouseStore, codec: AvroCodec, *,
                 app_id: str) -> None:
        super().__init__(kafka, bootstrap, app_id, codec)
        self.store = store
        self.inserted: Counter = Counter()

    def handle(self, batch: Batch) -> None:
        now = datetime.now(timezone.utc)
        for topic, records in batch.items():
            columns, rows = rows_for(topic, records, now)
            table = BY_NAME[topic].table
            self.retry(f"insert of {len(rows)} rows into {table}", lambda: self.store.insert(table, rows, columns))
            self.inserted[table] += len(rows)


def sink_until(sink: ClickHouseSink, done: Callable[[], bool], timeout_s: float = 120.0,
               on_progress: Callable[[int], None] | None = None) -> None:
    """Run the sink until ``done()`` is true (checked after each idle poll); ``on_progress`` gets
    the rows inserted so far after each poll."""
    deadline = time.monotonic() + timeout_s
    while True:
        polled = sink.poll_once()
        if on_progress is not None:
            on_progress(sum(sink.inserted.values()))
        if polled == 0 and done():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink not done after {timeout_s} s: {dict(sink.inserted)}")

