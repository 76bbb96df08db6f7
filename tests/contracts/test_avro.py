"""Avro wire format, the embedded registry, and the backward-compatibility gate on schemas/."""

import io
import json
import shutil
from datetime import datetime, timezone

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.utils import generate_one

from pipeline.contracts.avro import (
    SCHEMA_DIR, AvroCodec, AvroDecodeError, EmbeddedRegistry, SchemaError, backward_problems, check_schemas,
    release_schemas, topics_with_schemas,
)

DESIGN_TOPICS = {"mail.raw", "mail.correlated", "mail.untracked", "mail.responses", "tracking.raw",
                 "tracking.events", "escalations", "alerts", "crm.entities", "campaigns", "conversions", "deadletter",
                 "corrections", "sla.events"}


def _raw_record():
    return {"event_id": "e1", "tenant": "acme", "mailbox": "support", "direction": "in", "source": "test",
            "received_at": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=timezone.utc), "raw": b"Subject: x\r\n\r\nhi", "raw_blob": None}


def test_every_design_topic_has_a_schema():
    assert set(topics_with_schemas()) == DESIGN_TOPICS


def test_released_schemas_are_current_and_compatible():
    # Fails when a schema file changed without `threadline schemas release`, or incompatibly.
    assert check_schemas() == {topic: [] for topic in DESIGN_TOPICS}
    registry = EmbeddedRegistry()
    ids = [registry.id_for(topic) for topic in DESIGN_TOPICS]
    assert len(set(ids)) == len(ids)


def test_round_trip_in_confluent_wire_format():
    codec = AvroCodec(EmbeddedRegistry())
    data = codec.encode("mail.raw", _raw_record())
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == EmbeddedRegistry().id_for("mail.raw")
    assert codec.decode("mail.raw", data) == _raw_record()


def _written_with(version: int) -> tuple[dict, bytes]:
    """A random mail.correlated record and its bytes, as a writer of release ``version`` wrote them."""
    released = json.loads((SCHEMA_DIR / "registry.json").read_text())["subjects"]["mail.correlated-value"][version - 1]
    old_schema = parse_schema(json.loads((SCHEMA_DIR / released["schema"]).read_text()))
    old_record = {**generate_one(old_schema), "event_time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}
    data = io.BytesIO()
    data.write(b"\x00" + released["id"].to_bytes(4, "big"))
    schemaless_writer(data, old_schema, old_record)
    return old_record, data.getvalue()


def test_mail_correlated_written_before_confidence_reads_as_certain_and_a_persons_mail():
    old_record, data = _written_with(1)
    codec = AvroCodec(EmbeddedRegistry())
    assert codec.decode("mail.correlated", data) == {**old_record, "confidence": 1.0, "automatic": ""}
    doubted = {**old_record, "confidence": 0.25, "automatic": ""}
    assert codec.decode("mail.correlated", codec.encode("mail.correlated", doubted)) == doubted


def test_mail_correlated_written_before_the_automatic_label_reads_as_a_persons_mail():
    old_record, data = _written_with(2)
    codec = AvroCodec(EmbeddedRegistry())
    assert codec.decode("mail.correlated", data) == {**old_record, "automatic": ""}
    out_of_office = {**old_record, "automatic": "auto_reply"}
    assert codec.decode("mail.correlated", codec.encode("mail.correlated", out_of_office)) == out_of_office


@pytest.mark.parametrize("data, reason", [
    (b"", "not_confluent_wire_format"),
    (b"\x01\x00\x00\x00\x08abc", "not_confluent_wire_format"),
    (b"\x00\x00\x00\x99\x99abc", "unknown_schema_id"),
])
def test_undecodable_values_have_a_reason(data, reason):
    with pytest.raises(AvroDecodeError) as error:
        AvroCodec(EmbeddedRegistry()).decode("mail.raw", data)
    assert error.value.reason == reason


def test_truncated_body_is_bad_avro():
    codec = AvroCodec(EmbeddedRegistry())
    data = codec.encode("mail.raw", _raw_record())
    with pytest.raises(AvroDecodeError) as error:
        codec.decode("mail.raw", data[:12])
    assert error.value.reason == "bad_avro"


def _with_field(text: str, field: dict) -> str:
    schema = json.loads(text)
    schema["fields"].append(field)
    return json.dumps(schema)


def test_compatibility_check_tells_compatible_from_breaking_changes():
    old = (SCHEMA_DIR / "mail.raw.avsc").read_text()
    assert backward_problems(old, _with_field(old, {"name": "note", "type": ["null", "string"], "default": None})) == []
    assert backward_problems(old, _with_field(old, {"name": "note", "type": "string"})) != []
    narrowed = json.loads(old)
    narrowed["fields"] = [f for f in narrowed["fields"] if f["name"] != "raw"] + [{"name": "raw", "type": "int"}]
    assert backward_problems(old, json.dumps(narrowed)) != []


def test_release_gates_breaking_changes_and_numbers_new_versions(tmp_path):
    schema_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schema_dir)
    path = schema_dir / "mail.raw.avsc"
    original = path.read_text()

    path.write_text(_with_field(original, {"name": "note", "type": "string"}))
    with pytest.raises(SchemaError):
        EmbeddedRegistry(schema_dir).id_for("mail.raw")  # changed but not released
    with pytest.raises(SchemaError, match="not backward compatible"):
        release_schemas(schema_dir)

    path.write_text(_with_field(original, {"name": "note", "type": ["null", "string"], "default": None}))
    old_id = EmbeddedRegistry(SCHEMA_DIR).id_for("mail.raw")
    registered = json.loads((SCHEMA_DIR / "registry.json").read_text())["subjects"]
    next_id = 1 + max(version["id"] for versions in registered.values() for version in versions)
    next_version = 1 + len(registered["mail.raw-value"])
    assert release_schemas(schema_dir) == [f"mail.raw-value v{next_version} id {next_id}"]
    registry = EmbeddedRegistry(schema_dir)
    assert registry.id_for("mail.raw") == next_id
    # Data written before the change is still read, resolved to the new schema.
    old_data = AvroCodec(EmbeddedRegistry(SCHEMA_DIR)).encode("mail.raw", _raw_record())
    assert int.from_bytes(old_data[1:5], "big") == old_id
    assert AvroCodec(registry, schema_dir).decode("mail.raw", old_data) == {**_raw_record(), "note": None}
