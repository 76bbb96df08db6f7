"""The issue's target for escalation and SLA records, on mail that travels the real path: generated
people's traffic with out-of-office replies, desk acknowledgements and bounces mixed in (each built
as bytes and parsed), correlated, then fed to both trackers. The records equal those of the same
traffic with the automatic mail removed by hand, in two tenants; hostile bytes change nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.correlation.engine import Correlator
from pipeline.escalation import EscalationTracker, MailEvent, SlaTracker
from pipeline.mail.hostile import hostile_mails
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError, MailRecord
from pipeline.settings import CorrelationSettings, EscalationPolicy, EscalationSettings
from pipeline.synth import AutomaticMail, AutomaticMix, MailGenerator, with_automatic_mail

TENANTS = ("acme", "globex")
SETTINGS = EscalationSettings()
COUNTING_EVERYTHING = EscalationSettings(default_policy=EscalationPolicy(ignore_automatic=()))


def never() -> datetime:
    raise AssertionError("the test passes the time")


def records(stream: list, tenant: str, settings: EscalationSettings = SETTINGS) -> tuple[list[dict], list[dict], int]:
    """(escalation records, SLA records, automatic mails seen) of one tenant's stream."""
    correlator = Correlator(CorrelationSettings(), tenant=tenant, clock=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
    escalation, sla = EscalationTracker(settings, never), SlaTracker(settings, never)
    transitions, events, automatic = [], [], 0
    last = None
    for item in stream:
        mail: MailRecord = item.record if isinstance(item, AutomaticMail) else item
        event = MailEvent.from_correlation(correlator.correlate(mail), mailbox=mail.mailbox or None)
        automatic += bool(event.automatic)
        transitions += escalation.on_correlation(event)
        events += sla.on_mail(event)
        last = event.event_time
    assert last is not None
    end = last + timedelta(days=30)
    transitions += escalation.advance(end)
    events += sla.advance(end)
    return [t.to_record() for t in transitions], [e.to_record() for e in events], automatic


@pytest.mark.parametrize("tenant", TENANTS)
def test_automatic_mail_changes_no_escalation_and_no_sla_record(tenant):
    people = list(MailGenerator(5, tenant=tenant, customers=60, agents=4, seconds_between_mails=900).mails(500))
    mixed = list(with_automatic_mail(people, seed=len(tenant), mix=AutomaticMix(0.5, 0.9, 0.2)))
    escalations, sla, none = records(people, tenant)
    assert none == 0
    assert len(sla) > 500 and {r["outcome"] for r in sla} >= {"started", "met", "warned", "breached", "paused"}
    assert {r["target"] for r in sla if r["outcome"] == "met"} == {"first_response", "next_response", "resolution"}
    mixed_escalations, mixed_sla, automatic = records(mixed, tenant)
    assert automatic > 150  # out-of-office replies, acknowledgements and bounces, recognised as such
    assert mixed_sla == sla
    assert mixed_escalations == escalations
    # ... which they would not be if the automatic mail counted as people's.
    counted_escalations, counted_sla, _ = records(mixed, tenant, COUNTING_EVERYTHING)
    assert counted_sla != sla and counted_escalations != escalations


def test_hostile_mail_in_a_conversation_leaves_it_alone():
    """Hostile bytes that parse become mail of their own conversations; none touches another's."""
    for tenant in TENANTS:
        people = list(MailGenerator(9, tenant=tenant, customers=20, agents=2, seconds_between_mails=600).mails(80))
        hostile = []
        for name, raw in hostile_mails(60, seed=len(tenant)):
            try:
                mail = parse_mail(raw, tenant=tenant, direction="in")
            except MailParseError:
                continue
            hostile.append((name, mail))
        assert hostile
        base = people[40].event_time
        # The hostile mails are dated into the traffic's middle: their event times may be anything.
        dated = [replace(mail, date=base + timedelta(seconds=n), received_at=None)
                 for n, (_, mail) in enumerate(hostile)]
        mixed = people[:41] + dated + people[41:]
        _, sla, _ = records(people, tenant)
        _, mixed_sla, _ = records(mixed, tenant)
        conversations = {r["conversation_id"] for r in sla}
        assert [r for r in mixed_sla if r["conversation_id"] in conversations] == sla
        assert len(mixed_sla) > len(sla)  # the hostile inbound mail is measured in its own conversations
