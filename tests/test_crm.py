"""The CRM directory: last writer wins, deletions, and sender -> open record."""

from datetime import datetime, timedelta, timezone

from pipeline.crm import CrmDirectory

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def entity(kind, entity_id, minutes=0, **fields):
    return {"event_id": f"{kind}-{entity_id}-{minutes}", "tenant": "acme", "entity_type": kind, "entity_id": entity_id,
            "name": fields.pop("name", entity_id), "email": fields.pop("email", None),
            "company_id": fields.pop("company_id", None), "owner": fields.pop("owner", None),
            "status": fields.pop("status", None), "assigned_on": None, "updated_at": T0 + timedelta(minutes=minutes),
            "deleted": fields.pop("deleted", False)}


def directory(*records):
    crm = CrmDirectory()
    for record in records:
        crm.apply(record)
    return crm


def test_sender_is_linked_to_the_newest_open_record_of_its_company():
    crm = directory(entity("company", "co1"), entity("contact", "c1", email="Bob@Customer.test", company_id="co1"),
                    entity("record", "CASE-1", 1, company_id="co1", status="open", owner="anna@acme.test"),
                    entity("record", "CASE-2", 2, company_id="co1", status="open"),
                    entity("record", "CASE-3", 3, company_id="co1", status="closed"))
    assert crm.regarding_for("bob@customer.test") == "CASE-2"
    assert crm.regarding_for("nobody@customer.test") is None
    assert crm.get("record", "CASE-1").owner == "anna@acme.test"


def test_a_contact_without_company_can_hold_records_itself():
    crm = directory(entity("contact", "c9", email="solo@x.test"), entity("record", "LEAD-9", company_id="c9"))
    assert crm.regarding_for("solo@x.test") == "LEAD-9"


def test_last_writer_wins_and_late_old_versions_are_ignored():
    crm = directory(entity("record", "CASE-1", 5, company_id="co1", status="open"),
                    entity("contact", "c1", email="bob@customer.test", company_id="co1"))
    assert not crm.apply(entity("record", "CASE-1", 1, company_id="co1", status="closed"))  # older: ignored
    assert crm.regarding_for("bob@customer.test") == "CASE-1"
    assert crm.apply(entity("record", "CASE-1", 9, company_id="co1", status="closed"))
    assert crm.regarding_for("bob@customer.test") is None
    assert not crm.apply(entity("record", "CASE-1", 9, company_id="co1", status="closed"))  # redelivery: no change


def test_changed_address_and_deletion_update_the_lookups():
    crm = directory(entity("contact", "c1", email="old@customer.test", company_id="co1"),
                    entity("record", "CASE-1", company_id="co1"))
    crm.apply(entity("contact", "c1", 1, email="new@customer.test", company_id="co1"))
    assert crm.regarding_for("old@customer.test") is None and crm.regarding_for("new@customer.test") == "CASE-1"
    crm.apply(entity("contact", "c1", 2, deleted=True))
    assert crm.regarding_for("new@customer.test") is None and crm.get("contact", "c1") is None
