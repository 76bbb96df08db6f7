"""The support-desk panels count what they say, checked against a direct computation in Python
over the very records the seeded store was loaded with."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from pipeline.analytics.dashboards import RESPONSE_TIMES, Dashboard
from pipeline.analytics.panels import data_time_range, default_variables, panel_query
from pipeline.contracts.topics import ESCALATIONS
from pipeline.escalation.figures import current_states

TENANTS = ("tenant-1", "tenant-2")


def _panel_rows(store, dashboard: Dashboard, title: str, tenant: str, time_from: datetime, time_to: datetime,
                **variables: str) -> list[tuple]:
    (panel,) = [p for p in dashboard.panels if p.title == title]
    values = {**default_variables(store, dashboard, tenant), **variables}
    sql, parameters = panel_query(panel.sql, database=store.database, time_from=time_from, time_to=time_to,
                                  variables=values)
    return list(store.client.query(sql, parameters=parameters).result_rows)


def _windows(store) -> list[tuple[datetime, datetime]]:
    """The whole history, and a window that ends while many conversations are still open (whole
    seconds: the time macros have no finer precision)."""
    start, end = data_time_range(store)
    hour = start.replace(minute=0, second=0, microsecond=0)
    return [(start, end + timedelta(days=2)), (hour + timedelta(hours=10), hour + timedelta(hours=30))]


def _current_states(records, tenant: str, time_from: datetime, time_to: datetime) -> Counter:
    """The tenant's conversations with a transition in the window, in their state at its end."""
    transitions = [r for topic, r in records if topic == ESCALATIONS and r["tenant"] == tenant
                   and r["event_time"] <= time_to]
    active = {r["conversation_id"] for r in transitions if r["event_time"] >= time_from}
    return current_states(r for r in transitions if r["conversation_id"] in active)


def test_the_seed_has_what_makes_current_states_differ_from_state_changes(seeded_records):
    escalations = [r for topic, r in seeded_records if topic == ESCALATIONS]
    per_conversation = Counter((r["tenant"], r["conversation_id"]) for r in escalations)
    assert {tenant for tenant, _ in per_conversation} == set(TENANTS)
    assert sum(n >= 3 for n in per_conversation.values()) > 50  # several transitions per conversation
    reopened = {(r["tenant"], r["conversation_id"]) for r in escalations
                if r["state"] == "OPEN" and r["previous_state"] == "RESOLVED"}
    assert len(reopened) > 20
    assert Counter(r["state"] for r in escalations) != current_states(escalations)


@pytest.mark.parametrize("tenant", TENANTS)
def test_escalations_by_state_count_each_conversation_once_in_its_current_state(seeded, seeded_records, tenant):
    for time_from, time_to in _windows(seeded):
        rows = _panel_rows(seeded, RESPONSE_TIMES, "Escalations by state", tenant, time_from, time_to)
        assert dict(rows) == _current_states(seeded_records, tenant, time_from, time_to), (time_from, time_to)
        assert [state for state, _ in rows] == sorted(state for state, _ in rows)


def test_the_seed_has_transitions_at_one_instant(seeded_records):
    """The panel test above covers these: a tie broken the wrong way would change its counts."""
    from tests.analytics.conftest import SAME_INSTANT

    for tenant in TENANTS:
        for conversation_id, _ in SAME_INSTANT:
            transitions = [r for topic, r in seeded_records if topic == ESCALATIONS
                           and r["tenant"] == tenant and r["conversation_id"] == conversation_id]
            assert transitions[-1]["event_time"] == transitions[-2]["event_time"], conversation_id
            assert transitions[-1]["state"] == ("OPEN" if "restarted" in conversation_id else "RESOLVED")
