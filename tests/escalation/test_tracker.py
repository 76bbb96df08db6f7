"""The escalation state machine with a fake clock: deadlines, business hours, replies, reopening,
policies, alerts, ids and serialisation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastavro import parse_schema
from fastavro.validation import validate

from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation
from pipeline.escalation import EscalationTracker, MailEvent, State, Transition, transition_event_id
from pipeline.settings import BusinessHours, EscalationPolicy, EscalationSettings

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


class FakeClock:
    """The injected clock: a test moves it by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def hours(value: float) -> datetime:
    return T0 + timedelta(hours=value)


def mail(message_id: str, at: datetime | float = 0, *, direction: str = "in", conversation: str = "c1",
         tenant: str = "acme", mailbox: str | None = "support@ours.example", owner: str | None = "olga@ours.example",
         **fields) -> MailEvent:
    when = at if isinstance(at, datetime) else hours(at)
    return MailEvent(tenant=tenant, message_id=f"<{message_id}@test>", conversation_id=conversation,
                     direction=direction, event_time=when, mailbox=mailbox, owner=owner, **fields)


def reply(message_id: str, at: datetime | float, **fields) -> MailEvent:
    return mail(message_id, at, direction="out", **fields)


def tracker(*policies: EscalationPolicy, default: EscalationPolicy | None = None, clock: FakeClock | None = None,
            **settings) -> EscalationTracker:
    escalation = EscalationSettings(policies=policies, default_policy=default or EscalationPolicy(), **settings)
    return EscalationTracker(escalation, clock or FakeClock())


def states(transitions: list[Transition]) -> list[tuple[str, str, datetime]]:
    """(message, state, time) of each transition; the message without its <...@test> wrapping."""
    return [(t.message_id[1:-6], t.state.value, t.event_time) for t in transitions]


def run(engine: EscalationTracker, *events: MailEvent, until: datetime | None = None) -> list[Transition]:
    out: list[Transition] = []
    for event in events:
        out += engine.on_correlation(event)
    if until is not None:
        out += engine.advance(until)
    return out


# -- deadlines -------------------------------------------------------------------------------------


def test_unanswered_mail_warns_then_escalates_on_a_24_7_policy():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    out = engine.on_correlation(mail("a"))
    assert states(out) == [("a", "OPEN", T0)]
    assert out[0].previous_state is None and out[0].policy == "default" and out[0].cycle == 1
    assert engine.advance(hours(1.99)) == []
    warned = engine.advance(hours(2))
    assert states(warned) == [("a", "WARNED", hours(2))]
    assert warned[0].previous_state is State.OPEN
    escalated = engine.advance(hours(100))
    assert states(escalated) == [("a", "ESCALATED", hours(6))]  # the deadline, not the tick
    assert escalated[0].previous_state is State.WARNED
    assert engine.advance(hours(200)) == []


def test_live_ticks_read_the_injected_clock():
    clock = FakeClock()
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6), clock=clock)
    engine.on_correlation(mail("a"))
    clock.now = hours(1)
    assert engine.advance() == []
    clock.now = hours(2.5)
    assert states(engine.advance()) == [("a", "WARNED", hours(2))]
    # The next deadline is the escalation at 6 h.
    assert engine.advance(hours(6) - timedelta(milliseconds=1)) == []
    assert states(engine.advance(hours(6))) == [("a", "ESCALATED", hours(6))]


def test_replay_fires_deadlines_when_a_later_mail_passes_them():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    out = run(engine, mail("a"), mail("b", 3, conversation="c2"), mail("c", 7, conversation="c3"))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("b", "OPEN", hours(3)),
                           ("b", "WARNED", hours(5)), ("a", "ESCALATED", hours(6)), ("c", "OPEN", hours(7))]


