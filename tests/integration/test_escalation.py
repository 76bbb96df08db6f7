"""The escalation agent on the real broker: its escalations and SLA events equal the pure trackers
run in this process, automatic mail mixed into a tenant's conversations changes none of its SLA
events in ClickHouse, and a replay (a second generation) yields the same records."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipeline.contracts.topics import SINK_TOPICS
from pipeline.correlation.engine import Correlator
from pipeline.escalation.model import MailEvent
from pipeline.escalation.policy import default_owner
from pipeline.escalation.sla import SlaTracker
from pipeline.escalation.tracker import EscalationTracker
from pipeline.mail.parse import parse_mail
from pipeline.mail.parse import mail_direction
from pipeline.sinks.clickhouse import ClickHouseSink, sink_until
from pipeline.streams.ingest import ingest
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import count_records, wait_for_outputs
from pipeline.synth import AutomaticMail, MailGenerator, render_rfc5322, with_automatic_mail

pytestmark = pytest.mark.integration

AGENT_DOMAIN = "support.threadline.test"
SETTINGS = f"""
[untracked]
own_domains = ["{AGENT_DOMAIN}"]

[escalation]
# Ticks would move clocks on wall-clock time; this test compares event-time decisions only.
tick_interval_s = 3600
"""
PEOPLE, MIXED = "default", "mixed"  # the same conversations, without and with automatic mail
# An SLA event as ClickHouse keeps it, but for what names its tenant (its id, the conversation id).
SLA_COLUMNS = ("message_id", "target", "outcome", "cycle", "policy", "owner", "started_at", "due_at", "event_time",
               "business_seconds", "on_time")


def expected_records(settings, tenant: str, messages) -> tuple[dict[str, tuple], dict[str, dict]]:
    """What the pure trackers make of ``messages``: escalations (event id -> state, mail, time) and
    SLA events (event id -> record)."""
    correlator = Correlator(settings.correlation, tenant=tenant, untracked=settings.untracked)
    tracker = EscalationTracker(settings.escalation, clock=lambda: None)
    sla = SlaTracker(settings.escalation, clock=lambda: None)
    own = frozenset(settings.untracked.own_domains)
    escalations, sla_events = {}, {}
    for source, raw in messages:
        mail = parse_mail(raw, direction=mail_direction(raw, "auto", own), tenant=tenant,
                          mailbox=source.partition("#")[0])
        correlation = correlator.correlate(mail)
        if correlation.untracked_reason:
            continue
        owner = default_owner(mail.direction, mail.to + mail.cc, own)
        event = MailEvent.from_correlation(correlation, mailbox=mail.mailbox, owner=owner)
        for transition in tracker.on_correlation(event):
            escalations[transition.event_id] = (transition.state.value, transition.message_id, transition.event_time)
        for outcome in sla.on_mail(event):
            sla_events[outcome.event_id] = outcome.to_record()
    return escalations, sla_events


def test_escalations_and_sla_events_equal_the_pure_trackers_ignore_automatic_mail_and_a_replay_repeats_them(
        sandbox, clickhouse_factory):
    settings_file = sandbox.settings_file(extra=SETTINGS)
    settings = sandbox.settings(settings_file)
    # One mail every 10 minutes: replies come hours later, past the 4 h warning and 24 h escalation.
    generator = MailGenerator(21, customers=100, agents=4, seconds_between_mails=600)
    people = list(generator.mails(800))
    streams = {PEOPLE: [(f"desk#{n}", render_rfc5322(mail)) for n, mail in enumerate(people)],
               # Out-of-office answers to our replies, our desk's acknowledgements, bounces of our mail.
               MIXED: [(f"desk#{n}", item.raw if isinstance(item, AutomaticMail) else render_rfc5322(item))
                       for n, item in enumerate(with_automatic_mail(people))]}
    assert len(streams[MIXED]) > len(streams[PEOPLE]) + 200
    delivered = sum(ingest(messages, settings, sandbox.codec, sandbox.bootstrap, tenant=tenant,
                           direction="auto").delivered for tenant, messages in streams.items())
    expected = {tenant: expected_records(settings, tenant, messages) for tenant, messages in streams.items()}
    escalations_expected = {**expected[PEOPLE][0], **expected[MIXED][0]}
    sla_expected = {**expected[PEOPLE][1], **expected[MIXED][1]}
    assert {"OPEN", "WARNED", "ESCALATED", "RESOLVED"} <= {state for state, _, _ in escalations_expected.values()}
    assert {"started", "paused", "resumed", "warned", "breached", "met"} <= {
        record["outcome"] for record in sla_expected.values()}

    def seen(topic: str) -> dict[str, list]:
        records: dict[str, list] = {}
        for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, topic, sandbox.codec):
            records.setdefault(value["event_id"], []).append(
                (value["state"], value["message_id"], value["event_time"]) if topic == "escalations" else value)
        return records

    def wait_for_records(copies: int, workers) -> tuple[dict[str, list], dict[str, list]]:
        wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, len(workers) - 1, delivered,
                         workers=workers, timeout_s=240)
        deadline = time.monotonic() + 120
        while True:
            escalations, sla_events = seen("escalations"), seen("sla.events")
            if (sum(map(len, escalations.values())) >= copies * len(escalations_expected)
                    and sum(map(len, sla_events.values())) >= copies * len(sla_expected)) or time.monotonic() > deadline:
                return escalations, sla_events
            time.sleep(1)

    first = sandbox.start_worker(generation=0, name="g0", settings_file=settings_file)
    escalations, sla_events = wait_for_records(1, [first])
    assert {event_id: records[0] for event_id, records in escalations.items()} == escalations_expected
    assert {event_id: records[0] for event_id, records in sla_events.items()} == sla_expected

    store = clickhouse_factory()
    sink = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=f"{sandbox.app_id}-sink")

    def sink_everything() -> dict[str, list[tuple]]:
        records = sum(count_records(settings.kafka, sandbox.bootstrap, topic) for topic in SINK_TOPICS)
        sink_until(sink, lambda: sum(sink.inserted.values()) >= records, timeout_s=120)
        rows = store.query(f"SELECT tenant, {', '.join(SLA_COLUMNS)} FROM {{db}}.sla_events FINAL").result_rows
        return {tenant: sorted(row[1:] for row in rows if row[0] == tenant) for tenant in (PEOPLE, MIXED)}

    in_clickhouse = sink_everything()
    assert len(in_clickhouse[PEOPLE]) == len(expected[PEOPLE][1])
    # The out-of-office replies, acknowledgements and bounces changed no SLA event.
    assert in_clickhouse[MIXED] == in_clickhouse[PEOPLE]

    # `threadline replay` with the same settings: generation 1, its workers stopped once it is done.
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    env["THREADLINE_KAFKA_BOOTSTRAP"] = sandbox.bootstrap
    replay = subprocess.run([sys.executable, "-m", "pipeline.cli", "--settings", str(settings_file), "replay",
                             "--settings", str(settings_file), "--no-progress"],
                            cwd=sandbox.root, env=env, capture_output=True, text=True, timeout=600)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert "as the new generation 1, to compare with generation 0" in replay.stderr
    escalations, sla_events = seen("escalations"), seen("sla.events")
    assert set(escalations) == set(escalations_expected) and set(sla_events) == set(sla_expected)
    assert all(records == [escalations_expected[event_id]] * len(records) and len(records) >= 2
               for event_id, records in escalations.items())
    assert all(records == [sla_expected[event_id]] * len(records) and len(records) >= 2
               for event_id, records in sla_events.items())
    assert sink_everything() == in_clickhouse  # the replay's copies collapse onto the same rows
    sink.close()
    alerts = list(read_topic(settings.kafka, sandbox.bootstrap, "alerts", sandbox.codec))
    told = {(value["event_type"], value["user"]) for _, _, _, value in alerts}
    assert {kind for kind, _ in told} == {"escalation_warned", "escalation_escalated"}
    assert all(user.endswith("@" + AGENT_DOMAIN) for _, user in told)  # the agent the mail was sent to
