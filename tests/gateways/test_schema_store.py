"""The Schema Registry endpoint's store and compatibility rule without a socket (the HTTP API is
tested in test_schema_registry.py on a real port): levels, the registrations file and what
it may not claim."""

from __future__ import annotations

import json

import pytest

from pipeline.contracts.avro import EmbeddedRegistry, SchemaError
from pipeline.gateways.schema_registry import (CLIENT_IDS_FROM, RegistryError, SchemaStore, compatibility_problems,
                                               parse_version)


def record(*fields: dict) -> str:
    return json.dumps({"type": "record", "name": "Order", "fields": list(fields)})


ID = {"name": "id", "type": "string"}
OLD = record(ID, {"name": "total", "type": "double"})
ADDED_REQUIRED = record(ID, {"name": "total", "type": "double"}, {"name": "currency", "type": "string"})
ADDED_OPTIONAL = record(ID, {"name": "total", "type": "double"}, {"name": "note", "type": "string", "default": ""})
DROPPED = record(ID)


@pytest.mark.parametrize("new, level, compatible", [
    (ADDED_REQUIRED, "BACKWARD", False),  # new readers find no currency in old data
    (ADDED_REQUIRED, "FORWARD", True),  # old readers ignore it
    (DROPPED, "BACKWARD", True),
    (DROPPED, "FORWARD", False),  # old readers need total, which new data lacks
    (DROPPED, "FULL", False),
    (ADDED_OPTIONAL, "FULL_TRANSITIVE", True),
])
def test_compatibility_directions(new, level, compatible):
    assert (compatibility_problems(new, [(1, OLD)], level) == []) is compatible


def test_versions_are_numbers_from_1_or_latest():
    assert (parse_version("latest"), parse_version("-1"), parse_version("3")) == (None, None, 3)
    for bad in ("0", "2147483648", "v1", "", "1.5"):
        with pytest.raises(RegistryError) as refused:
            parse_version(bad)
        assert refused.value.code == 42202


def test_project_subjects_are_read_only_and_client_ids_start_far_above(tmp_path):
    store = SchemaStore(EmbeddedRegistry(), path=tmp_path / "r.json")
    with pytest.raises(RegistryError) as refused:
        store.add("mail.raw-value", OLD)
    assert refused.value.code == 42205
    first = store.add("orders-value", OLD)
    assert (first.version, first.id) == (1, CLIENT_IDS_FROM)
    assert store.add("copy-value", OLD).id == first.id
    assert store.add("orders-value", ADDED_OPTIONAL).id == first.id + 1
    again = SchemaStore(EmbeddedRegistry(), path=tmp_path / "r.json")
    assert [v.id for v in again.versions("orders-value")] == [first.id, first.id + 1]
    assert again.add("third-value", DROPPED).id == first.id + 2  # never an id given before


def test_a_registrations_file_may_not_claim_what_threadline_owns(tmp_path):
    path = tmp_path / "r.json"
    owned = {"global_level": "BACKWARD", "levels": {}, "ids": {"7": OLD}, "subjects": {"orders-value": [[1, 7, False]]}}
    path.write_text(json.dumps(owned))
    with pytest.raises(SchemaError, match="now Threadline's own"):
        SchemaStore(EmbeddedRegistry(), path=path)
    path.write_text(json.dumps({**owned, "ids": {}, "subjects": {"mail.raw-value": [[3, 100001, False]]}}))
    with pytest.raises(SchemaError, match="now Threadline's own"):
        SchemaStore(EmbeddedRegistry(), path=path)
    path.write_text(json.dumps({**owned, "ids": {}, "subjects": {"orders-value": [[1, 100001, False]]}}))
    with pytest.raises(SchemaError, match="inconsistent"):
        SchemaStore(EmbeddedRegistry(), path=path)
