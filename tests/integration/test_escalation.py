"""The escalation agent on the real broker: its escalations equal the pure engine + tracker run in
this process, and a replay (a second generation) yields the same escalations."""

from __future__ import annotations

import pytest

from pipeline.correlation.engine import Correlator
from pipeline.escalation.model import MailEvent
from pipeline.escalation.policy import default_owner
from pipeline.escalation.tracker import EscalationTracker
from pipeline.mail.parse import parse_mail
from pipeline.mail.parse import mail_direction
from pipeline.streams.ingest import ingest
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import wait_for_outputs
from pipeline.synth import MailGenerator, render_rfc5322

pytestmark = pytest.mark.integration

AGENT_DOMAIN = "support.threadline.test"
SETTINGS = f"""
[untracked]
own_domains = ["{AGENT_DOMAIN}"]

[escalation]
# Ticks would move clocks on wall-clock time; this test compares event-time decisions only.
tick_interval_s = 3600
"""


def expected_escalations(settings, messages) -> dict[str, tuple]:
    correlator = Correlator(settings.correlation, tenant="default", untracked=settings.untracked)
    tracker = EscalationTracker(settings.escalation, clock=lambda: None)
    own = frozenset(settings.untracked.own_domains)
    expected = {}
    for source, raw in messages:
        mail = parse_mail(raw, direction=mail_direction(raw, "auto", own), mailbox=source.partition("#")[0])
        correlation = correlator.correlate(mail)
        if correlation.untracked_reason:
            continue
        owner = default_owner(mail.direction, mail.to + mail.cc, own)
        for transition in tracker.on_correlation(MailEvent.from_correlation(correlation, mailbox=mail.mailbox,
                                                                            owner=owner)):
            expected[transition.event_id] = (transition.state.value, transition.message_id, transition.event_time)
    return expected


def test_escalations_equal_the_pure_tracker_and_a_replay_repeats_them(sandbox):
    settings_file = sandbox.settings_file(extra=SETTINGS)
    settings = sandbox.settings(settings_file)
    # One mail every 10 minutes: replies come hours later, past the 4 h warning and 24 h escalation.
    generator = MailGenerator(21, customers=100, agents=4, seconds_between_mails=600)
    messages = [(f"desk#{n}", render_rfc5322(mail)) for n, mail in enumerate(generator.mails(800))]
    report = ingest(messages, settings, sandbox.codec, sandbox.bootstrap, direction="auto")
    expected = expected_escalations(settings, messages)
    states = {state for state, _, _ in expected.values()}
    assert {"OPEN", "WARNED", "ESCALATED", "RESOLVED"} <= states

    def escalations() -> dict[str, list[tuple]]:
        seen: dict[str, list[tuple]] = {}
        for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, "escalations", sandbox.codec):
            seen.setdefault(value["event_id"], []).append((value["state"], value["message_id"], value["event_time"]))
        return seen

    def wait_for_escalations(copies: int, workers) -> dict[str, list[tuple]]:
        wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, len(workers) - 1, report.delivered,
                         workers=workers, timeout_s=240)
        import time

        deadline = time.monotonic() + 120
        while True:
            seen = escalations()
            if sum(len(v) for v in seen.values()) >= copies * len(expected) or time.monotonic() > deadline:
                return seen
            time.sleep(1)

    first = sandbox.start_worker(generation=0, name="g0", settings_file=settings_file)
    seen = wait_for_escalations(1, [first])
    assert {event_id: records[0] for event_id, records in seen.items()} == expected

    replay = sandbox.start_worker(generation=1, name="g1", settings_file=settings_file)
    seen = wait_for_escalations(2, [first, replay])
    assert set(seen) == set(expected)
    assert all(records == [expected[event_id]] * len(records) and len(records) >= 2
               for event_id, records in seen.items())
    alerts = list(read_topic(settings.kafka, sandbox.bootstrap, "alerts", sandbox.codec))
    told = {(value["event_type"], value["user"]) for _, _, _, value in alerts}
    assert {kind for kind, _ in told} == {"escalation_warned", "escalation_escalated"}
    assert all(user.endswith("@" + AGENT_DOMAIN) for _, user in told)  # the agent the mail was sent to
