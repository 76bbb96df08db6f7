"""Shared fixtures and the unit/integration boundary.

chDB allows one data folder per process, so every test that needs ClickHouse gets the session's
folder and a database of its own.  A test that starts chDB (it needs ``chdb_path``) or opens a
network socket is an integration test: the first kind is marked here, the second fails unless it
is marked, so ``-m "not integration"`` runs only tests that touch neither."""

from __future__ import annotations

import socket
import sys
import uuid

import pytest

from pipeline.settings import ClickHouseSettings
from pipeline.sinks.clickhouse import ClickHouseStore


_NETWORK_FAMILIES = {socket.AF_INET, socket.AF_INET6}
_unit_test_running = False


def _refuse_network_in_unit_tests(event: str, args: tuple) -> None:
    # An audit hook sees every bind and connect, including those of libraries and servers.
    if _unit_test_running and event in ("socket.bind", "socket.connect") and args[0].family in _NETWORK_FAMILIES:
        raise RuntimeError(f"a test not marked integration opened a network socket ({event} {args[1]!r}): "
                           "mark it @pytest.mark.integration or move it to tests/integration/")


sys.addaudithook(_refuse_network_in_unit_tests)


def pytest_collection_modifyitems(items):
    for item in items:
        if "chdb_path" in item.fixturenames:  # starts (or shares) the session's chDB
            item.add_marker(pytest.mark.integration)
    # tests/integration first: `make test` hands whole files to two processes in this order, and
    # the long files started first leave the many short ones to even out the end (see the Makefile).
    items.sort(key=lambda item: item.path.parent.name != "integration")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    global _unit_test_running
    _unit_test_running = item.get_closest_marker("integration") is None
    try:
        return (yield)
    finally:
        _unit_test_running = False


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory):
    # Laid out like a data folder's store (<worker.data_dir>/clickhouse), so that a CLI command
    # run in-process with worker.data_dir set to its parent opens this same embedded engine.
    path = tmp_path_factory.mktemp("data") / "clickhouse"
    path.mkdir()
    return path


@pytest.fixture
def clickhouse_factory(chdb_path):
    """store() -> a migrated store on the session's chDB, in a fresh database."""
    stores = []

    def make() -> ClickHouseStore:
        store = ClickHouseStore(ClickHouseSettings(database=f"t_{uuid.uuid4().hex[:10]}"), chdb_path)
        store.migrate()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.client.command(f"DROP DATABASE IF EXISTS {store.database}")


@pytest.fixture
def write_corpus():
    """Write a corpus folder (messages.mbox + truth.jsonl, the shared corpus format) from mails
    given as dicts: id, subject, sender (a From header value), minutes after a fixed start, body, optional in_reply_to /
    references, and the truth: parent and root (ids without angle brackets; root defaults to id)."""
    import json
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime, parseaddr

    start = datetime(2026, 5, 4, 8, 0, tzinfo=timezone.utc)

    def write(folder, mails):
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "messages.mbox", "w", encoding="utf-8") as mbox, \
                open(folder / "truth.jsonl", "w", encoding="utf-8") as truth:
            for index, mail in enumerate(mails):
                date = start + timedelta(minutes=mail.get("minutes", index))
                headers = [f"From: {mail['sender']}", "To: list@lists.example", f"Subject: {mail['subject']}",
                           f"Date: {format_datetime(date)}", f"Message-ID: <{mail['id']}>"]
                if mail.get("in_reply_to"):
                    headers.append(f"In-Reply-To: <{mail['in_reply_to']}>")
                if mail.get("references"):
                    headers.append("References: " + " ".join(f"<{ref}>" for ref in mail["references"]))
                mbox.write(f"From {parseaddr(mail['sender'])[1]} {date.strftime('%a %b %d %H:%M:%S %Y')}\n"
                           + "\n".join(headers) + "\n\n" + mail.get("body", "Hello.") + "\n\n")
                parent = mail.get("parent")
                truth.write(json.dumps({"index": index, "message_id": f"<{mail['id']}>",
                                        "parent_message_id": parent and f"<{parent}>",
                                        "thread_root_id": f"<{mail.get('root', mail['id'])}>",
                                        "subject": mail["subject"], "from": mail["sender"]}) + "\n")
        return folder

    return write
