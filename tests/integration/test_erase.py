"""`threadline erase`: one person's mail disappears from every topic (changelogs included) and from
ClickHouse, and everything else stays."""

from __future__ import annotations

import pytest

from pipeline.runtime.kafka import new_admin
from pipeline.contracts.topics import SINK_TOPICS
from pipeline.erase import erase_from_clickhouse, erase_from_topics
from pipeline.sinks.clickhouse import ClickHouseSink, sink_until
from pipeline.streams.ingest import ingest
from pipeline.streams.reader import read_messages
from pipeline.streams.runner import count_records, wait_for_outputs
from pipeline.synth import MailGenerator, render_rfc5322

pytestmark = pytest.mark.integration

PERSON = "erase.me@customer.test"


def _person_mail(n: int, reply_to: str | None = None) -> bytes:
    headers = (f"Message-ID: <p{n}@customer.test>\r\nFrom: Erase Me <{PERSON}>\r\nTo: desk@acme.test\r\n"
               f"Subject: my order {n}\r\nDate: Mon, 05 Jan 2026 1{n}:00:00 +0000\r\n")
    if reply_to:
        headers += f"In-Reply-To: {reply_to}\r\n"
    return (headers + "\r\nPlease call me back.\r\n").encode()


def _all_topic_bytes(settings, bootstrap) -> dict[str, list[bytes]]:
    admin = new_admin(settings.kafka, bootstrap)
    return {name: [(m.key() or b"") + (m.value() or b"") for m in read_messages(settings.kafka, bootstrap, name)]
            for name in admin.list_topics(timeout=10).topics if not name.startswith("__")}


def test_erase_removes_one_person_everywhere_and_keeps_the_rest(sandbox, clickhouse_factory):
    settings = sandbox.settings()
    others = [(f"s#{n}", render_rfc5322(mail)) for n, mail in enumerate(MailGenerator(4, customers=40).mails(200))]
    # p#3 is over mail.inline_max_bytes: its record names a blob, and only the blob holds the address
    big = _person_mail(3) + (b"y" * 76 + b"\r\n") * 9000
    person = [("p#1", _person_mail(1)), ("p#2", _person_mail(2, reply_to="<p1@customer.test>")), ("p#3", big)]
    report = ingest(others[:100] + person + others[100:], settings, sandbox.codec, sandbox.bootstrap)
    worker = sandbox.start_worker()
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, report.delivered, workers=[worker])
    worker.stop()  # the pipeline is stopped, caught up, with its offsets committed

    store = clickhouse_factory()
    sink = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=sandbox.app_id)
    records = sum(count_records(settings.kafka, sandbox.bootstrap, topic) for topic in SINK_TOPICS)
    sink_until(sink, lambda: sum(sink.inserted.values()) >= records)
    sink.close()
    before_rows = store.query("SELECT count() FROM {db}.mail_correlated").result_rows[0][0]
    before = _all_topic_bytes(settings, sandbox.bootstrap)
    assert any(PERSON.encode() in v.lower() for values in before.values() for v in values)

    result = erase_from_topics(settings, sandbox.bootstrap, PERSON)
    rows = erase_from_clickhouse(store, PERSON)

    after = _all_topic_bytes(settings, sandbox.bootstrap)
    assert not any(PERSON.encode() in v.lower() for values in after.values() for v in values)
    raw_topic = f"{sandbox.prefix}mail.raw"
    for topic, values in before.items():
        kept = [v for v in values if PERSON.encode() not in v.lower()]
        if topic == raw_topic:  # the big mail's record does not hold the address itself
            assert len(after[topic]) == len(kept) - 1 and set(after[topic]) < set(kept)
            continue
        assert sorted(after.get(topic, [])) == sorted(kept), topic  # everything else is still there
    assert result.records_removed[raw_topic] == 3
    assert result.blobs_deleted == 1
    assert not [path for path in (settings.blob_dir / "sha256").rglob("*") if path.is_file()]
    assert any(name.endswith("-changelog") for name in result.topics_rewritten)  # the index entries too
    assert rows["mail_correlated"] == 3
    assert store.query("SELECT count() FROM {db}.mail_correlated").result_rows[0][0] == before_rows - 3
