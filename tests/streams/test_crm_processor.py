"""CRM entities reach the correlator: an unmatched inbound mail gets its sender's open record."""

from datetime import datetime, timezone

import pytest

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import mail_raw_record
from pipeline.settings import Settings
from pipeline.streams.crm import CrmProcessor
from pipeline.runtime.batch import RawItem
from pipeline.runtime.state import StateFormatError
from pipeline.streams.processor import MailProcessor

CODEC = AvroCodec(EmbeddedRegistry())
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _entity(offset, kind, entity_id, **fields):
    record = {"event_id": f"e{offset}", "tenant": "acme", "entity_type": kind, "entity_id": entity_id, "name": entity_id,
              "email": fields.get("email"), "company_id": fields.get("company_id"), "owner": fields.get("owner"),
              "status": fields.get("status"), "assigned_on": None, "updated_at": NOW, "deleted": False}
    return RawItem(0, offset, b"acme", CODEC.encode("crm.entities", record))


def _mail(offset, message_id, sender, direction="in", in_reply_to=None):
    headers = f"Message-ID: {message_id}\r\nFrom: {sender}\r\nTo: desk@acme.test\r\nSubject: help\r\n" \
              f"Date: Mon, 02 Mar 2026 10:{offset:02d}:00 +0000\r\n"
    if in_reply_to:
        headers += f"In-Reply-To: {in_reply_to}\r\n"
    raw = (headers + "\r\nbody\r\n").encode()
    record = mail_raw_record(tenant="acme", mailbox="support", direction=direction, source="test", raw=raw,
                             received_at=NOW)
    return RawItem(0, offset, b"acme", CODEC.encode("mail.raw", record))


def _regarding(result):
    return [CODEC.decode("mail.correlated", o.value)["regarding"] for o in result.outputs if o.topic == "mail.correlated"]


def test_unmatched_inbound_mail_takes_the_senders_open_record_and_replies_inherit_it():
    crm_table, index_table = {}, {}
    crm = CrmProcessor(CODEC, crm_table)
    crm.process([
        _entity(0, "contact", "c1", email="bob@customer.test", company_id="co1"),
        _entity(1, "record", "CASE-7", company_id="co1", status="open", owner="anna@acme.test")]).apply_to(crm_table)
    mails = MailProcessor(Settings(), CODEC, index_table, regarding_for=crm.regarding_for)
    result = mails.process([_mail(0, "<m1@customer.test>", "bob@customer.test"),
                            _mail(1, "<m2@acme.test>", "anna@acme.test", direction="out", in_reply_to="<m1@customer.test>"),
                            _mail(2, "<m3@other.test>", "eve@other.test")])
    assert _regarding(result) == ["CASE-7", "CASE-7", None]
    assert crm.record_owner("acme", "CASE-7") == "anna@acme.test"

    # A restarted worker rebuilds the directory from its table.
    restarted = CrmProcessor(CODEC, crm_table)
    assert restarted.regarding_for("acme", "bob@customer.test") == "CASE-7"
    assert restarted.regarding_for("other-tenant", "bob@customer.test") is None


def test_undecodable_entity_is_dead_lettered():
    result = CrmProcessor(CODEC, {}).process([RawItem(0, 0, b"acme", b"junk")])
    assert [o.topic for o in result.outputs] == ["deadletter"]


def test_after_a_reset_every_tenants_directory_is_rebuilt_from_one_pass_over_the_table(scan_counting_table):
    table = scan_counting_table
    tenants = ("acme", "beta", "gamma")
    crm = CrmProcessor(CODEC, table)
    entities = []
    for n, tenant in enumerate(tenants):
        for kind, entity_id, fields in (("contact", "c1", {"email": "bob@customer.test", "company_id": "co1"}),
                                        ("record", f"CASE-{tenant}", {"company_id": "co1", "status": "open"})):
            record = CODEC.decode("crm.entities", _entity(len(entities), kind, entity_id, **fields).value)
            entities.append(RawItem(0, len(entities), tenant.encode(),
                                    CODEC.encode("crm.entities", {**record, "tenant": tenant})))
    crm.process(entities).apply_to(table)
    crm.reset()
    table.scans = 0
    assert [crm.regarding_for(t, "bob@customer.test") for t in tenants] == [f"CASE-{t}" for t in tenants]
    assert table.scans == 1  # not one pass per tenant


def test_a_table_of_avro_entities_from_before_the_state_encoding_stops_the_steps_instead_of_losing_the_crm():
    # Before the one state encoding the CRM table held the Avro records as received.
    table = {"acme\x1fcontact\x1fc1": _entity(0, "contact", "c1", email="bob@customer.test").value}
    crm = CrmProcessor(CODEC, table)
    with pytest.raises(StateFormatError, match="acme\\\\x1fcontact\\\\x1fc1"):
        crm.process([_entity(1, "contact", "c2")])
    # The correlator asks the directory too: a mail is not dead-lettered for it, the batch fails.
    mails = MailProcessor(Settings(), CODEC, {}, regarding_for=crm.regarding_for)
    with pytest.raises(StateFormatError):
        mails.process([_mail(0, "<m1@customer.test>", "bob@customer.test")])
