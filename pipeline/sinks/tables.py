"""The ClickHouse column types a topic's Avro schema implies (its table: the topic registry).

The migrations in ``migrations/`` are frozen SQL; ``tests/sinks/test_ddl.py`` creates them in chDB
and checks every table's columns against :func:`expected_columns` of the current schemas, so a
schema change without a migration fails the suite.
"""

from __future__ import annotations

import json

from pipeline.contracts.avro import SCHEMA_DIR, schema_text

# Columns the sink adds to every table, after the schema's fields.
META_COLUMNS = {
    "_topic_partition": "Int32",
    "_topic_offset": "Int64",
    "_inserted_at": "DateTime64(3, 'UTC')",
}


def _column_type(avro_type) -> str:
    if isinstance(avro_type, list):
        others = [t for t in avro_type if t != "null"]
        if len(others) != 1:
            raise ValueError(f"unsupported union {avro_type}")
        inner = _column_type(others[0])
        if inner.startswith(("Array", "Map")):
            return inner  # ClickHouse has no Nullable arrays or maps: empty stands for null
        if inner.startswith("LowCardinality("):
            return f"LowCardinality(Nullable({inner[len('LowCardinality('):-1]}))"
        return f"Nullable({inner})"
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        kind = avro_type["type"]
        if logical == "timestamp-millis":
            return "DateTime64(3, 'UTC')"
        if kind == "enum":
            return "LowCardinality(String)"
        if kind == "array":
            return f"Array({_column_type(avro_type['items'])})"
        if kind == "map":
            return f"Map(String, {_column_type(avro_type['values'])})"
        return _column_type(kind)
    return {"string": "String", "bytes": "String", "int": "Int32", "long": "Int64", "double": "Float64",
            "float": "Float32", "boolean": "Bool"}.get(avro_type) or _named_type(avro_type)


def _named_type(name: str) -> str:
    # A reference to an enum defined earlier in the same schema (e.g. "EscalationState").
    return "LowCardinality(String)"


def expected_columns(topic: str, schema_dir=SCHEMA_DIR) -> dict[str, str]:
    schema = json.loads(schema_text(topic, schema_dir))
    columns = {field["name"]: _column_type(field["type"]) for field in schema["fields"]}
    columns.update(META_COLUMNS)
    return columns


