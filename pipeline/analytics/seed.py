"""Seeded analytics data: what the sink would write after a period of support and campaign mail.

Mail and its correlations come from the real engine over synthetic mail (pipeline.synth: people's
mail with out-of-office replies, acknowledgements and bounces mixed in, parsed from bytes), its
escalations and SLA events from the real trackers fed with those correlations (several
transitions per conversation, reopened when a customer writes again after our reply); campaigns, tracking events and conversions are drawn from a seeded random model of a campaign
(human and machine opens, clicks, conversions with revenue).  Used by the dashboard tests, the
ClickHouse benchmark.  Rows go through the same
``rows_for`` as the sink, so they have exactly the sink's shape.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta, timezone
from typing import Iterator

from pipeline.contracts.topics import (BY_NAME, CAMPAIGNS, CONVERSIONS, DEADLETTER, ESCALATIONS, MAIL_CORRELATED,
                                       MAIL_RAW, MAIL_RESPONSES, MAIL_UNTRACKED, SLA_EVENTS, TRACKING_EVENTS)
from pipeline.batch import OfflineDesk
from pipeline.correlation.model import stable_event_id
from pipeline.escalation.model import Transition
from pipeline.escalation.sla import SlaEvent
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseStore, rows_for
from pipeline.contracts.records import (
    SourcePosition, correlated_record, deadletter_record, response_record, untracked_record,
)
from pipeline.synth import AutomaticMail, AutomaticMix, MailGenerator, with_automatic_mail

_USER_AGENTS = ("Apple Mail", "Outlook", "Gmail", "Thunderbird", "Chrome", "Firefox")
# Campaign names as marketers write them: some longer than a chart's label.
_CAMPAIGN_NAMES = ("Spring renewal: 20 % off annual support plans for existing customers",
                   "Webinar invitation: migrating from on-premise Exchange", "Customer survey Q1",
                   "Black Friday early access", "Product update newsletter, January edition")


def _correlation_records(settings: Settings, tenant: str, mails: int, seed: int, generation: int,
                         automatic: AutomaticMix | None) -> Iterator[tuple[str, dict]]:
    """mail.correlated / mail.untracked / mail.responses records, and the escalations and SLA
    events of the correlated mail (every mail first advances the trackers to its time, as in the
    agent), up to an hour after the last person's mail: the store as seen then, the same whatever
    automatic mail came in between."""
    desk = OfflineDesk(settings, tenant, generation=generation)
    # One mail every 2 minutes on average: replies come minutes to days later, as in a real desk.
    generator = MailGenerator(seed, tenant=tenant, customers=2_000, agents=12, seconds_between_mails=120)
    stream = generator.mails(mails)
    if automatic is not None:
        stream = with_automatic_mail(stream, seed=seed, mix=automatic)
    last_persons_mail = None
    for offset, item in enumerate(stream):
        generated = item.record if isinstance(item, AutomaticMail) else item
        if generated is item:
            last_persons_mail = generated.event_time
        deliveries = [generated]
        if offset % 40 == 0 and generated.direction == "in":
            # Mail to two of the desk's mailboxes arrives twice: the copy is a duplicate.
            deliveries.append(dataclasses.replace(generated, mailbox="shared"))
        for mail in deliveries:
            correlation, transitions, sla_events = desk.feed(mail)
            if correlation.untracked_reason:
                yield MAIL_UNTRACKED, untracked_record(correlation, mail.mailbox)
                continue
            yield MAIL_CORRELATED, correlated_record(correlation, mail.mailbox, SourcePosition(MAIL_RAW, 0, offset))
            if correlation.response is not None:
                yield MAIL_RESPONSES, response_record(correlation, mail.mailbox)
            yield from _tracker_records(transitions, sla_events)
    if last_persons_mail is not None:
        yield from _tracker_records(*desk.advance(last_persons_mail + timedelta(hours=1)))


def _tracker_records(transitions: list[Transition], sla_events: list[SlaEvent]) -> Iterator[tuple[str, dict]]:
    yield from ((ESCALATIONS, transition.to_record()) for transition in transitions)
    yield from ((SLA_EVENTS, outcome.to_record()) for outcome in sla_events)


def _campaign_records(tenant: str, rng: random.Random, start: datetime, campaigns: int,
                      recipients: int) -> Iterator[tuple[str, dict]]:
    for number in range(campaigns):
        campaign_id = f"cmp-{number + 1:03d}"
        sent_at = start + timedelta(days=rng.randint(0, 20), hours=rng.randint(7, 17))
        yield CAMPAIGNS, {
            "event_id": stable_event_id("campaign", tenant, campaign_id), "tenant": tenant,
            "campaign_id": campaign_id, "name": _CAMPAIGN_NAMES[number % len(_CAMPAIGN_NAMES)], "cost": round(rng.uniform(200, 5000), 2),
            "currency": "EUR", "started_at": sent_at, "updated_at": sent_at,
        }
        for recipient_number in range(recipients):
            recipient = f"r{recipient_number}@customer{recipient_number % 97}.example"
            message_id = f"<{campaign_id}.{recipient_number}@campaign.threadline.test>"
            hits = []
            if rng.random() < 0.35:  # privacy proxies fetch the pixel on delivery
                hits.append(("open", sent_at + timedelta(seconds=rng.randint(1, 30)), True, "apple_mpp"))
            if rng.random() < 0.4:
                first = sent_at + timedelta(minutes=rng.expovariate(1 / 240))
                hits += [("open", first + timedelta(hours=n * rng.random() * 5), False, None)
                         for n in range(rng.randint(1, 3))]
                if rng.random() < 0.3:
                    hits.append(("click", first + timedelta(minutes=rng.randint(1, 20)), False, None))
            if rng.random() < 0.05:  # security scanners click every link at once
                hits.append(("click", sent_at + timedelta(seconds=rng.randint(1, 5)), True, "scanner_burst"))
            opens = 0
            for kind, when, machine, reason in sorted(hits, key=lambda hit: hit[1]):
                opens += kind == "open" and not machine
                yield TRACKING_EVENTS, {
                    "event_id": stable_event_id("hit", tenant, message_id, kind, when.isoformat()), "tenant": tenant,
                    "kind": kind, "message_id": message_id, "recipient": recipient, "campaign_id": campaign_id,
                    "link_url": "https://shop.example/offer" if kind == "click" else None, "event_time": when,
                    "ip": None, "reverse_dns": None, "user_agent_family": rng.choice(_USER_AGENTS),
                    "is_machine": machine, "machine_reason": reason, "nth_open": max(opens, 1 if kind == "open" else 0),
                    "first_open_time": None, "probably_forwarded": False,
                }
            if any(kind == "click" and not machine for kind, _, machine, _ in hits) and rng.random() < 0.25:
                yield CONVERSIONS, {
                    "event_id": stable_event_id("conversion", tenant, message_id), "tenant": tenant,
                    "campaign_id": campaign_id, "recipient": recipient, "message_id": message_id,
                    "revenue": round(rng.uniform(20, 400), 2), "currency": "EUR",
                    "event_time": sent_at + timedelta(days=rng.randint(0, 5)),
                }


def seed_records(settings: Settings, *, tenants: int = 2, mails_per_tenant: int = 3_000, campaigns: int = 4,
                 recipients: int = 500, seed: int = 7, generation: int = 0,
                 automatic: AutomaticMix | None = AutomaticMix()) -> Iterator[tuple[str, dict]]:
    """Everything the sink would have written; ``generation`` > 0 is what a replay adds.
    ``mails_per_tenant`` people's mails, and the automatic mail of ``automatic`` that answers
    some of them (None: none, the same people's mail)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, tzinfo=timezone.utc)
    for number in range(tenants):
        tenant = f"tenant-{number + 1}"
        yield from _correlation_records(settings, tenant, mails_per_tenant, seed + number, generation, automatic)
        yield from _campaign_records(tenant, rng, start, campaigns, recipients)
        yield DEADLETTER, deadletter_record(SourcePosition(MAIL_RAW, 0, number), tenant.encode(), b"not a mail",
                                              reason="not_a_mail", error="not_a_mail: no header block",
                                              agent="correlator", failed_at=start + timedelta(days=1))


def load_records(store: ClickHouseStore, records: Iterator[tuple[str, dict]], *,
                 batch: int = 50_000) -> dict[str, int]:
    """Insert ``(topic, record)`` pairs like the sink does; returns rows per table."""
    pending: dict[str, list] = {}
    counts: dict[str, int] = {}
    now = datetime.now(timezone.utc)

    def flush(topic: str) -> None:
        items = pending.pop(topic, [])
        if items:
            columns, rows = rows_for(topic, items, now)
            table = BY_NAME[topic].table
            store.insert(table, rows, columns)
            counts[table] = counts.get(table, 0) + len(rows)

    for offset, (topic, record) in enumerate(records):
        pending.setdefault(topic, []).append((0, offset, record))
        if len(pending[topic]) >= batch:
            flush(topic)
    for topic in list(pending):
        flush(topic)
    return counts
