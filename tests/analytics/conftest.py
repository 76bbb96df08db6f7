"""A seeded store shared by the analytics tests (seeding is the slow part): two tenants' mail,
correlations, campaigns, tracking events, conversions, escalations and dead letters, a few
links the engine was unsure of, escalations whose transitions share an instant, and customers
who write again before we answer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.analytics.seed import load_records, seed_records
from pipeline.cli.main import main
from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.contracts.topics import ESCALATIONS, MAIL_CORRELATED, MAIL_RAW
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation
from pipeline.escalation.model import MailEvent
from pipeline.escalation.tracker import EscalationTracker
from pipeline.settings import (ClickHouseSettings, EscalationMatch, EscalationPolicy, EscalationSettings, Settings,
                               SlaSettings, UntrackedSettings)

SEEDED_DATABASE = "seeded"
DOUBT_START = datetime(2026, 1, 8, 9, 0, tzinfo=timezone.utc)
# (message id, generation, method, confidence) of each doubtful decision; the newest-generation
# links below 0.9, newest first, are <doubt-3>, <doubt-2>, <doubt-1>.
DOUBTFUL = (
    ("<doubt-1@seed.test>", 0, Method.SMART_MATCHING, 0.35),
    ("<doubt-2@seed.test>", 0, Method.CONVERSATION_INDEX, 0.6),
    ("<doubt-3@seed.test>", 0, Method.SMART_MATCHING, 0.8),
    ("<sure-1@seed.test>", 0, Method.SMART_MATCHING, 0.95),
    ("<replayed-1@seed.test>", 0, Method.SMART_MATCHING, 0.4),  # a replay became sure of it:
    ("<replayed-1@seed.test>", 1, Method.SMART_MATCHING, 0.97),
    ("<abstained-1@seed.test>", 0, Method.NONE, 0.3),  # no link: nothing to review
)


def doubtful_records(tenant: str):
    """What the sink holds for the decisions of DOUBTFUL, one hour apart."""
    for number, (message_id, generation, method, confidence) in enumerate(DOUBTFUL):
        correlation = Correlation(
            tenant=tenant, message_id=message_id, conversation_id=f"c-doubt-{number}", method=method,
            mail_type="reply", direction="in", event_time=DOUBT_START + timedelta(hours=number),
            confidence=confidence, generation=generation, subject=f"Re: doubtful {number}",
            parent_message_id=None if method == Method.NONE else f"<parent-{number}@seed.test>")
        yield MAIL_CORRELATED, correlated_record(correlation, "support", SourcePosition(MAIL_RAW, 0, number))


TIE_START = datetime(2026, 1, 6, 9, 0, tzinfo=timezone.utc)
# (conversation, [(hours after TIE_START, direction)]) under a policy that restarts its clock on
# every customer mail (4 h warn, 8 h escalate): each ends with two transitions at one instant.
SAME_INSTANT = (
    ("c-tie-warned-restarted", [(0, "in"), (4, "in")]),  # WARNED, then OPEN again
    ("c-tie-escalated-restarted", [(0, "in"), (8, "in")]),  # ESCALATED, then OPEN again
    ("c-tie-escalated-answered", [(0, "in"), (8, "out")]),  # ESCALATED, then RESOLVED
    ("c-tie-answered-at-once", [(0, "in"), (0, "out")]),  # OPEN, then RESOLVED
)


def same_instant_records(tenant: str):
    """The escalations of SAME_INSTANT as the real tracker emits them."""
    settings = EscalationSettings(default_policy=EscalationPolicy(on_customer_reply="restart"))
    for conversation_id, mails in SAME_INSTANT:
        tracker = EscalationTracker(settings, clock=lambda: TIE_START)  # each its own: time never goes back
        for number, (hours, direction) in enumerate(mails):
            event = MailEvent(tenant=tenant, message_id=f"<{conversation_id}.{number}@seed.test>",
                              conversation_id=conversation_id, direction=direction,
                              event_time=TIE_START + timedelta(hours=hours))
            for transition in tracker.on_correlation(event):
                yield ESCALATIONS, transition.to_record()


WAIT_START = datetime(2026, 1, 5, 16, 0, tzinfo=timezone.utc)
# (conversation, [(hours after WAIT_START, direction, kind of automatic mail)]): customers who
# write again before or after our reply (the generated threads alternate strictly between
# customer and desk), and automatic mail where it would change what waits if it counted.
CONVERSATIONS = (
    ("c-wait-follow-ups", [(0, "in", ""), (1, "out", ""), (2, "in", ""), (5, "in", ""), (6, "in", "")]),  # since 2
    ("c-wait-answered-last", [(0, "in", ""), (1, "in", ""), (3, "out", "")]),
    ("c-wait-answered-at-once", [(0, "in", ""), (2, "out", ""), (2, "in", "")]),  # our reply wins at one instant
    ("c-wait-never-answered", [(0, "in", ""), (4, "in", "")]),
    ("c-wait-acknowledged", [(0, "in", ""), (0.01, "out", "auto_reply")]),  # an acknowledgement answers nothing
    ("c-wait-out-of-office", [(0, "in", ""), (1, "out", ""), (1.02, "in", "auto_reply")]),  # answered
    ("c-wait-bounced", [(0, "in", ""), (1, "out", ""), (1.01, "in", "bounce")]),  # answered
    ("c-wait-list", [(0, "in", "list"), (3, "in", "list")]),  # mailing-list mail is people's: waits
    ("c-wait-notified", [(0, "in", ""), (1, "out", ""), (5, "in", "notifier"), (6, "in", "auto_generated")]),
)


def conversation_records(tenant: str):
    """mail.correlated records of CONVERSATIONS, subjects with quotes and bidi controls."""
    for conversation_id, mails in CONVERSATIONS:
        for number, (hours, direction, automatic) in enumerate(mails):
            customer, desk = f"o'brien@{tenant}.example", "desk@support.threadline.test"
            correlation = Correlation(
                tenant=tenant, message_id=f"<{conversation_id}.{number}@seed.test>", conversation_id=conversation_id,
                method=Method.IN_REPLY_TO if number else Method.NONE, mail_type="reply" if number else "new",
                direction=direction, event_time=WAIT_START + timedelta(hours=hours), confidence=1.0,
                subject=f"Re: order {number}' OR '1'='1 \u202egnp.exe", from_addr=customer if direction == "in" else desk,
                to=(desk if direction == "in" else customer,), automatic=automatic,
                parent_message_id=f"<{conversation_id}.{number - 1}@seed.test>" if number else None)
            yield MAIL_CORRELATED, correlated_record(correlation, "support", SourcePosition(MAIL_RAW, 0, number))


# The desk's own domain (pipeline.synth's agents), so that mail belongs to the agent it was sent to;
# the first mail of a conversation goes to first-line support, a reopened one to second-line; a
# conversation we answered counts as resolved after 8 hours of silence (the seed spans two days).
_QUICK_RESOLUTION = SlaSettings(resolve_after_inactivity=8)
SEEDED_SETTINGS = Settings(
    untracked=UntrackedSettings(own_domains=("support.threadline.test",)),
    escalation=EscalationSettings(
        default_policy=EscalationPolicy(team="second-line", sla=_QUICK_RESOLUTION),
        policies=(EscalationPolicy(name="first-line", match=EscalationMatch(mail_type="new"), team="first-line",
                                   sla=_QUICK_RESOLUTION),)))


@pytest.fixture(scope="session")
def seeded_records():
    """Every (topic, record) of the seeded store, in the order they were written."""
    records = list(seed_records(SEEDED_SETTINGS, tenants=2, mails_per_tenant=1500, campaigns=3, recipients=300))
    for tenant in ("tenant-1", "tenant-2"):
        records += [*doubtful_records(tenant), *same_instant_records(tenant), *conversation_records(tenant)]
    return records


@pytest.fixture(scope="session")
def seeded(chdb_path, seeded_records):
    from pipeline.sinks.clickhouse import ClickHouseStore

    store = ClickHouseStore(ClickHouseSettings(database=SEEDED_DATABASE), chdb_path)
    store.client.command(f"DROP DATABASE IF EXISTS {SEEDED_DATABASE}")
    store.migrate()
    load_records(store, iter(seeded_records))
    yield store
    store.client.command(f"DROP DATABASE IF EXISTS {SEEDED_DATABASE}")


@pytest.fixture
def cli(seeded, tmp_path, monkeypatch, capsys):
    """Run `threadline ...` in this process on the seeded store: (exit code, stdout)."""
    settings = tmp_path / "threadline.toml"
    settings.write_text(f'[worker]\ndata_dir = "{seeded.location.removeprefix("chdb:").removesuffix("/clickhouse")}"\n'
                        f'[clickhouse]\ndatabase = "{seeded.database}"\n')
    monkeypatch.delenv("THREADLINE_CLICKHOUSE_URL", raising=False)  # this store, not a server
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(["--settings", str(settings), *argv])
        except SystemExit as exc:  # argparse refusing a value is a clean error too
            code = exc.code
        return code, capsys.readouterr().out

    return run
