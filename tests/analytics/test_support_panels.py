"""The support-desk panels count what they say, checked against a direct computation in Python
over the very records the seeded store was loaded with."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from itertools import product

import pytest

from pipeline.analytics.dashboards import RESPONSE_TIMES, Dashboard
from pipeline.analytics.panels import data_time_range, default_variables, panel_query
from pipeline.contracts.topics import ESCALATIONS, MAIL_CORRELATED, MAIL_RESPONSES
from pipeline.escalation.figures import current_states
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


def test_unanswered_and_escalations_are_what_they_are_with_the_automatic_mail_removed_by_hand(clickhouse_factory):
    """The issue's target: people's mail with automatic mail mixed in gives the panels the same
    people's mail gives alone (the seeded escalations come from the tracker, which ignores it too)."""
    stores = {}
    for name, automatic in (("mixed", AutomaticMix()), ("people only", None)):
        stores[name] = clickhouse_factory()
        load_records(stores[name], seed_records(Settings(), mails_per_tenant=1500, campaigns=1, recipients=10,
                                                automatic=automatic))
    assert stores["mixed"].query("SELECT countIf(automatic != '') FROM {db}.mail_correlated").result_rows[0][0] > 500
    for tenant in TENANTS:
        for (time_from, time_to), hours in product(_windows(stores["people only"]), ("24", "2")):
            for title in ("Unanswered conversations", "Oldest unanswered mail", "Escalations by state"):
                mixed, alone = (_panel_rows(stores[name], RESPONSE_TIMES, title, tenant, time_from, time_to,
                                            unanswered_hours=hours) for name in ("mixed", "people only"))
                assert mixed == alone, (tenant, time_from, hours, title)
        (waiting,), = _panel_rows(stores["mixed"], RESPONSE_TIMES, "Unanswered conversations", tenant,
                                  *_windows(stores["mixed"])[0])
        assert waiting > 100
