"""The ClickHouse sink on the real broker and chDB: commit after insert, duplicates collapse,
a failing insert stops the sink without losing or skipping a record."""

from __future__ import annotations

import pytest

from pipeline.contracts.topics import SINK_TOPICS
from pipeline.sinks.clickhouse import ClickHouseSink, SinkError, sink_until
from pipeline.streams.ingest import ingest
from pipeline.streams.reader import read_topic
from pipeline.streams.runner import count_records, wait_for_outputs
from pipeline.synth import MailGenerator, render_rfc5322

pytestmark = pytest.mark.integration

AGENT_DOMAIN = "support.threadline.test"


def _distinct(settings, bootstrap, codec, topic) -> int:
    return len({value["event_id"] for _, _, _, value in read_topic(settings.kafka, bootstrap, topic, codec)})


def _final_count(store, table) -> int:
    return store.query(f"SELECT count() FROM {{db}}.{table} FINAL").result_rows[0][0]


def _sink_all(sink, settings, bootstrap) -> int:
    records = sum(count_records(settings.kafka, bootstrap, topic) for topic in SINK_TOPICS)
    before = sum(sink.inserted.values())
    sink_until(sink, lambda: sum(sink.inserted.values()) - before >= records, timeout_s=120)
    return records


def test_sink_commits_after_insert_and_redelivery_changes_nothing(sandbox, clickhouse_factory):
    settings = sandbox.settings()
    with_domains = settings.model_copy(update={"untracked": settings.untracked.model_copy(
        update={"own_domains": [AGENT_DOMAIN]})})
    mails = [(f"s#{n}", render_rfc5322(mail)) for n, mail in enumerate(MailGenerator(3, customers=50).mails(600))]
    report = ingest(mails[:400], with_domains, sandbox.codec, sandbox.bootstrap, direction="auto")
    worker = sandbox.start_worker()
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, report.delivered, workers=[worker])

    store = clickhouse_factory()
    first = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=f"{sandbox.app_id}-a")
    _sink_all(first, settings, sandbox.bootstrap)
    correlated = _distinct(settings, sandbox.bootstrap, sandbox.codec, "mail.correlated")
    responses = _distinct(settings, sandbox.bootstrap, sandbox.codec, "mail.responses")
    assert correlated == 400 and responses > 50
    assert _final_count(store, "mail_correlated") == correlated
    assert _final_count(store, "mail_responses") == responses
    rollup = "SELECT uniqExactMerge(responses) FROM {db}.response_daily"
    assert store.query(rollup).result_rows[0][0] == responses

    # A second consumer group reads everything again: every row arrives twice, nothing counts twice.
    again = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=f"{sandbox.app_id}-b")
    _sink_all(again, settings, sandbox.bootstrap)
    assert store.query("SELECT count() FROM {db}.mail_correlated").result_rows[0][0] >= 2 * correlated - 1
    assert _final_count(store, "mail_correlated") == correlated
    assert store.query(rollup).result_rows[0][0] == responses
    again.close()

    # The table disappears: the sink retries, then stops without committing the batch.
    store.client.command(f"RENAME TABLE {store.database}.mail_correlated TO {store.database}.mail_correlated_away")
    ingest(mails[400:], with_domains, sandbox.codec, sandbox.bootstrap, direction="auto")
    wait_for_outputs(settings.kafka, sandbox.bootstrap, sandbox.codec, 0, 600, workers=[worker])
    first.max_attempts, first.backoff_s = 2, 0.01
    with pytest.raises(SinkError, match="mail_correlated"):
        sink_until(first, lambda: False, timeout_s=60)
    first.close()
    store.client.command(f"RENAME TABLE {store.database}.mail_correlated_away TO {store.database}.mail_correlated")

    # Restarted, the same group resumes at its last commit: the 200 new mails all arrive.
    resumed = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=f"{sandbox.app_id}-a")
    sink_until(resumed, lambda: _final_count(store, "mail_correlated") >= 600, timeout_s=120)
    resumed.close()
    assert _final_count(store, "mail_correlated") == _distinct(settings, sandbox.bootstrap, sandbox.codec,
                                                               "mail.correlated") == 600
