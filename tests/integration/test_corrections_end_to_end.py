"""A person's correction on the real embedded broker, Faust workers and chDB: `threadline correct`
changes the correlation in ClickHouse, mail that comes after follows it, a replay keeps it, and
another tenant's mail under the same Message-IDs is never touched."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.cli.main import main
from pipeline.contracts.topics import SINK_TOPICS
from pipeline.correlation.model import own_conversation_id
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.streams.ingest import ingest
from pipeline.streams.runner import count_records, wait_for_outputs

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TENANTS = ("acme", "globex")


def mail(name: str, minutes: int, replies_to: str | None = None) -> tuple[str, bytes]:
    lines = [f"Message-ID: <{name}@customer.example>",
             f"Date: {(T0 + timedelta(minutes=minutes)).strftime('%a, %d %b %Y %H:%M:%S +0000')}",
             "From: ann@customer.example", "To: desk@ours.example", f"Subject: {'Re: ' if replies_to else ''}Invoice 7"]
    if replies_to:
        lines.append(f"In-Reply-To: <{replies_to}@customer.example>")
    return f"test#{name}", ("\r\n".join(lines) + "\r\n\r\nHello.\r\n").encode()


def test_a_correction_from_the_cli_reaches_clickhouse_is_followed_and_survives_a_replay(
        sandbox, clickhouse_factory, monkeypatch, capsys):
    settings = sandbox.settings()
    for tenant in TENANTS:  # the same Message-IDs in both tenants: a, and b replying to a
        assert ingest([mail("a", 0), mail("b", 1, "a")], settings, sandbox.codec, sandbox.bootstrap,
                      tenant=tenant).errors == []
    live = sandbox.start_worker(generation=0, name="g0")
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, 4, workers=[live], timeout_s=120)

    # b of acme is a new request, not a reply: unlink it.
    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", sandbox.bootstrap)
    assert main(["--settings", str(sandbox.settings_file()), "correct", "unlink", "b@customer.example",
                 "--tenant", "acme", "--author", "eve@ours.example", "--reason", "a new request"]) == 0
    event_id = capsys.readouterr().out.strip()
    # Mail that replies to b afterwards follows b, in acme only.
    for tenant in TENANTS:
        ingest([mail("c", 2, "b")], settings, sandbox.codec, sandbox.bootstrap, tenant=tenant)

    store = clickhouse_factory()
    sink = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=f"{sandbox.app_id}-sink")
    own_b = own_conversation_id("acme", "<b@customer.example>")

    def latest(generation: int, timeout_s: float = 120.0) -> dict:
        """(tenant, mail) -> (conversation, parent, method) in ClickHouse once generation ``generation``
        shows the correction and c of both tenants (the sink keeps the newest row of a mail)."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = sum(count_records(settings.kafka, sandbox.bootstrap, topic) for topic in SINK_TOPICS)
            while sink.poll_once():
                pass
            rows = store.query("SELECT tenant, message_id, conversation_id, parent_message_id, method_name "
                               "FROM {db}.mail_correlated_latest WHERE generation = {g:Int32}",
                               parameters={"g": generation}).result_rows
            found = {(t, m.split("@")[0].strip("<")): (c, p and p.split("@")[0].strip("<"), name)
                     for t, m, c, p, name in rows}
            if found.get(("acme", "b"), (None,))[0] == own_b and len(found) == 6 \
                    and found[("acme", "c")][0] == own_b and sum(sink.inserted.values()) >= records:
                return found
            assert all(worker.alive for worker in sandbox.workers), [w.exit_report() for w in sandbox.workers]
            assert time.monotonic() < deadline, f"generation {generation} in ClickHouse: {found}"
            time.sleep(0.5)

    before = latest(0)
    acme_a, globex_a = before[("acme", "a")][0], before[("globex", "a")][0]
    assert before == {
        ("acme", "a"): (acme_a, None, "None"), ("acme", "b"): (own_b, None, "Correction"),
        ("acme", "c"): (own_b, "b", "InReplyTo"),
        ("globex", "a"): (globex_a, None, "None"), ("globex", "b"): (globex_a, "a", "InReplyTo"),
        ("globex", "c"): (globex_a, "b", "InReplyTo"),
    }
    # One row per mail however many records a mail had; the correction itself is kept too.
    assert store.query("SELECT count() FROM {db}.mail_correlated FINAL").result_rows[0][0] == 6
    assert store.query("SELECT action, author, reason FROM {db}.corrections FINAL WHERE event_id = {e:String}",
                       parameters={"e": event_id}).result_rows == [("UNLINK", "eve@ours.example", "a new request")]
    explained = store.query("SELECT evidence FROM {db}.mail_correlated_latest WHERE tenant = 'acme' "
                            "AND message_id = '<b@customer.example>'").result_rows[0][0]
    assert event_id in explained and "eve@ours.example" in explained

    # A replay (a new generation: a new consumer group and empty tables) reads the corrections
    # again from the beginning and ends in the same correlation.
    replay = sandbox.start_worker(generation=1, name="g1")
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 1, 6, workers=[replay], timeout_s=120)
    assert latest(1) == before
    sink.close()
