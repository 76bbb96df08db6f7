"""The support-desk panels count what they say, checked against a direct computation in Python
over the very records the seeded store was loaded with."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from itertools import product

import pytest

from pipeline.analytics.dashboards import RESPONSE_TIMES, SLA_TARGETS, Dashboard
from pipeline.analytics.panels import data_time_range, default_variables, panel_query, run_dashboard
from pipeline.contracts.topics import ESCALATIONS, MAIL_CORRELATED, MAIL_RESPONSES, SLA_EVENTS
from pipeline.escalation.figures import TARGETS, current_states, sla_figures
from pipeline.analytics.seed import load_records, seed_records
from pipeline.settings import EscalationPolicy, Settings
from pipeline.synth import AutomaticMix

TENANTS = ("tenant-1", "tenant-2")
IGNORED = ("bounce", "notifier", "auto_reply", "auto_generated")  # EscalationPolicy's default ignore_automatic


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
    return [(start.replace(microsecond=0), (end + timedelta(days=2)).replace(microsecond=0)),
            (hour + timedelta(hours=10), hour + timedelta(hours=40))]


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


def _waiting(records, tenant: str, time_from: datetime, time_to: datetime, hours: int) -> dict[str, list[dict]]:
    """Conversation -> its customer's mails since our last reply, for the conversations whose
    latest person's mail (up to the window's end, our reply last at one instant) is the
    customer's, dated in the window and more than ``hours`` before its end.  Automatic mail of the
    kinds a policy ignores by default is nobody's."""
    newest: dict[str, dict] = {}  # message id -> the newest generation's decision
    for topic, record in records:
        if (topic == MAIL_CORRELATED and record["tenant"] == tenant and record["event_time"] <= time_to
                and record["automatic"] not in IGNORED):
            known = newest.get(record["message_id"])
            if known is None or record["generation"] >= known["generation"]:
                newest[record["message_id"]] = record
    conversations: dict[str, list[dict]] = {}
    for record in newest.values():
        conversations.setdefault(record["conversation_id"], []).append(record)
    waiting = {}
    for conversation_id, mails in conversations.items():
        mails.sort(key=lambda mail: (mail["event_time"], mail["direction"] == "out"))
        last = mails[-1]
        if last["direction"] != "in" or not time_from <= last["event_time"] < time_to - timedelta(hours=hours):
            continue
        replies = [mail["event_time"] for mail in mails if mail["direction"] == "out"]
        waiting[conversation_id] = [mail for mail in mails if mail["direction"] == "in"
                                    and (not replies or mail["event_time"] > max(replies))]
    return waiting


def _ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # as DateTime64(3) holds it


@pytest.mark.parametrize("tenant", TENANTS)
@pytest.mark.parametrize("hours", ["24", "2"])
def test_unanswered_counts_conversations_waiting_for_us_not_inbound_mail(seeded, seeded_records, tenant, hours):
    for time_from, time_to in _windows(seeded):
        expected = _waiting(seeded_records, tenant, time_from, time_to, int(hours))
        assert expected, (time_from, time_to)
        (stat,) = _panel_rows(seeded, RESPONSE_TIMES, "Unanswered conversations", tenant, time_from, time_to,
                              unanswered_hours=hours)
        assert stat == (len(expected),)
        rows = _panel_rows(seeded, RESPONSE_TIMES, "Oldest unanswered mail", tenant, time_from, time_to,
                           unanswered_hours=hours)
        oldest = sorted(((_ms(mails[0]["event_time"]), conversation_id, mails) for conversation_id, mails
                         in expected.items()), key=lambda item: item[:2])[:50]
        assert rows == [(since, mails[0]["from_addr"], mails[0]["subject"], mails[0]["mailbox"], len(mails),
                         int((time_to - since).total_seconds())) for since, _, mails in oldest]


