"""sla.events rows in ClickHouse and the one-row-per-target view the dashboards read."""

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.topics import SLA_EVENTS
from pipeline.erase import erase_from_clickhouse
from pipeline.sinks.clickhouse import rows_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def sla_event(tenant: str, target: str, outcome: str, at: datetime, *, cycle: int = 1, due_at: datetime | None = None,
              business_seconds: float = 0.0, on_time: bool = False, owner: str | None = "agent@acme.example",
              started_by: str = "<first@customer.example>") -> dict:
    record = {"event_id": f"{tenant}/{target}/{started_by}/{cycle}/{outcome}/{at:%H%M}", "tenant": tenant,
              "conversation_id": "c-1", "message_id": started_by, "target": target,
              "outcome": outcome, "cycle": cycle, "policy": "support", "team": "desk", "owner": owner,
              "mailbox": "support@acme.example", "regarding": None, "started_at": T0, "due_at": due_at,
              "event_time": at, "business_seconds": business_seconds, "on_time": on_time}
    codec = AvroCodec(EmbeddedRegistry())
    return codec.decode(SLA_EVENTS, codec.encode(SLA_EVENTS, record))  # what the sink reads off the topic


def insert(store, records: list[dict], first_offset: int = 0) -> None:
    columns, rows = rows_for(SLA_EVENTS, [(0, first_offset + n, r) for n, r in enumerate(records)], T0)
    store.insert("sla_events", rows, columns)


@pytest.mark.integration  # starts chDB
def test_sla_events_land_in_their_table_and_the_view_has_one_row_per_target(clickhouse_factory):
    store = clickhouse_factory()
    acme = [
        sla_event("acme", "first_response", "started", T0, due_at=T0 + 8 * HOUR),
        sla_event("acme", "first_response", "warned", T0 + 4 * HOUR, due_at=T0 + 8 * HOUR, business_seconds=14400),
        sla_event("acme", "first_response", "met", T0 + 5 * HOUR, due_at=T0 + 8 * HOUR, business_seconds=18000,
                  on_time=True),
        sla_event("acme", "resolution", "started", T0, due_at=T0 + 72 * HOUR),
        # Paused after our reply: no deadline while the desk waits on the customer.
        sla_event("acme", "resolution", "paused", T0 + 5 * HOUR, business_seconds=18000),
    ]
    # Another tenant's conversation of the same id, breached and then met late, a second cycle open.
    globex = [
        sla_event("globex", "next_response", "started", T0, due_at=T0 + 8 * HOUR, owner=None),
        sla_event("globex", "next_response", "breached", T0 + 8 * HOUR, due_at=T0 + 8 * HOUR, business_seconds=28800,
                  owner=None),
        sla_event("globex", "next_response", "met", T0 + 9 * HOUR, due_at=T0 + 8 * HOUR, business_seconds=32400,
                  owner=None),
        sla_event("globex", "next_response", "started", T0 + 10 * HOUR, cycle=2, due_at=T0 + 18 * HOUR, owner=None),
    ]
    insert(store, acme + globex)
    insert(store, acme[1:3], first_offset=100)  # redelivered: the stable ids collapse

    counts = store.query("SELECT tenant, target, count() FROM {db}.sla_events FINAL GROUP BY tenant, target "
                         "ORDER BY tenant, target").result_rows
    assert counts == [("acme", "first_response", 3), ("acme", "resolution", 2), ("globex", "next_response", 4)]

    rows = store.query(
        "SELECT tenant, target, cycle, outcome, started_at, due_at, met, on_time, breached, business_seconds, owner, "
        "team, first_event_time, last_event_time FROM {db}.sla_targets_latest ORDER BY tenant, target, cycle"
    ).result_rows
    assert rows == [
        ("acme", "first_response", 1, "met", T0, T0 + 8 * HOUR, True, True, False, 18000.0, "agent@acme.example",
         "desk", T0, T0 + 5 * HOUR),
        ("acme", "resolution", 1, "paused", T0, None, False, False, False, None, "agent@acme.example", "desk",
         T0, T0 + 5 * HOUR),
        ("globex", "next_response", 1, "met", T0, T0 + 8 * HOUR, True, False, True, 32400.0, None, "desk",
         T0, T0 + 9 * HOUR),
        ("globex", "next_response", 2, "started", T0, T0 + 18 * HOUR, False, False, False, None, None, "desk",
         T0 + 10 * HOUR, T0 + 10 * HOUR),
    ]


@pytest.mark.integration  # starts chDB
def test_of_events_at_one_moment_the_one_the_tracker_emits_later_is_the_latest(clickhouse_factory):
    store = clickhouse_factory()
    # A reply at the breach deadline: breached and met carry the same event time, inserted met first.
    insert(store, [sla_event("acme", "first_response", "met", T0 + 8 * HOUR, due_at=T0 + 8 * HOUR,
                             business_seconds=28800),
                   sla_event("acme", "first_response", "breached", T0 + 8 * HOUR, due_at=T0 + 8 * HOUR,
                             business_seconds=28800),
                   sla_event("acme", "first_response", "started", T0, due_at=T0 + 8 * HOUR)])
    # Our reply at the resolution's warning deadline: warned fires first, then the reply pauses it.
    insert(store, [sla_event("acme", "resolution", "paused", T0 + 40 * HOUR, business_seconds=144000),
                   sla_event("acme", "resolution", "warned", T0 + 40 * HOUR, due_at=T0 + 72 * HOUR,
                             business_seconds=144000),
                   sla_event("acme", "resolution", "started", T0, due_at=T0 + 72 * HOUR)], first_offset=10)
    assert store.query("SELECT target, outcome, met, breached, due_at FROM {db}.sla_targets_latest ORDER BY target"
                       ).result_rows == [("first_response", "met", True, True, T0 + 8 * HOUR),
                                         ("resolution", "paused", False, False, None)]


@pytest.mark.integration  # starts chDB
def test_a_conversation_started_over_after_its_retention_is_a_second_instance_of_cycle_1(clickhouse_factory):
    store = clickhouse_factory()
    later = T0 + 100 * 24 * HOUR
    insert(store, [sla_event("acme", "first_response", "started", T0, due_at=T0 + 8 * HOUR),
                   sla_event("acme", "first_response", "met", T0 + HOUR, due_at=T0 + 8 * HOUR, on_time=True),
                   sla_event("acme", "first_response", "started", later, due_at=later + 8 * HOUR,
                             started_by="<months-later@customer.example>")])
    assert store.query("SELECT cycle, message_id, outcome FROM {db}.sla_targets_latest ORDER BY first_event_time"
                       ).result_rows == [(1, "<first@customer.example>", "met"),
                                         (1, "<months-later@customer.example>", "started")]


@pytest.mark.integration  # starts chDB
def test_erase_removes_the_sla_events_of_an_owner_and_keeps_the_rest(clickhouse_factory):
    store = clickhouse_factory()
    insert(store, [sla_event("acme", "first_response", "started", T0, due_at=T0 + 8 * HOUR),
                   sla_event("acme", "resolution", "started", T0, due_at=T0 + 72 * HOUR),
                   sla_event("globex", "first_response", "started", T0, due_at=T0 + 8 * HOUR,
                             owner="someone.else@globex.example")])
    assert erase_from_clickhouse(store, "agent@acme.example")["sla_events"] == 2
    assert store.query("SELECT tenant, owner FROM {db}.sla_targets_latest").result_rows == [
        ("globex", "someone.else@globex.example")]