def test_business_hours_friday_afternoon_warns_on_monday():
    office = EscalationPolicy(warn_after=2, escalate_after=10, business_hours=BusinessHours(start="08:00", end="17:00"))
    engine = tracker(default=office)
    friday = datetime(2026, 3, 6, 16, 30, tzinfo=UTC)
    engine.on_correlation(mail("a", friday))
    assert engine.advance(datetime(2026, 3, 9, 9, 29, tzinfo=UTC)) == []
    out = engine.advance(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    assert states(out) == [("a", "WARNED", datetime(2026, 3, 9, 9, 30, tzinfo=UTC)),
                           ("a", "ESCALATED", datetime(2026, 3, 10, 8, 30, tzinfo=UTC))]


def test_business_hours_in_berlin_across_the_dst_change():
    berlin = EscalationPolicy(warn_after=2, escalate_after=11,
                              business_hours=BusinessHours(start="08:00", end="17:00", timezone="Europe/Berlin"))
    engine = tracker(default=berlin)
    engine.on_correlation(mail("a", datetime(2026, 3, 27, 15, 30, tzinfo=UTC)))  # Friday 16:30 CET
    out = engine.advance(datetime(2026, 4, 1, tzinfo=UTC))
    # Monday 09:30 CEST = 07:30 UTC; 11 hours = 0.5 Friday + 9 Monday + 1.5 Tuesday: 09:30 CEST.
    assert states(out) == [("a", "WARNED", datetime(2026, 3, 30, 7, 30, tzinfo=UTC)),
                           ("a", "ESCALATED", datetime(2026, 3, 31, 7, 30, tzinfo=UTC))]


def test_a_holiday_is_skipped():
    policy = EscalationPolicy(warn_after=2, escalate_after=4, business_hours=BusinessHours(),
                              holidays=["2026-12-25"])
    engine = tracker(default=policy)
    engine.on_correlation(mail("a", datetime(2026, 12, 24, 16, 30, tzinfo=UTC)))  # Thursday
    out = engine.advance(datetime(2027, 1, 1, tzinfo=UTC))
    assert states(out) == [("a", "WARNED", datetime(2026, 12, 28, 9, 30, tzinfo=UTC)),
                           ("a", "ESCALATED", datetime(2026, 12, 28, 11, 30, tzinfo=UTC))]


# -- replies ---------------------------------------------------------------------------------------


def test_reply_before_the_warning_resolves_without_warning():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    out = run(engine, mail("a"), reply("r", 1.5), until=hours(100))
    assert states(out) == [("a", "OPEN", T0), ("a", "RESOLVED", hours(1.5))]
    assert out[-1].previous_state is State.OPEN
    assert out[-1].alerts == ()  # nobody was warned: nothing to tell


def test_reply_after_the_warning_resolves_the_warned_mail():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6, notify_on_resolve=("owner",)))
    out = run(engine, mail("a"), reply("r", 3), until=hours(100))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("a", "RESOLVED", hours(3))]
    assert out[-1].previous_state is State.WARNED
    assert [(a.event_type, a.user) for a in out[-1].alerts] == [("escalation_resolved", "olga@ours.example")]


def test_a_reply_at_the_deadline_comes_after_it():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    out = run(engine, mail("a"), reply("r", 2))
    assert states(out)[1:] == [("a", "WARNED", hours(2)), ("a", "RESOLVED", hours(2))]


def test_the_oldest_unanswered_mail_escalates():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    out = run(engine, mail("a"), mail("b", 1), until=hours(3))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2))]


def test_outbound_mail_without_a_clock_or_older_than_it_changes_nothing():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    assert engine.on_correlation(reply("r0", 0)) == []  # we wrote first: nothing is waiting
    assert engine.state_of("acme", "c1") is None
    run(engine, mail("a", 1))
    assert engine.on_correlation(reply("old", 0.5)) == []  # dated before the customer's mail
    assert states(engine.on_correlation(reply("r", 1.5))) == [("a", "RESOLVED", hours(1.5))]
    assert engine.on_correlation(reply("r2", 1.6)) == []  # already resolved


def test_conversations_and_tenants_have_their_own_clocks():
    engine = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6))
    run(engine, mail("a"), mail("b", conversation="c2"), mail("x", tenant="other"))
    out = run(engine, reply("r", 1, conversation="c2"), until=hours(2))
    assert states(out) == [("b", "RESOLVED", hours(1)), ("a", "WARNED", hours(2)), ("x", "WARNED", hours(2))]
    assert [t.tenant for t in out] == ["acme", "acme", "other"]


# -- customer replies: reopen, restart, keep -------------------------------------------------------


def policy_with(mode: str) -> EscalationPolicy:
    return EscalationPolicy(warn_after=2, escalate_after=6, on_customer_reply=mode)


def test_reopen_starts_a_new_clock_after_a_resolution_only():
    engine = tracker(default=policy_with("reopen"))
    out = run(engine, mail("a"), mail("b", 1), reply("r", 3), mail("c", 4), until=hours(100))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("a", "RESOLVED", hours(3)),
                           ("c", "OPEN", hours(4)), ("c", "WARNED", hours(6)), ("c", "ESCALATED", hours(10))]
    reopened = out[3]
    assert (reopened.previous_state, reopened.cycle) == (State.RESOLVED, 2)


