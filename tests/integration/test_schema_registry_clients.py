"""Downstream consumers and producers against the Schema Registry endpoint, from another process
(tests/integration/registry_client_script.py: confluent-kafka's SchemaRegistryClient,
AvroSerializer and AvroDeserializer, nothing of Threadline), on the real embedded broker:

(a) it decodes mail.correlated records our code encoded (AvroCodec), two tenants, one of them
    written with an older released schema, as written and resolved to the latest version;
(b) it writes crm.entities records with AvroSerializer (auto-registering, and with the latest
    version) that our AvroCodec decodes;
(c) it registers a subject of its own and reads its record back;
(d) it is refused an incompatible version of its subject, and any new version of ours.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_writer

from pipeline.contracts.avro import REGISTRY_FILE, SCHEMA_DIR, EmbeddedRegistry, subject
from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.contracts.topics import CRM_ENTITIES, MAIL_CORRELATED
from pipeline.correlation.engine import Correlator
from pipeline.gateways.schema_registry import CLIENT_IDS_FROM, RegistryServer, SchemaStore
from pipeline.mail.parse import parse_mail
from pipeline.runtime.producer import RecordProducer
from pipeline.settings import CorrelationSettings
from pipeline.streams.reader import read_topic

SCRIPT = Path(__file__).with_name("registry_client_script.py")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
RELEASED = json.loads((SCHEMA_DIR / REGISTRY_FILE).read_text())["subjects"]


def mail(tenant: str, number: int, reply_to: str | None = None) -> bytes:
    head = [f"From: customer{number}@{tenant}.example", "To: support@desk.example",
            f"Subject: {'Re: ' if reply_to else ''}Printer broken on floor {number}",
            f"Date: Mon, 02 Mar 2026 09:{number:02d}:00 +0000", f"Message-ID: <{tenant}-{number}@test>"]
    if reply_to:
        head.append(f"In-Reply-To: <{reply_to}@test>")
    return ("\r\n".join(head) + "\r\n\r\nIt prints nothing.\r\n").encode()


def correlated_records(tenant: str) -> list[dict]:
    engine = Correlator(CorrelationSettings(), tenant=tenant, clock=lambda: T0 + timedelta(days=1))
    mails = [mail(tenant, 1), mail(tenant, 2, reply_to=f"{tenant}-1"), mail(tenant, 3)]
    return [correlated_record(engine.correlate(parse_mail(raw, tenant=tenant)), "support",
                              SourcePosition("mail.raw", 0, offset)) for offset, raw in enumerate(mails)]


def as_first_release(record: dict) -> bytes:
    """``record`` as a worker of the first release wrote it: mail.correlated v1, its id in the header."""
    [first, *_] = RELEASED[subject(MAIL_CORRELATED)]
    schema = parse_schema(json.loads((SCHEMA_DIR / first["schema"]).read_text()))
    out = io.BytesIO()
    out.write(b"\0" + first["id"].to_bytes(4, "big"))
    schemaless_writer(out, schema, {field["name"]: record[field["name"]] for field in schema["fields"]})
    return out.getvalue()


def test_confluent_clients_in_another_process_read_and_write_our_topics(sandbox):
    settings = sandbox.settings()
    records = {tenant: correlated_records(tenant) for tenant in ("acme", "globex")}
    producer = RecordProducer(settings.kafka, sandbox.bootstrap)
    for tenant, values in records.items():
        for value in values:
            producer.produce(MAIL_CORRELATED, tenant.encode(), sandbox.codec.encode(MAIL_CORRELATED, value))
    old = records["globex"][0]
    producer.produce(MAIL_CORRELATED, b"globex", as_first_release(old))
    assert producer.finish(30).errors == []

    with RegistryServer(SchemaStore(EmbeddedRegistry(), topic_prefix=sandbox.prefix)) as registry:
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
        done = subprocess.run([sys.executable, str(SCRIPT), registry.url, sandbox.bootstrap, sandbox.prefix],
                              capture_output=True, text=True, timeout=180, env=env, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    print("client script phases, seconds from its start:", report["seconds"])

    # (a) every record, by tenant key, with the id it carries and the values our code wrote
    current_id = EmbeddedRegistry().id_for(MAIL_CORRELATED)
    first_id = RELEASED[subject(MAIL_CORRELATED)][0]["id"]
    expected = [(tenant, current_id, value["event_id"]) for tenant, values in records.items() for value in values]
    expected.append(("globex", first_id, old["event_id"]))
    for read in (report["as_written"], report["as_latest"]):
        assert sorted((r["key"], r["schema_id"], r["value"]["event_id"]) for r in read) == sorted(expected)
    by_event = {(r["schema_id"], r["value"]["event_id"]): r["value"] for r in report["as_written"]}
    for value in records["acme"] + records["globex"]:
        got = by_event[(current_id, value["event_id"])]
        assert {**got, "event_time": value["event_time"].isoformat()} == {**value, "event_time": value["event_time"].isoformat()}
    old_as_written = by_event[(first_id, old["event_id"])]
    assert "confidence" not in old_as_written and old_as_written["conversation_id"] == old["conversation_id"]
    old_as_latest = [r["value"] for r in report["as_latest"] if r["schema_id"] == first_id][0]
    assert (old_as_latest["confidence"], old_as_latest["automatic"]) == (1.0, "")  # the defaults of later releases

    # (b) what the CRM wrote, under the released id, decoded by our codec
    crm_id = EmbeddedRegistry().id_for(CRM_ENTITIES)
    assert report["crm_latest_id"] == crm_id
    assert [(w["tenant"], w["schema_id"]) for w in report["crm_written"]] == [("acme", crm_id), ("globex", crm_id)]
    decoded = sorted(((key.decode(), value) for _, _, key, value in read_topic(settings.kafka, sandbox.bootstrap,
                                                                               CRM_ENTITIES, sandbox.codec)),
                     key=lambda item: item[0])
    assert [(key, value["tenant"], value["name"], value["email"]) for key, value in decoded] == [
        ("acme", "acme", "Dana Scully", "dana@acme.example"), ("globex", "globex", "Fox Mulder", "fox@globex.example")]
    assert decoded[0][1]["updated_at"] == T0

    # (c) a new subject: a new id beyond ours, read back
    assert report["order_id"] >= CLIENT_IDS_FROM
    assert report["order_back"] == {"order_id": "o-1", "tenant": "acme", "total": 12.5}
    assert report["order_versions"] == [1]

    # (d) refusals
    assert (report["order_incompatible"]["status"], report["order_incompatible"]["code"]) == (409, 409)
    assert "currency" in report["order_incompatible"]["message"]
    assert (report["correlated_incompatible"]["status"], report["correlated_incompatible"]["code"]) == (409, 409)
    assert (report["correlated_new"]["status"], report["correlated_new"]["code"]) == (422, 42205)
