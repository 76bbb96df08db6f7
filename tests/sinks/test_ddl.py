"""The ClickHouse tables follow the Avro schemas, and migrations are versioned and idempotent."""

import json
import shutil

import pytest

from pipeline.contracts.avro import SCHEMA_DIR
from pipeline.contracts.topics import BY_NAME, SINK_TOPICS
from pipeline.sinks.clickhouse import migrations
from pipeline.sinks.tables import expected_columns


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