def test_restart_restarts_the_clock_from_every_later_customer_mail():
    engine = tracker(default=policy_with("restart"))
    out = run(engine, mail("a"), mail("b", 3), until=hours(4))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("b", "OPEN", hours(3))]
    assert (out[-1].previous_state, out[-1].cycle) == (State.WARNED, 2)
    out = run(engine, reply("r", 4.5), mail("c", 5), until=hours(100))
    assert states(out) == [("b", "RESOLVED", hours(4.5)), ("c", "OPEN", hours(5)),
                           ("c", "WARNED", hours(7)), ("c", "ESCALATED", hours(11))]
    assert out[1].cycle == 3


def test_keep_leaves_a_resolved_conversation_resolved():
    engine = tracker(default=policy_with("keep"))
    out = run(engine, mail("a"), mail("b", 1), reply("r", 3), mail("thanks", 4), until=hours(100))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("a", "RESOLVED", hours(3))]


def test_a_customer_mail_dated_before_the_reply_or_a_duplicate_does_not_reopen():
    for mode in ("reopen", "restart"):
        engine = tracker(default=policy_with(mode))
        run(engine, mail("a"), reply("r", 3))
        assert engine.on_correlation(mail("a")) == []  # the same mail again (at-least-once delivery)
        assert engine.on_correlation(mail("late", 2.5)) == []  # written before our reply
        assert engine.state_of("acme", "c1").state is State.RESOLVED


def test_resolved_conversations_are_forgotten_after_the_retention():
    engine = tracker(default=policy_with("keep"), resolved_retention_days=1)
    run(engine, mail("a"), reply("r", 1))
    assert len(engine) == 1
    assert engine.advance(hours(24.9)) == [] and len(engine) == 1
    assert engine.advance(hours(25)) == [] and len(engine) == 0
    # Forgotten: a later mail starts a clock as in a new conversation.
    assert states(engine.on_correlation(mail("b", 30))) == [("b", "OPEN", hours(30))]


def test_escalated_conversations_nobody_answers_are_forgotten_too():
    engine = tracker(default=policy_with("reopen"), resolved_retention_days=1)
    run(engine, mail("a"), until=hours(6))
    assert engine.state_of("acme", "c1").state is State.ESCALATED
    engine.advance(hours(6 + 24))
    assert engine.state_of("acme", "c1") is None


# -- automatic mail --------------------------------------------------------------------------------


def test_an_out_of_office_or_a_bounce_opens_no_clock_and_is_never_unanswered():
    engine = tracker()
    out = run(engine, mail("ooo", automatic="auto_reply"), mail("dsn", 1, automatic="bounce"),
              mail("cron", 2, automatic="auto_generated"), mail("alert", 3, automatic="notifier"), until=hours(100))
    assert out == [] and len(engine) == 0


def test_an_automatic_mail_does_not_restart_or_reopen_a_clock():
    for mode in ("restart", "reopen"):
        engine = tracker(default=policy_with(mode))
        out = run(engine, mail("a"), mail("ooo", 1, automatic="auto_reply"), reply("r", 3),
                  mail("ooo2", 4, automatic="auto_reply"), mail("dsn", 5, automatic="bounce"), until=hours(100))
        assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("a", "RESOLVED", hours(3))]


def test_an_auto_acknowledgement_does_not_resolve():
    engine = tracker(default=policy_with("reopen"))
    out = run(engine, mail("a"), reply("ack", 0.01, automatic="auto_reply"), until=hours(7))
    assert states(out) == [("a", "OPEN", T0), ("a", "WARNED", hours(2)), ("a", "ESCALATED", hours(6))]
    assert states(run(engine, reply("person", 8))) == [("a", "RESOLVED", hours(8))]


def test_mailing_list_mail_counts_as_a_person_unless_the_policy_ignores_it():
    assert states(run(tracker(), mail("post", automatic="list"))) == [("post", "OPEN", T0)]
    lists = EscalationPolicy(name="lists", match={"mailbox": "list@ours.example"}, ignore_automatic=("list",))
    engine = tracker(lists)
    assert run(engine, mail("post", automatic="list", mailbox="list@ours.example")) == []
    everything = tracker(default=EscalationPolicy(ignore_automatic=()))
    assert states(run(everything, mail("ooo", automatic="auto_reply"))) == [("ooo", "OPEN", T0)]