def test_unanswered_leaves_out_the_mail_we_answered(seeded, seeded_records):
    """What the panel counted before: every inbound mail without a reply of its own, though the
    customer's mail after it was answered, or we answered two of them at once."""
    time_from, time_to = _windows(seeded)[0]
    waiting = _waiting(seeded_records, "tenant-1", time_from, time_to, 24)
    assert len(waiting["c-wait-follow-ups"]) == 3 and "c-wait-answered-at-once" not in waiting
    assert {"c-wait-acknowledged", "c-wait-list"} <= waiting.keys()
    assert not {"c-wait-out-of-office", "c-wait-bounced", "c-wait-notified"} & waiting.keys()
    answered = {r["answers_message_id"] for topic, r in seeded_records if topic == MAIL_RESPONSES}
    without_reply = sum(1 for topic, r in seeded_records if topic == MAIL_CORRELATED and r["tenant"] == "tenant-1"
                        and r["direction"] == "in" and r["message_id"] not in answered)
    assert len(waiting) < sum(len(mails) for mails in waiting.values()) < without_reply


def test_the_seed_mixes_automatic_mail_into_the_conversations(seeded_records):
    kinds = Counter(r["automatic"] for topic, r in seeded_records if topic == MAIL_CORRELATED
                    and r["tenant"] == "tenant-2" and not r["message_id"].endswith("@seed.test>"))
    assert kinds[""] > 1000 and kinds["auto_reply"] > 100 and kinds["bounce"] > 10
    assert IGNORED == EscalationPolicy().ignore_automatic


def test_every_support_panel_is_what_it_is_with_the_automatic_mail_removed_by_hand(clickhouse_factory):
    """The issue's target: people's mail with automatic mail mixed in gives every panel of the
    response-time and SLA dashboards the rows the same people's mail gives alone (the seed's
    escalations and SLA events come from the trackers, which ignore it too)."""
    from tests.analytics.conftest import SEEDED_SETTINGS

    stores = {}
    for name, automatic in (("mixed", AutomaticMix()), ("people only", None)):
        stores[name] = clickhouse_factory()
        load_records(stores[name], seed_records(SEEDED_SETTINGS, mails_per_tenant=1500, campaigns=1, recipients=10,
                                                automatic=automatic))
    assert stores["mixed"].query("SELECT countIf(automatic != '') FROM {db}.mail_correlated").result_rows[0][0] > 500
    rows_seen = Counter()
    for tenant, (time_from, time_to), dashboard in product(TENANTS, _windows(stores["people only"]),
                                                          (RESPONSE_TIMES, SLA_TARGETS)):
        for variables in ({}, {"unanswered_hours": "2", "due_within_hours": "4"}):
            panels = {name: run_dashboard(store, dashboard, time_from=time_from, time_to=time_to,
                                          variables={**default_variables(store, dashboard, tenant), **variables})
                      for name, store in stores.items()}
            for mixed, alone in zip(panels["mixed"], panels["people only"]):
                assert mixed.rows == alone.rows, (tenant, time_from, variables, alone.panel.title)
                rows_seen[alone.panel.title] += len(alone.rows)
    assert all(rows_seen[panel.title] for panel in (*RESPONSE_TIMES.panels, *SLA_TARGETS.panels)), rows_seen


# -- SLA targets -------------------------------------------------------------------------------

def _instances(records, tenant: str, time_to: datetime | None = None) -> dict[tuple, list[dict]]:
    """(conversation, target, cycle, starting mail) -> the SLA events of that target instance up
    to ``time_to``, in the order the tracker emitted them."""
    instances: dict[tuple, list[dict]] = {}
    for topic, record in records:
        if topic == SLA_EVENTS and record["tenant"] == tenant and (time_to is None or record["event_time"] <= time_to):
            key = (record["conversation_id"], record["target"], record["cycle"], record["message_id"])
            instances.setdefault(key, []).append(record)
    return instances


def _shares_met(records, tenant, time_from, time_to, group, target="All") -> list[tuple]:
    """Rows of a 'Targets met per ...' panel: per group of the instances started in the window
    (``group`` of an instance's latest event), what figures.sla_figures says of their events."""
    groups: dict = {}
    for (_, instance_target, _, _), events in _instances(records, tenant).items():
        if time_from <= events[-1]["started_at"] <= time_to and target in ("All", instance_target):
            groups.setdefault(group(events[-1]), []).extend(events)
    rows = []
    for key, events in sorted(groups.items(), key=lambda item: (item[0] is None, item[0])):
        figures = sla_figures(events).values()
        on_time, late, not_met = (sum(getattr(f, name) for f in figures)
                                  for name in ("met_on_time", "met_late", "breached_open"))
        if on_time + late + not_met:
            rows.append((key, on_time + late + not_met, on_time, late, not_met,
                         pytest.approx(on_time / (on_time + late + not_met))))
    return rows


