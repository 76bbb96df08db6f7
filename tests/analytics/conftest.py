"""A seeded store shared by the analytics tests (seeding is the slow part): two tenants' mail,
correlations, campaigns, tracking events, conversions, escalations and dead letters, and a few
links the engine was unsure of."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.analytics.seed import load_records, seed_records
from pipeline.contracts.records import SourcePosition, correlated_record
from pipeline.contracts.topics import MAIL_CORRELATED, MAIL_RAW
from pipeline.correlation.methods.base import Method
from pipeline.correlation.model import Correlation
from pipeline.settings import ClickHouseSettings, Settings

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


@pytest.fixture(scope="session")
def seeded(chdb_path):
    from pipeline.sinks.clickhouse import ClickHouseStore

    settings = Settings()
    store = ClickHouseStore(ClickHouseSettings(database=SEEDED_DATABASE), chdb_path)
    store.client.command(f"DROP DATABASE IF EXISTS {SEEDED_DATABASE}")
    store.migrate()
    load_records(store, seed_records(settings, tenants=2, mails_per_tenant=1500, campaigns=3, recipients=300))
    for tenant in ("tenant-1", "tenant-2"):
        load_records(store, doubtful_records(tenant))
    yield store
    store.client.command(f"DROP DATABASE IF EXISTS {SEEDED_DATABASE}")