def test_the_running_clock_policy_decides_what_is_ignored():
    vip = EscalationPolicy(name="vip", match={"mailbox": "vip@ours.example"}, ignore_automatic=())
    engine = tracker(vip)
    run(engine, mail("a", mailbox="vip@ours.example"))
    # Sent from no mailbox, the acknowledgement alone would fall to the default policy, which ignores it.
    out = run(engine, reply("ack", 1, automatic="auto_reply", mailbox=None))
    assert [(t.state.value, t.policy) for t in out] == [("RESOLVED", "vip")]


def test_automatic_mail_in_two_tenants_leaves_both_clocks_alone():
    engine = tracker()
    run(engine, mail("a", tenant="acme"), mail("a", tenant="beta"))
    out = run(engine, reply("ack", 1, tenant="acme", automatic="auto_reply"),
              reply("ack", 1, tenant="beta", automatic="notifier"), until=hours(4))
    assert sorted((t.tenant, t.state.value) for t in out) == [("acme", "WARNED"), ("beta", "WARNED")]


# -- policies --------------------------------------------------------------------------------------


VIP = EscalationPolicy(name="vip", match={"mailbox": "VIP@ours.example"}, warn_after=0.5, escalate_after=1)
BETA = EscalationPolicy(name="beta", match={"tenant": "beta"}, warn_after=1, escalate_after=2)
CASES = EscalationPolicy(name="cases", match={"regarding_prefix": "SUPP-"}, warn_after=3, escalate_after=5)
FIRST = EscalationPolicy(name="first", match={"mail_type": "new", "tenant": "acme"}, warn_after=7, escalate_after=9)


@pytest.mark.parametrize("event, policy, warn_hours", [
    (mail("a", mailbox="vip@ours.example"), "vip", 0.5),  # mailboxes compare case-insensitively
    (mail("a", tenant="beta", mailbox="vip@ours.example"), "vip", 0.5),  # first match wins
    (mail("a", tenant="beta"), "beta", 1),
    (mail("a", regarding="supp-1234"), "cases", 3),
    (mail("a", mail_type="new"), "first", 7),
    (mail("a", mail_type="reply"), "default", 4),
    (mail("a", tenant="gamma", mailbox=None), "default", 4),
])
def test_the_first_matching_policy_applies(event, policy, warn_hours):
    engine = tracker(VIP, BETA, CASES, FIRST)
    opened = engine.on_correlation(event)
    assert opened[0].policy == policy
    warned = engine.advance(hours(100))[0]
    assert (warned.policy, warned.event_time) == (policy, hours(warn_hours))


def test_disabled_escalation_does_nothing():
    engine = tracker(enabled=False)
    assert engine.on_correlation(mail("a")) == [] and engine.advance(hours(100)) == [] and len(engine) == 0


# -- alerts ----------------------------------------------------------------------------------------


def test_alerts_go_to_the_configured_users_with_the_owner_substituted():
    policy = EscalationPolicy(warn_after=1, escalate_after=2, notify_on_open=("team:intake",),
                              notify_on_warn=("owner",),
                              notify_on_escalate=("owner", "manager:max@ours.example", "user:olga@ours.example"))
    engine = tracker(default=policy)
    assigned = T0 - timedelta(days=1)
    out = run(engine, mail("a", regarding="SUPP-1", assigned_on=assigned), until=hours(3))
    assert [[(a.event_type, a.user) for a in t.alerts] for t in out] == [
        [("escalation_opened", "team:intake")],
        [("escalation_warned", "olga@ours.example")],
        [("escalation_escalated", "olga@ours.example"), ("escalation_escalated", "max@ours.example")],
    ]
    alert = out[2].alerts[1]
    assert alert.source_record_id == out[2].event_id
    assert (alert.tenant, alert.event_time, alert.assigned_on, alert.record_owner) == (
        "acme", hours(2), assigned, "olga@ours.example")
    assert "SUPP-1" in alert.message and "escalated" in alert.message
    assert "1 hour" in out[1].alerts[0].message


