"""The ClickHouse tables follow the Avro schemas, and migrations are versioned and idempotent."""

import json
import shutil
import uuid
from datetime import datetime, timezone

import pytest

from pipeline.contracts.avro import SCHEMA_DIR
from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.contracts.topics import BY_NAME, SINK_TOPICS
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation
from pipeline.settings import ClickHouseSettings
from pipeline.sinks import clickhouse
from pipeline.sinks.clickhouse import ClickHouseStore, migrations, rows_for
from pipeline.sinks.tables import expected_columns

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def column_mismatches(store, schema_dir=SCHEMA_DIR) -> dict[str, tuple[list, list]]:
    """Every sink table whose columns (names, types, order) differ from what its schema implies:
    table -> (columns in the store, columns the schema implies)."""
    found = {}
    for topic in SINK_TOPICS:
        table = BY_NAME[topic].table
        rows = store.query("SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
                           "ORDER BY position", parameters={"db": store.database, "t": table}).result_rows
        actual = [tuple(row) for row in rows]
        implied = list(expected_columns(topic, schema_dir).items())
        if actual != implied:
            found[table] = (actual, implied)
    return found


@pytest.mark.integration  # starts chDB
def test_every_table_has_the_columns_its_schema_implies_and_a_schema_change_shows(clickhouse_factory, tmp_path):
    store = clickhouse_factory()
    assert column_mismatches(store) == {}

    # The same check against a schema with one more field, and no migration for it, must fail.
    schema_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schema_dir)
    path = schema_dir / "mail.correlated.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "team", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema))
    mismatches = column_mismatches(store, schema_dir)
    assert list(mismatches) == ["mail_correlated"]
    actual, implied = mismatches["mail_correlated"]
    assert set(implied) - set(actual) == {("team", "Nullable(String)")} and set(actual) <= set(implied)


@pytest.mark.integration  # starts chDB
def test_migrations_apply_once_in_order(clickhouse_factory):
    store = clickhouse_factory()
    versions = [version for version, _, _ in migrations()]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert store.migrate() == []  # the fixture migrated already: nothing left to do
    applied = store.query("SELECT version FROM {db}.schema_migrations FINAL ORDER BY version").result_rows
    assert [row[0] for row in applied] == versions


def correlated_rows(message_id: str, confidence: float, automatic: str = "") -> tuple[list[str], list[list]]:
    """What the sink inserts for one SmartMatching link of ``message_id``."""
    correlation = Correlation(tenant="acme", message_id=message_id, conversation_id="c-1", method=Method.SMART_MATCHING,
                              mail_type="reply", direction="in", event_time=T0, confidence=confidence,
                              parent_message_id="<parent@test>", automatic=automatic)
    return rows_for("mail.correlated", [(0, 0, correlated_record(correlation, "support", SourcePosition("mail.raw", 0, 0)))], T0)


def without(columns: list[str], rows: list[list], dropped: set[str]) -> tuple[list[str], list[list]]:
    """The rows as a writer of a release without the ``dropped`` columns inserted them."""
    keep = [at for at, column in enumerate(columns) if column not in dropped]
    return [columns[at] for at in keep], [[row[at] for at in keep] for row in rows]


def upgrade_across(migration_suffix: str, old_rows: tuple[list[str], list[list]], chdb_path, monkeypatch) -> ClickHouseStore:
    """A database as the release before ``migration_suffix`` left it, holding ``old_rows`` in
    mail_correlated, then migrated to the newest version (which must apply that migration)."""
    every = migrations()
    version, name, _ = next(m for m in every if m[1].endswith(migration_suffix))
    monkeypatch.setattr(clickhouse, "migrations", lambda: [m for m in every if m[0] < version])
    store = ClickHouseStore(ClickHouseSettings(database=f"t_{uuid.uuid4().hex[:10]}"), chdb_path)
    store.migrate()
    store.insert("mail_correlated", old_rows[1], old_rows[0])
    monkeypatch.setattr(clickhouse, "migrations", lambda: every)
    assert name in store.migrate()
    assert column_mismatches(store) == {}
    return store


@pytest.mark.integration  # starts chDB
def test_the_confidence_migration_keeps_older_rows_as_certain_and_the_latest_view_shows_it(chdb_path, monkeypatch):
    store = upgrade_across("_correlation_confidence.sql", without(*correlated_rows("<old@test>", 0.3),
                                                                  {"confidence", "automatic"}), chdb_path, monkeypatch)
    try:
        columns, rows = correlated_rows("<new@test>", 0.3)
        store.insert("mail_correlated", rows, columns)
        latest = store.query("SELECT message_id, confidence FROM {db}.mail_correlated_latest ORDER BY message_id")
        assert latest.result_rows == [("<new@test>", 0.3), ("<old@test>", 1.0)]
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS {store.database}")


@pytest.mark.integration  # starts chDB
def test_the_automatic_mail_migration_reads_older_rows_as_a_persons_mail_and_the_latest_view_shows_it(
        chdb_path, monkeypatch):
    store = upgrade_across("_automatic_mail.sql", without(*correlated_rows("<old@test>", 0.3), {"automatic"}),
                           chdb_path, monkeypatch)
    try:
        for tenant, kind in (("acme", "auto_reply"), ("globex", "")):
            columns, rows = correlated_rows("<new@test>", 0.3, kind)
            rows[0][columns.index("tenant")] = tenant
            store.insert("mail_correlated", rows, columns)
        latest = store.query("SELECT tenant, message_id, automatic FROM {db}.mail_correlated_latest "
                             "ORDER BY tenant, message_id")
        assert latest.result_rows == [("acme", "<new@test>", "auto_reply"), ("acme", "<old@test>", ""),
                                      ("globex", "<new@test>", "")]
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS {store.database}")
