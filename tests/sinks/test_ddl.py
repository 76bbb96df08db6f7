"""The ClickHouse tables follow the Avro schemas, and migrations are versioned and idempotent."""

from pipeline.contracts.topics import SINK_TOPICS
from pipeline.sinks.clickhouse import migrations
from pipeline.sinks.tables import expected_columns, table_name


def test_every_table_has_the_columns_its_schema_implies(clickhouse_factory):
    store = clickhouse_factory()
    for topic in SINK_TOPICS:
        rows = store.query("SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
                           "ORDER BY position", parameters={"db": store.database, "t": table_name(topic)}).result_rows
        assert dict(rows) == expected_columns(topic), f"{table_name(topic)} differs from schemas/{topic}.avsc"
        assert [name for name, _ in rows] == list(expected_columns(topic))


def test_migrations_apply_once_in_order(clickhouse_factory):
    store = clickhouse_factory()
    versions = [version for version, _, _ in migrations()]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert store.migrate() == []  # the fixture migrated already: nothing left to do
    applied = store.query("SELECT version FROM {db}.schema_migrations FINAL ORDER BY version").result_rows
    assert [row[0] for row in applied] == versions


def test_a_schema_field_without_a_column_is_detected(clickhouse_factory, tmp_path):
    # The check above is only worth something if a schema change shows up in expected_columns.
    import json
    import shutil

    from pipeline.contracts.avro import SCHEMA_DIR

    schema_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schema_dir)
    path = schema_dir / "mail.correlated.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "team", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema))
    assert expected_columns("mail.correlated", schema_dir)["team"] == "Nullable(String)"
    assert "team" not in expected_columns("mail.correlated")