def test_owner_alerts_are_dropped_when_the_mail_has_no_owner():
    policy = EscalationPolicy(warn_after=1, escalate_after=2, notify_on_warn=("owner", "manager:max@ours.example"))
    out = run(tracker(default=policy), mail("a", owner=None), until=hours(1))
    assert [a.user for a in out[1].alerts] == ["max@ours.example"]
    assert out[1].alerts[0].record_owner is None


# -- ids, records, serialisation -------------------------------------------------------------------


def test_event_ids_are_stable_and_distinct():
    def replay() -> list[Transition]:
        return run(tracker(default=policy_with("reopen")), mail("a"), reply("r", 3), mail("b", 4), until=hours(20))

    first, second = replay(), replay()
    assert [t.event_id for t in first] == [t.event_id for t in second]
    assert [a.event_id for t in first for a in t.alerts] == [a.event_id for t in second for a in t.alerts]
    ids = [t.event_id for t in first] + [a.event_id for t in first for a in t.alerts]
    assert len(set(ids)) == len(ids)
    assert first[0].event_id == transition_event_id("acme", "<a@test>", State.OPEN, 1)
    assert all(len(event_id) == 32 for event_id in ids)


def test_a_live_run_and_a_replay_give_the_same_records():
    live_clock = FakeClock()
    live = tracker(default=EscalationPolicy(warn_after=2, escalate_after=6), clock=live_clock)
    out = live.on_correlation(mail("a"))
    for minute in range(1, 8 * 60, 7):  # ticks every 7 minutes: none falls on a deadline
        live_clock.now = T0 + timedelta(minutes=minute)
        out += live.advance()
    replayed = run(tracker(default=EscalationPolicy(warn_after=2, escalate_after=6)), mail("a"), until=hours(8))
    assert out == replayed


def test_records_match_the_avro_schemas():
    escalation = parse_schema(json.loads((SCHEMAS / "escalations.avsc").read_text()))
    alert = parse_schema(json.loads((SCHEMAS / "alerts.avsc").read_text()))
    policy = EscalationPolicy(warn_after=1, escalate_after=2, notify_on_open=("owner",))
    out = run(tracker(default=policy), mail("a", owner=None, mailbox=None), mail("b", conversation="c2"),
              reply("r", 1.5, conversation="c2"), until=hours(3))
    assert {t.state for t in out} == set(State)
    for transition in out:
        assert validate(transition.to_record(), escalation, raise_errors=True)
        for item in transition.alerts:
            assert validate(item.to_record(), alert, raise_errors=True)


def test_state_round_trip_mid_way_gives_the_same_future():
    settings = EscalationSettings(default_policy=EscalationPolicy(warn_after=2, escalate_after=6,
                                                                  on_customer_reply="restart",
                                                                  business_hours=BusinessHours()))
    first = [mail("a"), mail("b", 1, conversation="c2"), reply("r", 1.5, conversation="c2"), mail("c", 2)]
    later = [mail("d", 5, conversation="c3"), reply("s", 30), mail("e", 31, conversation="c2")]
    whole = EscalationTracker(settings, FakeClock())
    run(whole, *first, until=hours(3))
    expected = run(whole, *later, until=hours(200))

    part = EscalationTracker(settings, FakeClock())
    run(part, *first, until=hours(3))
    data = json.loads(json.dumps(part.to_dict()))  # what a table would store
    restored = EscalationTracker.from_dict(settings, FakeClock(), data)
    assert restored.to_dict() == part.to_dict()
    assert run(restored, *later, until=hours(200)) == expected
    assert expected  # the future is not empty


def test_unknown_state_format_is_refused():
    with pytest.raises(ValueError, match="format"):
        EscalationTracker.from_dict(EscalationSettings(), FakeClock(), {"format": 99})


def test_mail_event_from_a_correlation():
    correlation = Correlation(tenant="acme", message_id="<a@test>", conversation_id="c1", method=Method.IN_REPLY_TO,
                              mail_type="reply", direction="in", event_time=T0, confidence=1.0,
                              parent_message_id="<p@test>",
                              regarding="SUPP-1", automatic="auto_reply", subject="Automatic reply: order")
    event = MailEvent.from_correlation(correlation, mailbox="support@ours.example", owner="olga@ours.example")
    assert event == MailEvent(tenant="acme", message_id="<a@test>", conversation_id="c1", direction="in",
                              event_time=T0, mailbox="support@ours.example", regarding="SUPP-1",
                              owner="olga@ours.example", mail_type="reply", parent_message_id="<p@test>",
                              automatic="auto_reply", subject="Automatic reply: order")
