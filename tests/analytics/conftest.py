"""A seeded store shared by the analytics tests (seeding is the slow part): two tenants' mail,
correlations, campaigns, tracking events, conversions, escalations and dead letters."""

from __future__ import annotations

import pytest

from pipeline.analytics.seed import load_records, seed_records
from pipeline.settings import ClickHouseSettings, Settings

SEEDED_DATABASE = "seeded"


@pytest.fixture(scope="session")
def seeded(chdb_path):
    from pipeline.sinks.clickhouse import ClickHouseStore

    settings = Settings()
    store = ClickHouseStore(ClickHouseSettings(database=SEEDED_DATABASE), chdb_path)
    store.client.command(f"DROP DATABASE IF EXISTS {SEEDED_DATABASE}")
    store.migrate()
    load_records(store, seed_records(settings, tenants=2, mails_per_tenant=1500, campaigns=3, recipients=300))
    yield store
    store.client.command(f"DROP DATABASE IF EXISTS {SEEDED_DATABASE}")
