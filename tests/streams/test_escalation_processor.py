"""The escalation batch step and its wall-clock tick, several tenants on several partitions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.settings import Settings
from pipeline.streams.escalation import EscalationProcessor, state_key
from pipeline.runtime.batch import RawItem, offset_key

CODEC = AvroCodec(EmbeddedRegistry())
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def correlated(tenant: str, message_id: str, when: datetime) -> bytes:
    return CODEC.encode("mail.correlated", {
        "event_id": f"{tenant}-{message_id}", "tenant": tenant, "generation": 0, "settings_fingerprint": "f",
        "message_id": message_id, "conversation_id": f"conv-{message_id}", "parent_message_id": None,
        "regarding": None, "method": 0, "method_name": "None", "mail_type": "new", "direction": "in",
        "event_time": when, "tracking_token": None, "candidate_count": 0, "evidence": "{}",
        "subject": "Help", "from_addr": "customer@example.com", "to": ["agent@support.example"], "cc": [],
        "bcc": [], "mailbox": "support", "source_partition": 0, "source_offset": 0})


def test_a_tick_writes_the_state_of_every_tenant_it_moved_in_that_tenants_partition():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    # acme on partition 0, beta on partition 3: each opens a clock.
    for partition, tenant in ((0, "acme"), (3, "beta")):
        batch = processor.process([RawItem(partition, 0, tenant.encode(), correlated(tenant, "<m1@x>", T0))])
        batch.apply_to(table)

    tick = processor.tick(T0 + timedelta(days=3))
    states = {CODEC.decode("escalations", o.value)["tenant"] for o in tick.outputs if o.topic == "escalations"}
    assert states == {"acme", "beta"}
    assert set(tick.writes) == {0, 3}
    assert state_key("acme", "conv-<m1@x>") in tick.writes[0]
    assert state_key("beta", "conv-<m1@x>") in tick.writes[3]

    # The next batch holds only partition 0: it carries no write of another partition (the tick's
    # were its own), so applying it never needs an event of partition 3.
    after = processor.process([RawItem(0, 1, b"acme", correlated("acme", "<m2@x>", T0 + timedelta(days=3)))])
    assert set(after.writes) == {0}
    assert offset_key(0) in after.writes[0]


def test_a_tick_after_a_restart_fires_nothing_twice_once_its_writes_are_applied():
    table: dict = {}
    processor = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    processor.process([RawItem(2, 0, b"acme", correlated("acme", "<m1@x>", T0))]).apply_to(table)
    first = processor.tick(T0 + timedelta(days=3))
    assert first.outputs
    first.apply_to(table)

    restarted = EscalationProcessor(Settings(), CODEC, table, clock=lambda: T0)
    restarted.process([RawItem(2, 0, b"acme", correlated("acme", "<m1@x>", T0))])  # a redelivery: skipped
    assert restarted.tick(T0 + timedelta(days=3)).outputs == []