def test_the_seed_has_sla_targets_of_every_kind_and_outcome(seeded_records):
    events = [r for topic, r in seeded_records if topic == SLA_EVENTS]
    assert {r["tenant"] for r in events} == set(TENANTS)
    assert {(r["target"], r["outcome"]) for r in events} >= {(t, o) for t in TARGETS for o in ("started", "met")}
    assert {r["outcome"] for r in events} >= {"paused", "resumed", "warned", "breached"}
    assert len({r["owner"] for r in events}) > 5 and {r["team"] for r in events} == {"first-line", "second-line"}
    assert any(r["outcome"] == "met" and not r["on_time"] for r in events)


@pytest.mark.parametrize("tenant", TENANTS)
@pytest.mark.parametrize("target", ["All", "first_response", "resolution"])
def test_targets_met_per_owner_team_mailbox_and_day(seeded, seeded_records, tenant, target):
    groups = {"owner": lambda e: e["owner"], "team": lambda e: e["team"], "mailbox": lambda e: e["mailbox"],
              "day": lambda e: e["started_at"].replace(hour=0, minute=0, second=0, microsecond=0)}
    for time_from, time_to in _windows(seeded):
        for column, group in groups.items():
            expected = _shares_met(seeded_records, tenant, time_from, time_to, group, target)
            assert expected, (column, time_from)
            rows = _panel_rows(seeded, SLA_TARGETS, f"Targets met per {column}", tenant, time_from, time_to,
                               target=target)
            if column == "day":  # a time series of the share alone
                expected = [(day, share) for day, *_, share in expected]
            assert rows == expected, (column, time_from)


@pytest.mark.parametrize("tenant", TENANTS)
def test_time_to_meet_a_target_is_the_working_time_of_the_met_ones(seeded, seeded_records, tenant):
    for time_from, time_to in _windows(seeded):
        started = [event for events in _instances(seeded_records, tenant).values()
                   if time_from <= events[-1]["started_at"] <= time_to for event in events]
        figures = sla_figures(started)
        expected = [(target, f.met_on_time + f.met_late, f.p50_business_seconds, f.p90_business_seconds)
                    for target, f in sorted(figures.items()) if f.met_on_time + f.met_late]
        assert len(expected) == 3
        assert _panel_rows(seeded, SLA_TARGETS, "Time to meet a target", tenant, time_from, time_to) == expected


def _due_soon(records, tenant, time_to, hours) -> list[tuple]:
    rows = []
    for (conversation_id, target, _, _), events in _instances(records, tenant, time_to).items():
        latest = events[-1]
        decided = any(e["outcome"] in ("met", "breached") for e in events)
        if not decided and latest["due_at"] is not None and time_to < latest["due_at"] <= time_to + timedelta(hours=hours):
            rows.append((latest["due_at"], target, conversation_id, latest["owner"], latest["team"], latest["mailbox"],
                         int((latest["due_at"] - time_to).total_seconds())))
    return sorted(rows, key=lambda row: (row[0], row[2], row[1]))


@pytest.mark.parametrize("tenant", TENANTS)
@pytest.mark.parametrize("hours", ["24", "4"])
def test_breaches_due_are_the_open_targets_whose_deadline_comes_next(seeded, seeded_records, tenant, hours):
    for time_from, time_to in _windows(seeded):
        expected = _due_soon(seeded_records, tenant, time_to, int(hours))
        (count,), = _panel_rows(seeded, SLA_TARGETS, "Breaches due soon", tenant, time_from, time_to,
                                due_within_hours=hours)
        rows = _panel_rows(seeded, SLA_TARGETS, "Targets breaching next", tenant, time_from, time_to,
                           due_within_hours=hours)
        assert rows == expected[:100] and count == len(expected)
    assert {row[1] for row in expected} == {"first_response", "next_response"}  # the window that ends mid-traffic
