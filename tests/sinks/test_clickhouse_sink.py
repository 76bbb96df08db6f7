"""What the ClickHouse sink writes for mail.correlated, from raw mail to a chDB row: the automatic
mail label arrives in its column for each tenant (the broker's part is tests/integration/test_sink.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.correlation.engine import Correlator
from pipeline.mail.hostile import hostile_mails
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError
from pipeline.settings import CorrelationSettings
from pipeline.sinks.clickhouse import rows_for

pytestmark = pytest.mark.integration  # starts chDB

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def raw(message_id: str, subject: str, *fields: str, sender: str = "dana@customer.example") -> bytes:
    head = [f"From: {sender}", "To: support@desk.example", f"Subject: {subject}",
            "Date: Mon, 02 Mar 2026 09:00:00 +0000", f"Message-ID: <{message_id}@test>", *fields]
    return ("\r\n".join(head) + "\r\n\r\nThe printer on floor 3 is broken.\r\n").encode()


MAILS = {
    "<person@test>": (raw("person", "Printer broken"), ""),
    "<away@test>": (raw("away", "Abwesenheitsnotiz: Printer broken"), "auto_reply"),
    "<dsn@test>": (raw("dsn", "Undelivered Mail Returned to Sender", sender="MAILER-DAEMON@mx.customer.example"),
                   "bounce"),
    "<cron@test>": (raw("cron", "Nightly report", "Auto-Submitted: auto-generated"), "auto_generated"),
    "<list@test>": (raw("list", "Printer broken", "List-Id: <users.desk.example>", "Precedence: bulk"), "list"),
}


def test_the_automatic_label_arrives_in_mail_correlated_for_each_tenant(clickhouse_factory):
    store = clickhouse_factory()
    codec = AvroCodec(EmbeddedRegistry())
    hostile = [item for _, item in hostile_mails(12, seed=16)]
    for tenant_number, tenant in enumerate(("acme", "globex")):
        engine = Correlator(CorrelationSettings(), tenant=tenant, clock=lambda: T0 + timedelta(days=1))
        items = []
        for offset, mail_bytes in enumerate([mail_bytes for mail_bytes, _ in MAILS.values()] + hostile):
            try:
                record = parse_mail(mail_bytes, tenant=tenant)
            except MailParseError:
                continue
            value = correlated_record(engine.correlate(record), "support", SourcePosition("mail.raw", tenant_number, offset))
            items.append((tenant_number, offset, codec.decode("mail.correlated", codec.encode("mail.correlated", value))))
        columns, rows = rows_for("mail.correlated", items, T0)
        store.insert("mail_correlated", rows, columns)
    written = store.query("SELECT tenant, message_id, automatic FROM {db}.mail_correlated_latest").result_rows
    for tenant in ("acme", "globex"):
        kinds = {message_id: kind for row_tenant, message_id, kind in written if row_tenant == tenant}
        assert {message_id: kinds[message_id] for message_id in MAILS} == {
            message_id: kind for message_id, (_, kind) in MAILS.items()}
        assert set(kinds.values()) <= {"", "bounce", "notifier", "auto_reply", "auto_generated", "list"}
