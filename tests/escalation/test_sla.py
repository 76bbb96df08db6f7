"""SLA targets with a fake clock: first response, next response and resolution, the waiting-on-customer
pause, the three ways to resolve, business hours, reopening, automatic mail, tenants, ids and state;
then properties over random conversations (hypothesis)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.escalation import MailEvent
from pipeline.escalation.model import to_ms
from pipeline.escalation.sla import Outcome, SlaEvent, SlaTracker, Target, sla_event_id
from pipeline.settings import BusinessHours, EscalationPolicy, EscalationSettings, SlaSettings, SlaTarget

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
FIRST, NEXT, RESOLUTION = Target.FIRST_RESPONSE, Target.NEXT_RESPONSE, Target.RESOLUTION
# The fields of sla.events (ISSUE16.md §D), which schemas/sla.events.avsc is written from.
RECORD_FIELDS = ["event_id", "tenant", "conversation_id", "message_id", "target", "outcome", "cycle", "policy",
                 "team", "owner", "mailbox", "regarding", "started_at", "due_at", "event_time", "business_seconds",
                 "on_time"]


def hours(value: float) -> datetime:
    return T0 + timedelta(hours=value)


def mail(message_id: str, at: datetime | float = 0, *, direction: str = "in", conversation: str = "c1",
         tenant: str = "acme", **fields) -> MailEvent:
    when = at if isinstance(at, datetime) else hours(at)
    values = {"mailbox": "support@ours.example", "owner": "olga@ours.example"} | fields
    return MailEvent(tenant=tenant, message_id=f"<{message_id}@test>", conversation_id=conversation,
                     direction=direction, event_time=when, **values)


def reply(message_id: str, at: datetime | float, **fields) -> MailEvent:
    return mail(message_id, at, direction="out", **fields)


def policy(*, first=(4, 8), next_=(4, 8), resolution=(40, 72), **fields) -> EscalationPolicy:
    sla = fields.pop("sla", {})
    targets = {name: None if times is None else SlaTarget(warn_after=times[0], breach_after=times[1])
               for name, times in (("first_response", first), ("next_response", next_), ("resolution", resolution))}
    return EscalationPolicy(**fields, sla=SlaSettings(**targets | sla))


def tracker(default: EscalationPolicy | None = None, *policies: EscalationPolicy, **settings) -> SlaTracker:
    escalation = EscalationSettings(default_policy=default or policy(), policies=policies, **settings)
    return SlaTracker(escalation, clock=never)


def never() -> datetime:
    raise AssertionError("these tests always pass the time")


def run(engine: SlaTracker, *events: MailEvent, until: datetime | float | None = None) -> list[SlaEvent]:
    out: list[SlaEvent] = []
    for event in events:
        out += engine.on_mail(event)
    if until is not None:
        out += engine.advance(until if isinstance(until, datetime) else hours(until))
    return out


def outcomes(events: list[SlaEvent]) -> list[tuple[str, int, str, datetime]]:
    """(target, cycle, outcome, event time) of each event."""
    return [(e.target.value, e.cycle, e.outcome.value, e.event_time) for e in events]


def of(events: list[SlaEvent], target: Target) -> list[tuple[str, datetime]]:
    return [(e.outcome.value, e.event_time) for e in events if e.target is target]


# -- first response ------------------------------------------------------------------------------


def test_a_reply_in_time_meets_the_first_response():
    engine = tracker()
    out = run(engine, mail("a"), reply("r", 3))
    assert outcomes(out) == [("first_response", 1, "started", T0), ("resolution", 1, "started", T0),
                             ("first_response", 1, "met", hours(3)), ("resolution", 1, "paused", hours(3))]
    met = out[2]
    assert met.on_time and met.business_seconds == 3 * 3600 and met.message_id == "<a@test>"
    assert met.started_at == T0 and met.due_at == hours(8)
    assert met.event_id == sla_event_id("acme", "c1", FIRST, "<a@test>", 1, Outcome.MET)
    assert list(met.to_record()) == RECORD_FIELDS
    assert met.to_record()["target"] == "first_response" and met.to_record()["outcome"] == "met"
    assert out[3].due_at is None  # paused: no deadline


def test_an_unanswered_mail_warns_and_breaches_at_its_deadlines_and_a_late_reply_is_met_late():
    engine = tracker()
    out = run(engine, mail("a"), until=7.99)
    assert of(out, FIRST) == [("started", T0), ("warned", hours(4))]
    out = run(engine, reply("r", 9))
    assert of(out, FIRST) == [("breached", hours(8)), ("met", hours(9))]
    breached, met = [e for e in out if e.target is FIRST]
    assert breached.business_seconds == 8 * 3600 and not breached.on_time
    assert not met.on_time and met.business_seconds == 9 * 3600


def test_a_reply_at_the_breach_deadline_comes_after_it():
    out = run(tracker(), mail("a"), reply("r", 8))
    assert of(out, FIRST) == [("started", T0), ("warned", hours(4)), ("breached", hours(8)), ("met", hours(8))]
    assert not out[-2].on_time


def test_the_oldest_unanswered_mail_keeps_the_first_response_clock():
    out = run(tracker(), mail("a"), mail("b", 2), reply("r", 5))
    assert [(e.outcome.value, e.message_id) for e in out if e.target is FIRST] == [
        ("started", "<a@test>"), ("warned", "<a@test>"), ("met", "<a@test>")]
    assert of(out, NEXT) == []  # b came before any reply: not a follow-up


def test_outbound_mail_first_starts_nothing_and_the_customer_reply_is_the_first_inbound():
    engine = tracker()
    assert run(engine, reply("hello", 0)) == []
    assert len(engine) == 0
    assert of(run(engine, mail("answer", 1)), FIRST) == [("started", hours(1))]


# -- next response -------------------------------------------------------------------------------


def test_each_follow_up_after_our_reply_starts_a_new_next_response_cycle():
    engine = tracker()
    out = run(engine, mail("a"), reply("r1", 1), mail("f1", 2), mail("f1b", 3), reply("r2", 4), mail("f2", 5),
              until=14)
    nexts = [(e.cycle, e.outcome.value, e.message_id, e.event_time) for e in out if e.target is NEXT]
    assert nexts == [
        (1, "started", "<f1@test>", hours(2)),  # f1b before our reply is no new cycle
        (1, "met", "<f1@test>", hours(4)),
        (2, "started", "<f2@test>", hours(5)),
        (2, "warned", "<f2@test>", hours(9)),
        (2, "breached", "<f2@test>", hours(13)),
    ]
    assert [e.on_time for e in out if e.target is NEXT and e.outcome is Outcome.MET] == [True]


def test_a_reply_older_than_the_follow_up_does_not_answer_it():
    out = run(tracker(), mail("a"), reply("r1", 1), mail("f1", 3), reply("late", 2))
    assert of(out, NEXT) == [("started", hours(3))]


# -- resolution and the pause --------------------------------------------------------------------


def test_waiting_on_the_customer_pauses_the_resolution_and_moves_its_deadlines():
    engine = tracker(policy(resolution=(10, 20), sla={"resolved_marker": "[solved]"}))
    out = run(engine, mail("a"), reply("r1", 2), mail("f1", 12), reply("done", 31, subject="Re: done [SOLVED]"))
    assert of(out, RESOLUTION) == [
        ("started", T0), ("paused", hours(2)), ("resumed", hours(12)),
        ("warned", hours(20)), ("breached", hours(30)),  # 10 and 20 working hours, with the 10-hour pause on top
        ("met", hours(31)),
    ]
    resumed = [e for e in out if e.target is RESOLUTION][2]
    assert resumed.due_at == hours(30) and resumed.business_seconds == 2 * 3600
    met = out[-1]
    assert met.business_seconds == 21 * 3600 and not met.on_time  # due at 30
    paused = [e for e in out if e.outcome is Outcome.PAUSED][0]
    assert paused.event_id == sla_event_id("acme", "c1", RESOLUTION, "<a@test>", 1, Outcome.PAUSED, 1)


def test_pauses_are_numbered_in_their_ids():
    out = run(tracker(policy(sla={"resolve_after_inactivity": None})),
              mail("a"), reply("r1", 1), mail("f1", 2), reply("r2", 3), mail("f2", 4))
    ids = [e.event_id for e in out if e.outcome in (Outcome.PAUSED, Outcome.RESUMED)]
    assert ids == [sla_event_id("acme", "c1", RESOLUTION, "<a@test>", 1, outcome, n)
                   for n in (1, 2) for outcome in (Outcome.PAUSED, Outcome.RESUMED)]
    assert len(set(e.event_id for e in out)) == len(out)


def test_without_a_pause_the_resolution_runs_while_we_wait():
    out = run(tracker(policy(resolution=(2, 4), sla={"pause": "none", "resolve_after_inactivity": None})),
              mail("a"), reply("r", 1), until=5)
    assert of(out, RESOLUTION) == [("started", T0), ("warned", hours(2)), ("breached", hours(4))]


def test_the_record_state_pause_follows_the_regarding_record():
    engine = tracker(policy(resolution=(10, 20), sla={"pause": "record_state", "resolve_after_inactivity": None}))
    out = run(engine, mail("a", regarding="SUPP-1"), reply("r", 1))
    assert of(out, RESOLUTION) == [("started", T0)]  # a reply alone does not pause under record_state
    out += engine.on_record_state("acme", "SUPP-1", " Waiting ", hours(2))
    out += engine.on_record_state("acme", "SUPP-1", "pending", hours(3))  # still waiting: no second pause
    out += engine.on_record_state("acme", "SUPP-1", "In Progress", hours(7))
    out += engine.on_record_state("beta", "SUPP-1", "waiting", hours(8))  # the other tenant's record
    out += engine.advance(hours(20))
    assert of(out, RESOLUTION) == [("started", T0), ("paused", hours(2)), ("resumed", hours(7)),
                                   ("warned", hours(15))]
    assert engine.on_record_state("acme", "SUPP-1", "CLOSED", hours(21)) == []  # dated after the tracker's time
    out = engine.advance(hours(21))
    assert of(out, RESOLUTION) == [("met", hours(21))]
    assert out[0].business_seconds == 16 * 3600 and out[0].on_time  # due at 25


def test_a_record_change_dated_after_the_tracker_time_waits_for_time_to_reach_it():
    """A CRM change dated today read during a replay of older mail: it must not fire the deadlines
    of everything in between, and takes effect when the mail gets there."""
    engine = tracker(policy(resolution=(10, 20), sla={"pause": "record_state", "resolve_after_inactivity": None}))
    out = run(engine, mail("a", regarding="SUPP-1"), mail("b", 1, conversation="c2", regarding="SUPP-2"))
    assert engine.on_record_state("acme", "SUPP-1", "waiting", hours(30)) == []
    assert engine.on_record_state("acme", "SUPP-1", "closed", hours(50)) == []
    out += run(engine, reply("r", 2), reply("r2", 3, conversation="c2"))
    assert [(e.target.value, e.outcome.value) for e in out if e.outcome is not Outcome.STARTED] == [
        ("first_response", "met"), ("first_response", "met")]  # nothing fired early
    out = engine.advance(hours(40))
    assert of(out, RESOLUTION) == [("warned", hours(10)), ("warned", hours(11)), ("breached", hours(20)),
                                   ("breached", hours(21)), ("paused", hours(30))]
    out = engine.advance(hours(60))
    assert [(e.conversation_id, e.outcome.value, e.event_time) for e in out] == [("c1", "met", hours(50))]


def test_a_deadline_goes_before_a_record_change_at_the_same_instant():
    engine = tracker(policy(resolution=(10, 20), sla={"pause": "record_state", "resolve_after_inactivity": None}))
    run(engine, mail("a", regarding="SUPP-1"), reply("r", 1))
    engine.on_record_state("acme", "SUPP-1", "closed", hours(10))
    out = engine.advance(hours(10))
    assert of(out, RESOLUTION) == [("warned", hours(10)), ("met", hours(10))]


def test_a_record_change_read_after_time_passed_it_applies_at_the_tracker_time():
    engine = tracker(policy(resolution=(10, 20), sla={"pause": "record_state", "resolve_after_inactivity": None}))
    run(engine, mail("a", regarding="SUPP-1"), reply("r", 1), mail("f", 6))
    out = engine.on_record_state("acme", "SUPP-1", "waiting", hours(2))  # read late: time never goes back
    assert of(out, RESOLUTION) == [("paused", hours(6))]
    # An older version of the record read later still is stale: the record waits.
    assert engine.on_record_state("acme", "SUPP-1", "open", hours(1)) == []
    assert engine.record_of("acme", "SUPP-1").status == "waiting"
    # The same status again (another field of the record changed) does nothing either.
    assert engine.on_record_state("acme", "SUPP-1", "Waiting", hours(3)) == []
    assert of(engine.on_record_state("acme", "SUPP-1", "open", hours(4)), RESOLUTION) == [("resumed", hours(6))]


def test_a_new_conversation_about_a_record_that_waits_starts_paused():
    engine = tracker(policy(sla={"pause": "record_state"}))
    engine.on_record_state("acme", "SUPP-1", "waiting", hours(1))
    engine.on_record_state("beta", "SUPP-1", "open", hours(1))
    out = run(engine, mail("a", 2, regarding="SUPP-1"), mail("b", 2, tenant="beta", regarding="SUPP-1"))
    assert [(e.tenant, e.outcome.value) for e in out if e.target is RESOLUTION] == [
        ("acme", "started"), ("acme", "paused"), ("beta", "started")]


def test_a_reopened_conversation_starts_paused_while_its_record_waits():
    engine = tracker(policy(sla={"pause": "record_state", "resolved_marker": "[done]"}))
    run(engine, mail("a", regarding="SUPP-1"))
    engine.on_record_state("acme", "SUPP-1", "waiting", hours(1))  # applied when the reply's time passes it
    out = run(engine, reply("r", 2, subject="[done]"), mail("again", 3))
    assert of(out, RESOLUTION) == [("paused", hours(1)), ("met", hours(2)), ("started", hours(3)),
                                   ("paused", hours(3))]
    assert [e.cycle for e in out if e.target is RESOLUTION] == [1, 1, 2, 2]


def test_a_resolved_record_resolves_every_conversation_regarding_it():
    engine = tracker()
    run(engine, mail("a", regarding="SUPP-1"), mail("b", 1, conversation="c2", regarding="SUPP-1"),
        mail("x", 1, conversation="c3", regarding="SUPP-2"))
    assert engine.on_record_state("acme", "SUPP-1", "Resolved", hours(5)) == []
    out = engine.advance(hours(5))
    assert [(e.conversation_id, e.outcome.value, e.event_time) for e in out if e.target is RESOLUTION] == [
        ("c1", "met", hours(5)), ("c2", "met", hours(5))]
    # The first responses are still owed, warned at 4, before the change at 5.
    assert [(e.conversation_id, e.outcome.value) for e in out if e.target is FIRST] == [
        ("c1", "warned"), ("c2", "warned"), ("c3", "warned")]
    out = run(engine, reply("late", 6))
    assert [(e.target.value, e.outcome.value, e.on_time) for e in out] == [("first_response", "met", True)]
    assert [(e.target.value, e.cycle, e.outcome.value) for e in run(engine, mail("thanks", 7))] == [
        ("first_response", 2, "started"), ("resolution", 2, "started")]  # the customer writes again: reopened


def test_the_resolved_marker_in_our_subject_resolves():
    out = run(tracker(), mail("a"), reply("r", 2, subject="Re: Your order [Resolved]"))
    assert of(out, RESOLUTION) == [("started", T0), ("met", hours(2))]
    assert out[-1].on_time and out[-1].business_seconds == 2 * 3600


@pytest.mark.parametrize("subject", ["Re: resolved?", "Re: \udcff\x00 [resolv\u00e9d]", ""])
def test_a_subject_without_the_marker_does_not_resolve(subject):
    out = run(tracker(), mail("a"), reply("r", 2, subject=subject))
    assert of(out, RESOLUTION) == [("started", T0), ("paused", hours(2))]


def test_the_customer_writing_the_marker_resolves_nothing():
    out = run(tracker(), mail("a", subject="[resolved] still broken"))
    assert of(out, RESOLUTION) == [("started", T0)]


def test_silence_after_our_reply_resolves_at_that_reply_when_the_wait_is_over():
    engine = tracker(policy(sla={"resolve_after_inactivity": 48}))
    out = run(engine, mail("a"), reply("r1", 1), mail("f", 3), reply("r2", 5), until=hours(5 + 47.99))
    assert of(out, RESOLUTION) == [("started", T0), ("paused", hours(1)), ("resumed", hours(3)),
                                   ("paused", hours(5))]
    out = engine.advance(hours(5 + 48))
    assert of(out, RESOLUTION) == [("met", hours(5))]  # resolved at the last reply, known 48 hours later
    assert out[0].business_seconds == 3 * 3600 and out[0].on_time
    assert engine.state_of("acme", "c1").resolved_ms is not None


def test_without_a_pause_a_deadline_during_the_silence_is_held_until_the_silence_ends():
    quiet = policy(resolution=(2, 4), sla={"pause": "none", "resolve_after_inactivity": 24})
    # The silence lasts: the resolution was met at the reply, before its deadlines.
    lasting = tracker(quiet)
    out = run(lasting, mail("a"), reply("r", 1), until=23)
    assert of(out, RESOLUTION) == [("started", T0)]
    out = lasting.advance(hours(25))
    assert of(out, RESOLUTION) == [("met", hours(1))] and out[0].on_time
    # The customer writes: the held deadlines happened after all, at their own times, before the mail.
    broken = tracker(quiet)
    out = run(broken, mail("a"), reply("r", 1), until=10)
    out += run(broken, mail("f", 12))
    assert of(out, RESOLUTION) == [("started", T0), ("warned", hours(2)), ("breached", hours(4))]
    assert of(out, NEXT) == [("started", hours(12))]


def test_record_changes_during_the_silence_are_played_out_in_time_order():
    held = policy(resolution=(2, 6), sla={"pause": "record_state", "resolve_after_inactivity": 24})
    engine = tracker(held)
    out = run(engine, mail("a", regarding="SUPP-1"), reply("r", 1))
    out += engine.on_record_state("acme", "SUPP-1", "waiting", hours(3))
    out += engine.on_record_state("acme", "SUPP-1", "open", hours(5))
    out += engine.advance(hours(12))
    assert of(out, RESOLUTION) == [("started", T0)]  # held: the silence may still resolve at 1
    out = run(engine, mail("f", 13))
    # warn at 2; paused 3-5 moves the breach from 6 to 8
    assert of(out, RESOLUTION) == [("warned", hours(2)), ("paused", hours(3)), ("resumed", hours(5)),
                                   ("breached", hours(8))]


def test_a_customer_mail_after_the_resolution_reopens_every_target():
    engine = tracker()
    out = run(engine, mail("a"), reply("r", 1, subject="[resolved]"), mail("again", 2), reply("r2", 3), mail("f", 4))
    assert [(t, c, o) for t, c, o, _ in outcomes(out)] == [
        ("first_response", 1, "started"), ("resolution", 1, "started"),
        ("first_response", 1, "met"), ("resolution", 1, "met"),
        ("first_response", 2, "started"), ("resolution", 2, "started"),
        ("first_response", 2, "met"), ("resolution", 2, "paused"),
        ("resolution", 2, "resumed"), ("next_response", 1, "started"),
    ]
    assert [e.message_id for e in out if e.cycle == 2 and e.outcome is Outcome.STARTED] == ["<again@test>"] * 2


def test_mail_dated_before_the_resolution_does_not_reopen():
    out = run(tracker(), mail("a"), reply("r", 2, subject="[resolved]"), mail("crossed", 1))
    assert [e.outcome.value for e in out][-1] == "met"
    assert len(out) == 4


# -- business time -------------------------------------------------------------------------------


BERLIN = BusinessHours(start="08:00", end="17:00", timezone="Europe/Berlin")


def test_first_response_deadlines_run_on_business_hours_and_skip_holidays():
    engine = tracker(policy(first=(2, 4), business_hours=BERLIN, holidays=["2026-03-09"]))
    friday = datetime(2026, 3, 6, 15, 30, tzinfo=UTC)  # 16:30 in Berlin
    out = run(engine, mail("a", friday), until=datetime(2026, 3, 11, tzinfo=UTC))
    # 30 minutes on Friday, Monday the 9th is a holiday: Tuesday 08:00 Berlin = 07:00 UTC.
    assert of(out, FIRST) == [("started", friday), ("warned", datetime(2026, 3, 10, 8, 30, tzinfo=UTC)),
                              ("breached", datetime(2026, 3, 10, 10, 30, tzinfo=UTC))]
    assert out[-1].business_seconds == 4 * 3600


def test_a_pause_over_the_weekend_moves_the_deadline_by_working_time_only():
    engine = tracker(policy(resolution=(4, 8), business_hours=BERLIN, sla={"resolve_after_inactivity": None}))
    friday = datetime(2026, 3, 6, 14, 0, tzinfo=UTC)  # 15:00 Berlin
    monday = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)  # 10:00 Berlin
    out = run(engine, mail("a", friday), reply("r", friday + timedelta(hours=1)), mail("f", monday),
              until=datetime(2026, 3, 10, tzinfo=UTC))
    # 1 working hour before the pause; paused 16:00-17:00 on Friday and 08:00-10:00 on Monday (3 working
    # hours, not the weekend): warned after 4 + 3 working hours, breached after 8 + 3.
    assert of(out, RESOLUTION)[-2:] == [("warned", datetime(2026, 3, 9, 12, 0, tzinfo=UTC)),
                                        ("breached", datetime(2026, 3, 9, 16, 0, tzinfo=UTC))]
    resumed = [e for e in out if e.outcome is Outcome.RESUMED][0]
    assert resumed.business_seconds == 3600 and resumed.due_at == datetime(2026, 3, 9, 16, 0, tzinfo=UTC)


# -- automatic mail ------------------------------------------------------------------------------


def test_inbound_automatic_mail_starts_nothing():
    engine = tracker()
    out = run(engine, mail("ooo", 0, automatic="auto_reply"), mail("bounce", 1, automatic="bounce"),
              mail("cron", 2, automatic="auto_generated"), until=100)
    assert out == [] and len(engine) == 0


def test_an_auto_acknowledgement_does_not_stop_the_first_response_clock():
    engine = tracker()
    out = run(engine, mail("a"), reply("ack", 0.01, automatic="auto_reply", subject="We got it [resolved]"),
              reply("notice", 1, automatic="notifier"), until=9)
    assert of(out, FIRST) == [("started", T0), ("warned", hours(4)), ("breached", hours(8))]
    assert of(out, RESOLUTION) == [("started", T0)]


def test_an_out_of_office_while_we_wait_is_no_follow_up():
    out = run(tracker(), mail("a"), reply("r", 1), mail("ooo", 2, automatic="auto_reply"), until=200)
    assert of(out, NEXT) == []
    assert of(out, RESOLUTION) == [("started", T0), ("paused", hours(1)), ("met", hours(1))]


def test_mailing_list_mail_counts_as_a_person_and_a_policy_chooses_what_it_ignores():
    assert of(run(tracker(), mail("post", automatic="list")), FIRST) == [("started", T0)]
    strict = tracker(policy(ignore_automatic=("list",)))
    assert run(strict, mail("post", automatic="list")) == []
    lenient = tracker(policy(ignore_automatic=()))
    assert of(run(lenient, mail("ooo", automatic="auto_reply")), FIRST) == [("started", T0)]


def test_the_conversation_policy_decides_what_is_ignored():
    vip = policy(name="vip", match={"mailbox": "vip@ours.example"}, ignore_automatic=())
    engine = tracker(policy(), vip)
    run(engine, mail("a", mailbox="vip@ours.example"))
    # The auto-acknowledgement has no mailbox (the default policy would ignore it): vip counts it.
    out = run(engine, reply("ack", 1, automatic="auto_reply", mailbox=None))
    assert of(out, FIRST) == [("met", hours(1))] and out[0].policy == "vip"


# -- tenants, policies, settings, memory ---------------------------------------------------------


def test_two_tenants_with_the_same_conversation_have_their_own_targets():
    engine = tracker(policy(), policy(name="beta-desk", match={"tenant": "beta"}, team="Desk B", first=(1, 2)))
    out = run(engine, mail("a", tenant="acme"), mail("a", 0.5, tenant="beta"), reply("r", 3, tenant="acme"),
              until=10)
    acme = [(e.target.value, e.outcome.value) for e in out if e.tenant == "acme"]
    beta = [(e.target.value, e.outcome.value, e.event_time, e.policy, e.team) for e in out
            if e.tenant == "beta" and e.target is FIRST]
    assert ("first_response", "met") in acme and ("first_response", "breached") not in acme
    assert beta == [("first_response", "started", hours(0.5), "beta-desk", "Desk B"),
                    ("first_response", "warned", hours(1.5), "beta-desk", "Desk B"),
                    ("first_response", "breached", hours(2.5), "beta-desk", "Desk B")]
    assert {e.event_id for e in out if e.tenant == "acme"}.isdisjoint(e.event_id for e in out if e.tenant == "beta")
    # A record change of one tenant does not touch the other's record of the same id.
    run(engine, mail("x", 11, tenant="acme", conversation="c9", regarding="SUPP-1"))
    assert engine.on_record_state("beta", "SUPP-1", "closed", hours(12)) == []
    assert engine.state_of("acme", "c9").resolved_ms is None


def test_a_target_switched_off_has_no_events():
    out = run(tracker(policy(first=None, next_=None)), mail("a"), reply("r", 1), mail("f", 2), reply("r2", 3))
    assert {e.target for e in out} == {RESOLUTION}


def test_records_match_the_avro_schema():
    schema = parse_schema(json.loads((SCHEMAS / "sla.events.avsc").read_text()))
    engine = tracker(policy(team="Support", sla={"resolve_after_inactivity": None}))
    out = run(engine, mail("a", owner=None, mailbox=None), reply("r", 1), mail("f", 2), until=20)
    out += run(engine, reply("r2", 21, subject="[resolved]"))
    assert {e.outcome for e in out} == set(Outcome) and {e.target for e in out} == set(Target)
    for event in out:
        assert validate(event.to_record(), schema, raise_errors=True)


def test_records_carry_the_conversation_attributes():
    engine = tracker(policy(team="Support"))
    started = run(engine, mail("a", regarding="SUPP-9", owner="piet@ours.example"))[0]
    assert (started.policy, started.team, started.owner, started.mailbox, started.regarding) == (
        "default", "Support", "piet@ours.example", "support@ours.example", "SUPP-9")
    assert started.business_seconds == 0 and not started.on_time and started.due_at == hours(8)


def test_disabled_tracks_nothing():
    engine = tracker(enabled=False)
    assert run(engine, mail("a"), until=100) == [] and engine.on_record_state("acme", "R", "closed", T0) == []


def test_a_running_clock_keeps_its_hours_when_the_settings_change():
    before = tracker(policy(), policy(name="vip", match={"mailbox": "vip@x"}, first=(1, 2)))
    run(before, mail("a", mailbox="vip@x"))
    after = SlaTracker.from_dict(EscalationSettings(), never, before.to_dict())
    assert of(after.advance(hours(3)), FIRST) == [("warned", hours(1)), ("breached", hours(2))]


def test_a_resolved_conversation_is_forgotten_after_the_retention():
    engine = tracker(resolved_retention_days=1)
    run(engine, mail("a"), reply("r", 1, subject="Re: [resolved]"))
    assert engine.advance(hours(24.9)) == [] and len(engine) == 1
    engine.advance(hours(25))
    assert len(engine) == 0 and engine.state_of("acme", "c1") is None
    first_ids = {event.event_id for event in run(tracker(), mail("a"), reply("r", 1, subject="Re: [resolved]"))}
    later = run(engine, mail("later", 30))
    assert of(later, FIRST) == [("started", hours(30))]
    assert engine.state_of("acme", "c1").first_response_cycle == 1  # a forgotten conversation starts over
    # ... under ids of its own: its records do not replace those of the forgotten first cycle.
    assert first_ids.isdisjoint(event.event_id for event in later)


def test_state_round_trips_as_json():
    engine = tracker()
    run(engine, mail("a", regarding="SUPP-1"), reply("r", 1), mail("f", 2))
    data = json.loads(json.dumps(engine.to_dict()))
    restored = SlaTracker.from_dict(engine.settings, never, data)
    assert restored.to_dict() == engine.to_dict()
    assert restored.on_record_state("acme", "SUPP-1", "closed", hours(3)) == engine.on_record_state(
        "acme", "SUPP-1", "closed", hours(3))
    with pytest.raises(ValueError, match="format"):
        SlaTracker.from_dict(engine.settings, never, {"format": 99})


def test_the_tracker_says_which_states_to_write():
    engine = tracker(resolved_retention_days=1)
    run(engine, mail("a"), reply("r", 1), mail("b", 1, tenant="beta"))
    assert engine.pop_changed() == [("acme", "c1"), ("beta", "c1")]
    assert engine.pop_changed() == []
    assert run(engine, reply("again", 2)) == []  # no event, but the silence now counts from 2
    assert engine.pop_changed() == [("acme", "c1")]
    run(engine, mail("ooo", 3, automatic="auto_reply"))
    assert engine.pop_changed() == []
    engine.advance(hours(200))
    assert engine.pop_changed() == [("acme", "c1"), ("beta", "c1")] and len(engine) == 0  # forgotten: delete


def test_live_ticks_read_the_injected_clock():
    now = [T0]
    engine = SlaTracker(EscalationSettings(), clock=lambda: now[0])
    engine.on_mail(mail("a"))
    now[0] = hours(4)
    assert of(engine.advance(), FIRST) == [("warned", hours(4))]


# -- properties over random conversations --------------------------------------------------------

FAST = settings(max_examples=150, deadline=None)
PROPERTY_POLICIES = (
    policy(name="berlin", match={"mailbox": "berlin@ours.example"}, first=(1, 3), next_=(2, 4), resolution=(6, 12),
           business_hours=BERLIN, holidays=["2026-03-03"], team="Berlin",
           sla={"resolve_after_inactivity": 30}),
    policy(name="cases", match={"regarding_prefix": "SUPP-"}, first=(0.5, 1), next_=None, resolution=(3, 9),
           sla={"pause": "record_state", "resolve_after_inactivity": 20}),
    policy(name="quiet", match={"tenant": "beta"}, first=(2, 5), resolution=(4, 10),
           sla={"pause": "none", "resolve_after_inactivity": 12, "resolved_marker": None}),
)
PROPERTY_SETTINGS = EscalationSettings(policies=PROPERTY_POLICIES, default_policy=policy(), resolved_retention_days=2)
TENANTS, CONVERSATIONS = ("acme", "beta"), ("c1", "c2")
HORIZON = timedelta(days=8)
LAST_MINUTE = 6 * 24 * 60  # of a mail or record change; the horizon leaves time for their deadlines


def person(tenant: str, conversation: str, direction: str, minute: int, variant: int) -> MailEvent:
    return MailEvent(tenant=tenant, message_id=f"<{tenant}.{conversation}.{direction}.{minute}@test>",
                     conversation_id=conversation, direction=direction, event_time=T0 + timedelta(minutes=minute),
                     mailbox=("support@ours.example", "berlin@ours.example")[variant % 2],
                     regarding=(None, "SUPP-1", "SUPP-2")[variant % 3], owner="olga@ours.example",
                     subject="Re: help [resolved]" if variant == 29 else "Re: help")


def record_change(tenant: str, record: str, status: str, minute: int) -> tuple[str, str, str, datetime]:
    return tenant, record, status, T0 + timedelta(minutes=minute)


# Three conversations, two of them the same conversation id in two tenants.
MAILS = st.builds(lambda conversation, direction, variant: person(*conversation, direction, 0, variant),
                  st.sampled_from([("acme", "c1"), ("beta", "c1"), ("acme", "c2")]), st.sampled_from(["in", "out"]),
                  st.integers(0, 29))
CHANGES = st.builds(record_change, st.sampled_from(TENANTS), st.sampled_from(["SUPP-1", "SUPP-2"]),
                    st.sampled_from(["waiting", "open", "Closed", "pending"]), st.just(0))
# Steps in quarter hours, mostly short (an exchange), some long (a silence of up to 2.5 days): a
# conversation in event-time order, as a replay delivers it.
GAPS = st.one_of(*[st.integers(0, 6)] * 6, st.integers(0, 240))
STEPS = st.lists(st.tuples(GAPS, st.one_of(MAILS, MAILS, MAILS, CHANGES)), min_size=8, max_size=40)


def timeline(steps: list) -> list:
    """Mails and record changes at increasing times."""
    items, minute = [], 0
    for delta, item in steps:
        minute = min(minute + 15 * delta, LAST_MINUTE)
        when = T0 + timedelta(minutes=minute)
        if isinstance(item, MailEvent):
            items.append(replace(item, event_time=when,
                                 message_id=item.message_id.replace(".0@", f".{minute}@")))
        else:
            items.append(item[:3] + (when,))
    return items


TIMELINES = STEPS.map(timeline)


def feed(engine: SlaTracker, items: list, end: datetime | None = T0 + HORIZON) -> list[SlaEvent]:
    out: list[SlaEvent] = []
    for item in items:
        if isinstance(item, MailEvent):
            out += engine.on_mail(item)
        elif isinstance(item, datetime):
            out += engine.advance(item)
        else:
            out += engine.on_record_state(*item)
    return out + (engine.advance(end) if end is not None else [])


def fresh() -> SlaTracker:
    return SlaTracker(PROPERTY_SETTINGS, never)


def time_of(item) -> datetime:
    return item.event_time if isinstance(item, MailEvent) else item if isinstance(item, datetime) else item[3]


@FAST
@given(items=TIMELINES)
def test_replaying_the_same_input_gives_the_same_records_and_ids(items):
    first, second = fresh(), fresh()
    assert feed(first, items) == feed(second, items)
    assert first.to_dict() == second.to_dict()


@FAST
@given(items=TIMELINES, data=st.data())
def test_ticks_at_any_time_change_nothing(items, data):
    expected = feed(fresh(), items)
    ticked: list = []
    previous = T0
    for item in items + [None]:
        until = T0 + HORIZON if item is None else time_of(item)
        span = int((until - previous).total_seconds())
        ticked += [previous + timedelta(seconds=s) for s in sorted(data.draw(st.lists(st.integers(0, span),
                                                                                     max_size=3)))]
        if item is not None:
            ticked.append(item)
            previous = until
    assert feed(fresh(), ticked) == expected


@FAST
@given(items=TIMELINES, cut=st.integers(0, 40))
def test_a_restored_tracker_continues_like_the_one_that_never_stopped(items, cut):
    expected = feed(fresh(), items)
    part = fresh()
    out = feed(part, items[:cut], end=None)
    restored = SlaTracker.from_dict(PROPERTY_SETTINGS, never, json.loads(json.dumps(part.to_dict())))
    assert out + feed(restored, items[cut:]) == expected


def read_early(items: list, leads: list[int]) -> list:
    """The same input with each record change read up to ``leads[i]`` mails earlier (the i-th change),
    past mails dated before it only: a CRM change arrives on its own topic, ahead of the mail."""
    arrived: list = []
    changes = iter(leads)
    for item in items:
        position = len(arrived)
        if not isinstance(item, MailEvent):
            lead = next(changes, 0)
            while (lead and position and isinstance(arrived[position - 1], MailEvent)
                   and arrived[position - 1].event_time < item[3]):
                position, lead = position - 1, lead - 1
        arrived.insert(position, item)
    return arrived


@FAST
@given(items=TIMELINES, leads=st.lists(st.integers(0, 12), max_size=40), cut=st.integers(0, 40))
def test_record_changes_read_earlier_give_the_same_records_and_ids(items, leads, cut):
    expected = feed(fresh(), items)
    arrived = read_early(items, leads)
    assert feed(fresh(), arrived) == expected
    # ... also restored mid-way, where changes read early are still pending.
    part = fresh()
    out = feed(part, arrived[:cut], end=None)
    restored = SlaTracker.from_dict(PROPERTY_SETTINGS, never, json.loads(json.dumps(part.to_dict())))
    assert out + feed(restored, arrived[cut:]) == expected


def test_a_pending_record_change_survives_a_restore():
    engine = tracker(policy(sla={"pause": "record_state"}))
    run(engine, mail("a", regarding="SUPP-1"))
    engine.on_record_state("acme", "SUPP-1", "waiting", hours(2))
    assert engine.record_of("acme", "SUPP-1").pending == [(to_ms(hours(2)), 1, "waiting")]
    assert engine.pop_changed_records() == [("acme", "SUPP-1")] and engine.pop_changed_records() == []
    restored = SlaTracker.from_dict(engine.settings, never, json.loads(json.dumps(engine.to_dict())))
    assert restored.watermark == T0
    assert of(restored.advance(hours(3)), RESOLUTION) == of(engine.advance(hours(3)), RESOLUTION) == [
        ("paused", hours(2))]


AUTOMATIC = st.tuples(st.sampled_from(TENANTS), st.sampled_from(CONVERSATIONS), st.sampled_from(["in", "out"]),
                      st.sampled_from(["bounce", "auto_reply", "notifier", "auto_generated"]), st.integers(0, 29))


@FAST
@given(items=TIMELINES, floods=st.lists(st.tuples(st.integers(0, 30), st.lists(AUTOMATIC, min_size=1, max_size=8)),
                                        max_size=4))
def test_ignored_automatic_mail_anywhere_leaves_the_records_identical(items, floods):
    expected = feed(fresh(), items)
    flooded = list(items)
    for position, burst in sorted(floods, reverse=True):
        position = min(position, len(flooded))
        when = time_of(flooded[position - 1]) if position else T0
        for number, (tenant, conversation, direction, kind, variant) in enumerate(burst):
            automatic = replace(person(tenant, conversation, direction, 0, variant), automatic=kind, event_time=when,
                                message_id=f"<auto.{position}.{number}@test>",
                                subject="Automatic reply: out of office [resolved]")
            flooded.insert(position, automatic)
    assert feed(fresh(), flooded) == expected


@FAST
@given(items=TIMELINES)
def test_every_instance_is_met_breached_or_open_and_moves_forward(items):
    out = feed(SlaTracker(PROPERTY_SETTINGS.model_copy(update={"resolved_retention_days": 90}), never), items,
               end=T0 + HORIZON + timedelta(days=30))
    assert len({e.event_id for e in out}) == len(out)
    instances: dict[tuple, list[SlaEvent]] = {}
    for event in out:
        instances.setdefault((event.tenant, event.conversation_id, event.target, event.cycle), []).append(event)
    for events in instances.values():
        kinds = [e.outcome for e in events]
        assert kinds[0] is Outcome.STARTED and kinds.count(Outcome.STARTED) == 1
        times = [e.event_time for e in events]
        assert times == sorted(times)
        assert kinds.count(Outcome.MET) <= 1 and kinds.count(Outcome.BREACHED) <= 1
        assert Outcome.MET not in kinds or kinds[-1] is Outcome.MET  # nothing after met
        met_on_time = any(e.outcome is Outcome.MET and e.on_time for e in events)
        assert not (met_on_time and Outcome.BREACHED in kinds)
        assert all(b.business_seconds >= a.business_seconds - 1e-6 for a, b in zip(events, events[1:]))
        if events[0].target is not Target.RESOLUTION:
            assert Outcome.PAUSED not in kinds
        # Pauses and resumptions alternate, starting with a pause.
        pauses = [k for k in kinds if k in (Outcome.PAUSED, Outcome.RESUMED)]
        assert pauses == [Outcome.PAUSED, Outcome.RESUMED] * (len(pauses) // 2) + [Outcome.PAUSED] * (len(pauses) % 2)
    # Response clocks nobody answered end breached: the horizon is long past every deadline.
    for (tenant, conversation, target, cycle), events in instances.items():
        if target is not Target.RESOLUTION:
            assert events[-1].outcome in (Outcome.MET, Outcome.BREACHED)


def test_a_response_owed_across_a_reopen_keeps_the_calendar_and_policy_it_started_under():
    """Found by the property below: the reopening mail chooses another policy for the conversation,
    and the first response still owed from before was measured on the new policy's calendar, so its
    working time went down from breached to met."""
    engine = tracker(policy(), policy(name="berlin", match={"mailbox": "berlin@ours.example"}, business_hours=BERLIN),
                     policy(name="cases", match={"regarding_prefix": "SUPP-"}))
    out = run(engine, mail("a", regarding="SUPP-2"))
    out += engine.on_record_state("acme", "SUPP-2", "closed", T0)  # resolved, our answer still owed
    out += run(engine, mail("b", 8, mailbox="berlin@ours.example", regarding=None), reply("r", 8))
    first = [e for e in out if e.target is FIRST]
    assert [(e.outcome.value, e.policy, e.business_seconds) for e in first] == [
        ("started", "cases", 0.0), ("warned", "cases", 4 * 3600.0), ("breached", "cases", 8 * 3600.0),
        ("met", "cases", 8 * 3600.0)]
    assert [e.policy for e in out if e.target is RESOLUTION and e.cycle == 2] == ["berlin"] * 2
