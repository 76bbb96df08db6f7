"""Shared fixtures. chDB allows one data folder per process, so every test that needs ClickHouse
gets the session's folder and a database of its own."""

from __future__ import annotations

import uuid

import pytest

from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseStore


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory):
    # Laid out like a data folder's store (<worker.data_dir>/clickhouse), so that a CLI command
    # run in-process with worker.data_dir set to its parent opens this same embedded engine.
    path = tmp_path_factory.mktemp("data") / "clickhouse"
    path.mkdir()
    return path


@pytest.fixture
def clickhouse_factory(chdb_path):
    """store(database=None) -> a migrated store on the session's chDB, in a fresh database."""
    stores = []

    def make(database: str | None = None, settings: Settings | None = None) -> ClickHouseStore:
        settings = settings or Settings()
        settings = settings.model_copy(update={"clickhouse": settings.clickhouse.model_copy(
            update={"database": database or f"t_{uuid.uuid4().hex[:10]}"})})
        store = ClickHouseStore(settings, chdb_path=chdb_path)
        store.migrate()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.client.command(f"DROP DATABASE IF EXISTS {store.database}")
