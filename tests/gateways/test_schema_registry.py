"""The Schema Registry endpoint on a real port, through confluent-kafka's own SchemaRegistryClient
and plain HTTP (urllib, raw sockets) for the answers a client library hides: content types,
error bodies, bad input.  tests/integration/test_schema_registry_clients.py runs the serializers
from another process against a real broker."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from pipeline.contracts.avro import REGISTRY_FILE, SCHEMA_DIR, EmbeddedRegistry, SchemaError, canonical
from pipeline.gateways import schema_registry
from pipeline.gateways.schema_registry import (CLIENT_IDS_FROM, CONTENT_TYPE, REGISTRATIONS_FILE, RegistryServer,
                                               SchemaStore, start_registry)

pytestmark = pytest.mark.integration  # real sockets (tests/conftest.py refuses them in unit tests)

RELEASED = json.loads((SCHEMA_DIR / REGISTRY_FILE).read_text())["subjects"]


def record(name: str, *fields: dict) -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "downstream", "fields": list(fields)})


ORDER = record("Order", {"name": "id", "type": "string"}, {"name": "total", "type": "double"})
ORDER_WITH_NOTE = record("Order", {"name": "id", "type": "string"}, {"name": "total", "type": "double"},
                         {"name": "note", "type": ["null", "string"], "default": None})
ORDER_WITH_CURRENCY = record("Order", {"name": "id", "type": "string"}, {"name": "total", "type": "double"},
                             {"name": "currency", "type": "string"})  # no default: old orders cannot be read


@pytest.fixture
def server(tmp_path):
    with RegistryServer(SchemaStore(EmbeddedRegistry(), path=tmp_path / REGISTRATIONS_FILE)) as running:
        yield running


@pytest.fixture
def client(server):
    return SchemaRegistryClient({"url": server.url, "max.retries": 0})


def call(server, method: str, path: str, body=None, *, data: bytes | None = None) -> tuple[int, str, object]:
    """(status, content type, decoded JSON body) of one request."""
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": CONTENT_TYPE} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def released_text(entry: dict) -> str:
    return (SCHEMA_DIR / entry["schema"]).read_text()


# -- the project's subjects: the ids the records carry ------------------------------------------------
def test_every_released_version_is_served_with_its_id(client):
    assert client.get_subjects() == sorted(RELEASED)
    for name, versions in RELEASED.items():
        assert client.get_versions(name) == [v["version"] for v in versions]
        for entry in versions:
            got = client.get_version(name, entry["version"])
            assert (got.schema_id, got.subject) == (entry["id"], name)
            assert canonical(got.schema.schema_str) == canonical(released_text(entry))
            assert canonical(client.get_schema(entry["id"]).schema_str) == canonical(released_text(entry))
        latest = client.get_latest_version(name)
        assert (latest.version, latest.schema_id) == (versions[-1]["version"], versions[-1]["id"])


def test_schema_by_id_answers_whatever_subject_a_deserializer_names(server, client):
    # AvroDeserializer asks /schemas/ids/ID?subject=<its topic>-value: a topic with a prefix
    # (or any other name) must not make a known id unknown.
    entry = RELEASED["mail.correlated-value"][0]
    status, kind, body = call(server, "GET", f"/schemas/ids/{entry['id']}?subject=prod.mail.correlated-value")
    assert (status, kind.split(";")[0]) == (200, CONTENT_TYPE)
    assert canonical(body["schema"]) == canonical(released_text(entry))
    assert [(v.subject, v.version) for v in client.get_schema_versions(entry["id"])] == [("mail.correlated-value", 1)]
    assert client.get_subjects_by_schema_id(entry["id"]) == ["mail.correlated-value"]
    assert client.get_schema_types() == ["AVRO"]
    guid = client.get_version("mail.correlated-value", 1).guid
    assert canonical(client.get_schema_by_guid(guid).schema_str) == canonical(released_text(entry))
    status, _, raw_schema = call(server, "GET", f"/schemas/ids/{entry['id']}/schema")
    assert status == 200 and canonical(json.dumps(raw_schema)) == canonical(released_text(entry))
    status, _, body = call(server, "GET", "/schemas/ids/7?fetchMaxId=true")
    assert body["maxId"] == max(v["id"] for versions in RELEASED.values() for v in versions)


def test_topic_prefix_serves_the_subjects_under_the_cluster_topic_names_too(tmp_path):
    with RegistryServer(SchemaStore(EmbeddedRegistry(), topic_prefix="acme.")) as running:
        client = SchemaRegistryClient({"url": running.url})
        assert set(client.get_subjects()) == set(RELEASED) | {f"acme.{name}" for name in RELEASED}
        assert client.get_latest_version("acme.mail.raw-value").schema_id == RELEASED["mail.raw-value"][-1]["id"]


def test_lookup_and_register_of_a_released_version_give_its_released_id(client):
    for entry in RELEASED["mail.correlated-value"]:
        schema = Schema(released_text(entry), "AVRO")
        found = client.lookup_schema("mail.correlated-value", schema)
        assert (found.version, found.schema_id) == (entry["version"], entry["id"])
        assert client.register_schema("mail.correlated-value", schema) == entry["id"]
    # the same text with other whitespace and key order is the same schema
    reordered = json.dumps(json.loads(released_text(RELEASED["crm.entities-value"][0])), indent=None, sort_keys=True)
    assert client.register_schema("crm.entities-value", Schema(reordered, "AVRO")) == RELEASED["crm.entities-value"][0]["id"]
    assert client.get_versions("crm.entities-value") == [1]  # nothing new was registered


def test_a_new_version_of_a_project_subject_is_refused(client):
    current = json.loads(released_text(RELEASED["campaigns-value"][-1]))
    compatible = {**current, "fields": current["fields"] + [{"name": "extra", "type": ["null", "string"], "default": None}]}
    incompatible = {**current, "fields": current["fields"] + [{"name": "extra", "type": "string"}]}
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("campaigns-value", Schema(json.dumps(incompatible), "AVRO"))
    assert (refused.value.http_status_code, refused.value.error_code) == (409, 409)
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("campaigns-value", Schema(json.dumps(compatible), "AVRO"))
    assert (refused.value.http_status_code, refused.value.error_code) == (422, 42205)
    assert "threadline schemas release" in refused.value.error_message
    assert client.test_compatibility("campaigns-value", Schema(json.dumps(compatible), "AVRO")) is True
    assert client.test_compatibility("campaigns-value", Schema(json.dumps(incompatible), "AVRO")) is False
    assert client.get_compatibility("campaigns-value") == "BACKWARD_TRANSITIVE"
    for refused_call in (lambda: client.set_compatibility("campaigns-value", "NONE"),
                         lambda: client.delete_subject("campaigns-value"),
                         lambda: client.delete_version("campaigns-value", 1)):
        with pytest.raises(SchemaRegistryError) as refused:
            refused_call()
        assert refused.value.error_code == 42205
    assert client.get_versions("campaigns-value") == [1]


# -- clients' own subjects ------------------------------------------------------------------------
def test_a_client_subject_registers_evolves_and_refuses_an_incompatible_version(client):
    first = client.register_schema("orders-value", Schema(ORDER, "AVRO"))
    assert first >= CLIENT_IDS_FROM
    assert client.register_schema("orders-value", Schema(ORDER, "AVRO")) == first  # idempotent
    assert client.register_schema("orders-copy-value", Schema(ORDER, "AVRO")) == first  # ids are per schema
    assert client.test_compatibility("orders-value", Schema(ORDER_WITH_CURRENCY, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("orders-value", Schema(ORDER_WITH_CURRENCY, "AVRO"))
    assert (refused.value.http_status_code, refused.value.error_code) == (409, 409)
    assert "No default value for field currency" in refused.value.error_message
    second = client.register_schema("orders-value", Schema(ORDER_WITH_NOTE, "AVRO"))
    assert second == first + 1
    latest = client.get_latest_version("orders-value")
    assert (latest.version, latest.schema_id) == (2, second)
    assert client.lookup_schema("orders-value", Schema(ORDER, "AVRO")).version == 1
    assert sorted(client.get_subjects_by_schema_id(first)) == ["orders-copy-value", "orders-value"]


def test_compatibility_levels_of_a_client_subject(server, client):
    client.register_schema("events-value", Schema(ORDER, "AVRO"))
    assert client.get_compatibility() == "BACKWARD"
    with pytest.raises(SchemaRegistryError) as unset:
        client.get_compatibility("events-value")
    assert unset.value.error_code == 40408  # as Confluent: no subject level without defaultToGlobal
    assert call(server, "GET", "/config/events-value?defaultToGlobal=true")[2] == {"compatibilityLevel": "BACKWARD"}
    # FORWARD: old readers must read new data; dropping a field without default breaks them
    assert client.set_compatibility("events-value", "forward") == {"compatibility": "FORWARD"}
    without_total = record("Order", {"name": "id", "type": "string"})
    status, _, answer = call(server, "POST", "/compatibility/subjects/events-value/versions/latest?verbose=true",
                             {"schema": without_total})
    assert status == 200 and answer["is_compatible"] is False and "total" in answer["messages"][0]
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("events-value", Schema(without_total, "AVRO"))
    assert refused.value.error_code == 409
    client.set_compatibility("events-value", "NONE")
    assert client.register_schema("events-value", Schema(ORDER_WITH_CURRENCY, "AVRO")) > CLIENT_IDS_FROM
    assert call(server, "DELETE", "/config/events-value")[2] == {"compatibilityLevel": "NONE"}
    with pytest.raises(SchemaRegistryError) as invalid:
        client.set_compatibility(level="SOMETIMES")
    assert (invalid.value.http_status_code, invalid.value.error_code) == (422, 42203)
    # against every version of a subject that does not exist yet: nothing to break
    assert client.test_compatibility_all_versions("new-value", Schema(ORDER, "AVRO")) is True
    with pytest.raises(SchemaRegistryError) as missing:
        client.test_compatibility("new-value", Schema(ORDER, "AVRO"))
    assert missing.value.error_code == 40401


def test_soft_and_permanent_deletes_of_a_client_subject(server, client):
    schema_id = client.register_schema("scratch-value", Schema(ORDER, "AVRO"))
    client.register_schema("scratch-value", Schema(ORDER_WITH_NOTE, "AVRO"))
    with pytest.raises(SchemaRegistryError) as first_soft:
        client.delete_subject("scratch-value", permanent=True)
    assert first_soft.value.error_code == 40405
    assert client.delete_version("scratch-value", 2) == 2
    assert client.get_versions("scratch-value") == [1]
    assert client.get_versions("scratch-value", deleted=True) == [1, 2]
    assert client.delete_subject("scratch-value") == [1]
    assert "scratch-value" not in client.get_subjects()
    assert "scratch-value" in client.get_subjects(deleted=True)
    assert call(server, "DELETE", "/subjects/scratch-value")[2]["error_code"] == 40404
    assert client.lookup_schema("scratch-value", Schema(ORDER, "AVRO"), deleted=True).version == 1
    assert client.delete_subject("scratch-value", permanent=True) == [1, 2]
    assert call(server, "GET", "/subjects/scratch-value/versions")[2]["error_code"] == 40401
    # records may still carry the id: it stays readable, and is never given to another schema
    assert canonical(call(server, "GET", f"/schemas/ids/{schema_id}")[2]["schema"]) == canonical(ORDER)
    assert client.register_schema("scratch-value", Schema(ORDER, "AVRO")) == schema_id
    assert client.get_versions("scratch-value") == [1]


def test_registrations_survive_a_restart_and_a_fresh_start_drops_them(tmp_path):
    with start_registry(tmp_path, keep_registrations=True) as running:
        client = SchemaRegistryClient({"url": running.url})
        schema_id = client.register_schema("orders-value", Schema(ORDER, "AVRO"))
        client.set_compatibility("orders-value", "FULL")
    assert (tmp_path / REGISTRATIONS_FILE).stat().st_mode & 0o077 == 0
    with start_registry(tmp_path, keep_registrations=True) as running:
        client = SchemaRegistryClient({"url": running.url})
        assert client.lookup_schema("orders-value", Schema(ORDER, "AVRO")).schema_id == schema_id
        assert client.get_compatibility("orders-value") == "FULL"
        assert client.register_schema("other-value", Schema(ORDER_WITH_NOTE, "AVRO")) == schema_id + 1
    with start_registry(tmp_path, keep_registrations=False) as running:
        client = SchemaRegistryClient({"url": running.url})
        assert client.get_subjects() == sorted(RELEASED)
    (tmp_path / REGISTRATIONS_FILE).write_text("{not json")
    with pytest.raises(SchemaError, match="remove .* to start without"):
        start_registry(tmp_path)


def test_concurrent_registrations_of_one_schema_make_one_version(client):
    ids, errors = [], []

    def register():
        try:
            ids.append(client.register_schema("busy-value", Schema(ORDER, "AVRO")))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(ids)) == 1
    assert client.get_versions("busy-value") == [1]


def test_subject_names_are_percent_encoded_by_the_client(client):
    name = "team/ünïcode orders-value"
    schema_id = client.register_schema(name, Schema(ORDER, "AVRO"))
    assert client.get_latest_version(name).schema_id == schema_id
    assert name in client.get_subjects()


# -- bad input: a clear 4xx, and the server goes on -------------------------------------------------
@pytest.mark.parametrize("method, path, body, status, code", [
    ("GET", "/subjects/nobody-value/versions", None, 404, 40401),
    ("GET", "/subjects/mail.raw-value/versions/99", None, 404, 40402),
    ("GET", "/subjects/mail.raw-value/versions/0", None, 422, 42202),
    ("GET", "/subjects/mail.raw-value/versions/two", None, 422, 42202),
    ("GET", "/schemas/ids/99999", None, 404, 40403),
    ("GET", "/schemas/ids/seven", None, 404, 40403),
    ("GET", "/schemas/guids/not-a-guid", None, 404, 40403),
    ("GET", "/subjects?deleted=maybe", None, 422, 422),
    ("GET", "/subjects?offset=-1", None, 422, 422),
    ("GET", "/subjects/mail.raw-value/versions?limit=many", None, 422, 422),
    ("GET", "/no/such/route", None, 404, 404),
    ("PATCH", "/subjects", None, 405, 405),
    ("POST", "/subjects/mail.raw-value", {"schema": ORDER}, 404, 40403),
    ("POST", "/subjects/nobody-value", {"schema": ORDER}, 404, 40401),
    ("POST", "/subjects/x-value/versions", {"schema": "{not json"}, 422, 42201),
    ("POST", "/subjects/x-value/versions", {"schema": '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}'}, 422, 42201),
    ("POST", "/subjects/x-value/versions", {"schema": 42}, 422, 42201),
    ("POST", "/subjects/x-value/versions", {}, 422, 42201),
    ("POST", "/subjects/x-value/versions", [ORDER], 422, 422),
    ("POST", "/subjects/x-value/versions", {"schema": '{"type": "object"}', "schemaType": "JSON"}, 422, 42201),
    ("POST", "/subjects/x-value/versions", {"schema": ORDER, "references": [{"name": "a", "subject": "b", "version": 1}]}, 422, 42201),
    ("POST", "/subjects/x-value/versions", {"schema": ORDER, "ruleSet": {"domainRules": [{"name": "r"}]}}, 422, 42201),
    ("POST", "/subjects/x-value/versions", {"schema": ORDER, "id": 5}, 422, 42205),
    ("POST", "/subjects/x%01-value/versions", {"schema": ORDER}, 422, 42208),
    ("PUT", "/config", {"compatibility": "SOMETIMES"}, 422, 42203),
    ("PUT", "/config", {"compatibility": "FULL", "alias": "other"}, 422, 42205),
    ("PUT", "/mode", {"mode": "IMPORT"}, 422, 42205),
    ("GET", "/subjects/mail.raw-value/metadata?key=owner&value=me", None, 404, 40403),
])
def test_bad_requests_get_confluent_errors(server, method, path, body, status, code):
    got_status, kind, answer = call(server, method, path, body)
    assert (got_status, answer["error_code"]) == (status, code), answer
    assert kind.split(";")[0] == CONTENT_TYPE and answer["message"]
    assert call(server, "GET", "/subjects")[0] == 200  # still serving


@pytest.mark.parametrize("data, status", [
    (b"{not json", 400), (b"", 400), (b"[" * 100_000, 400), (b"x" * (schema_registry.MAX_BODY_BYTES + 1), 413),
])
def test_bodies_that_are_not_json_or_too_large(server, data, status):
    got_status, kind, answer = call(server, "POST", "/subjects/x-value/versions", data=data)
    assert (got_status, answer["error_code"]) == (status, status), answer
    assert kind.split(";")[0] == CONTENT_TYPE


def test_an_absurdly_nested_or_recursive_schema_is_an_answer_not_a_crash(server, client):
    nested = '{"type": "array", "items": ' * 5000 + '"int"' + "}" * 5000
    status, _, answer = call(server, "POST", "/subjects/deep-value/versions", {"schema": nested})
    assert (status, answer["error_code"]) == (422, 42201)
    # a record that must contain itself: valid Avro, but no value of it can be generated to check
    endless = record("Node", {"name": "id", "type": "string"}, {"name": "next", "type": "downstream.Node"})
    client.register_schema("loop-value", Schema(endless, "AVRO"))  # a first version is not compared
    status, _, answer = call(server, "POST", "/compatibility/subjects/loop-value/versions?verbose=true",
                             {"schema": ORDER})
    assert status == 200 and answer["is_compatible"] is False and "RecursionError" in answer["messages"][0]
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("loop-value", Schema(ORDER, "AVRO"))
    assert refused.value.error_code == 409


def test_slow_clients_are_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(schema_registry, "REQUEST_TIMEOUT_S", 0.5)
    with RegistryServer(SchemaStore(EmbeddedRegistry())) as running:
        # a body that never completes: 408 after the timeout
        with socket.create_connection((running.host, running.port), timeout=5) as slow:
            slow.sendall(b"POST /subjects/x-value/versions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3
        # a request head that never completes: the connection is closed
        with socket.create_connection((running.host, running.port), timeout=5) as slow:
            slow.sendall(b"GET /subjects HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert slow.recv(4096) == b"" and time.monotonic() - started < 3
        assert SchemaRegistryClient({"url": running.url}).get_subjects()  # others are served


def test_listens_on_loopback_only_by_default(server):
    assert server.host == "127.0.0.1" and server.url == f"http://127.0.0.1:{server.port}"
