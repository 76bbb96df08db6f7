"""``threadline tail`` and ``threadline explain`` on the real embedded broker (and chDB): records
of two tenants, a record that is not Avro at all, a 12 MB mail, following a topic until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.cli.main import main
from pipeline.contracts.records import (SourcePosition, correlated_record, mail_raw_record, response_record,
                                        untracked_record)
from pipeline.contracts.topics import MAIL_CORRELATED, MAIL_RAW, MAIL_RESPONSES, MAIL_UNTRACKED
from pipeline.correlation.engine import Correlator
from pipeline.mail.parse import parse_mail
from pipeline.runtime.producer import RecordProducer
from pipeline.streams.ingest import ingest

pytestmark = pytest.mark.integration

BIG_MAIL_BYTES = 12 * 2**20


def _mail(message_id: str, subject: str, minutes: int, in_reply_to: str | None = None) -> bytes:
    date = (datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc) + timedelta(minutes=minutes)).strftime("%a, %d %b %Y %H:%M:%S +0000")
    reply = f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n" if in_reply_to else ""
    return (f"Message-ID: {message_id}\r\nDate: {date}\r\nFrom: Ann <ann@customer.test>\r\n"
            f"To: desk@support.test\r\nSubject: {subject}\r\n{reply}\r\nHello.\r\n").encode()


def correlated_records(settings, tenant: str, generation: int = 0) -> list[dict]:
    """mail.correlated records of a question and its reply, as the correlator writes them."""
    correlator = Correlator(settings.correlation, tenant=tenant, generation=generation)
    mails = [_mail("<q@customer.test>", "Invoice 7 is wrong", 0),
             _mail("<r@customer.test>", "Re: Invoice 7 is wrong", 30, in_reply_to="<q@customer.test>")]
    return [correlated_record(correlator.correlate(parse_mail(raw, tenant=tenant)), "support",
                              SourcePosition(MAIL_RAW, 0, n)) for n, raw in enumerate(mails)]


def produce(sandbox, settings, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = RecordProducer(settings.kafka, sandbox.bootstrap)
    for key, value in items:
        producer.produce(topic, key, value)
    assert not producer.finish(30).errors


@pytest.fixture
def cli(sandbox, monkeypatch, tmp_path):
    """run(argv) -> (exit code, stdout, stderr) of the threadline command, in-process, on the sandbox."""
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", sandbox.bootstrap)
    settings_file = sandbox.settings_file()

    def run(argv: list[str], capsys) -> tuple[int, str, str]:
        code = main(["--settings", str(settings_file), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_tail_prints_two_tenants_decoded_and_goes_on_past_a_record_that_is_not_avro(sandbox, cli, capsys):
    settings = sandbox.settings()
    acme, globex = correlated_records(settings, "acme"), correlated_records(settings, "globex")
    produce(sandbox, settings, MAIL_CORRELATED,
            [(b"acme", sandbox.codec.encode(MAIL_CORRELATED, acme[0])),
             (b"acme", b"\x00\x00\x00\x00\x07garbage that is not a record"),  # right magic byte, bad body
             (b"acme", b"<html>not avro at all</html>"),
             (b"acme", sandbox.codec.encode(MAIL_CORRELATED, acme[1])),
             (b"globex", sandbox.codec.encode(MAIL_CORRELATED, globex[0])),
             (b"globex", sandbox.codec.encode(MAIL_CORRELATED, globex[1]))])

    code, out, err = cli(["tail", "mail.correlated"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    assert {(line["key"], line["value"]["message_id"]) for line in lines} == {
        (tenant, mid) for tenant in ("acme", "globex") for mid in ("<q@customer.test>", "<r@customer.test>")}
    reply = next(line for line in lines if line["key"] == "acme" and line["value"]["message_id"] == "<r@customer.test>")
    assert reply["topic"] == "mail.correlated" and reply["value"]["parent_message_id"] == "<q@customer.test>"
    assert reply["value"]["event_time"] == "2026-03-02T09:30:00+00:00"
    assert reply["value"]["evidence"] == acme[1]["evidence"]  # the record's field as it is: a JSON string
    datetime.fromisoformat(reply["timestamp"])
    # acme's records share a partition: the reply comes three offsets after the question.
    question = next(line for line in lines if line["key"] == "acme" and line["value"]["message_id"] == "<q@customer.test>")
    assert (reply["partition"], reply["offset"]) == (question["partition"], question["offset"] + 3)
    bad = [line for line in err.splitlines() if "cannot decode" in line]
    assert [f"partition {question['partition']} offset {question['offset'] + n}:" in line
            for n, line in zip((1, 2), bad)] == [True, True], err
    assert "bad_avro" in bad[0] and "not_confluent_wire_format" in bad[1]
    assert "tail: 4 records of " in err and "2 undecodable" in err

    code, out, err = cli(["tail", "mail.correlated", "--tenant", "globex"], capsys)
    assert code == 0 and {json.loads(line)["key"] for line in out.splitlines()} == {"globex"}
    assert len(out.splitlines()) == 2 and "cannot decode" not in err  # acme's bad records are not decoded
    code, out, err = cli(["tail", "mail.correlated", "--tenant", "acme", "--limit", "1"], capsys)
    assert code == 0 and [json.loads(line)["value"]["message_id"] for line in out.splitlines()] == ["<q@customer.test>"]

    code, out, err = cli(["tail", "mail.untracked"], capsys)  # an empty topic: nothing, at once
    assert (code, out) == (0, "") and "tail: 0 records" in err


def test_tail_reads_a_12_mb_mail_claim_checked_by_ingest_or_inline_where_the_cluster_takes_it(sandbox, cli, capsys):
    big = b"Message-ID: <big@customer.test>\r\nSubject: scan\r\n\r\n" + bytes(range(256)) * (BIG_MAIL_BYTES // 256)
    # The project's way: ingest keeps mail over mail.inline_max_bytes in the blob store (claim check).
    settings = sandbox.settings()
    report = ingest([("big.eml", big)], settings, sandbox.codec, sandbox.bootstrap, tenant="acme")
    assert report.delivered == 1 and not report.errors
    # A cluster configured for big records (kafka.producer_options, INFRA.md §8): the mail inline.
    roomy = settings.kafka.model_copy(update={"producer_options": {"message.max.bytes": 60_000_000}})
    producer = RecordProducer(roomy, sandbox.bootstrap)
    inline = mail_raw_record(tenant="acme", mailbox="support", direction="in", source="big.eml", raw=big)
    value = sandbox.codec.encode(MAIL_RAW, inline)
    assert len(value) > BIG_MAIL_BYTES
    producer.produce(MAIL_RAW, b"acme", value)
    assert not producer.finish(60).errors

    code, out, err = cli(["tail", "mail.raw"], capsys)
    assert code == 0, err
    claim_checked, whole = [json.loads(line)["value"] for line in out.splitlines()]
    assert claim_checked["raw"] == "" and claim_checked["raw_blob"]["size"] == len(big)
    assert whole["raw_blob"] is None and whole["raw"].encode("latin-1") == big  # byte-exact
    code, out, err = cli(["tail", "mail.raw", "--bytes", "base64", "--limit", "2"], capsys)
    import base64
    assert base64.b64decode(json.loads(out.splitlines()[1])["value"]["raw"]) == big


def test_tail_from_the_end_follows_new_records_until_ctrl_c(sandbox, capsys):
    settings = sandbox.settings()
    old, new = correlated_records(settings, "acme"), correlated_records(settings, "acme", generation=1)
    produce(sandbox, settings, MAIL_CORRELATED, [(b"acme", sandbox.codec.encode(MAIL_CORRELATED, r)) for r in old])
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    env.update(THREADLINE_KAFKA_BOOTSTRAP=sandbox.bootstrap, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--settings", str(sandbox.settings_file()),
                                "tail", "mail.correlated", "--from-end"], env=env, cwd=sandbox.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting for new ones" in process.stderr.readline()  # at the end of every partition
        produce(sandbox, settings, MAIL_CORRELATED, [(b"acme", sandbox.codec.encode(MAIL_CORRELATED, r)) for r in new])
        lines = [json.loads(process.stdout.readline()) for _ in new]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert [line["value"]["generation"] for line in lines] == [1, 1]  # only what came after it started
    assert out == "" and process.returncode == 0 and "tail: 2 records of" in err


def untracked_records(settings, tenant: str) -> list[dict]:
    """The mail.untracked record of a mail between our own people (reason internal)."""
    from pipeline.settings import UntrackedSettings

    correlator = Correlator(settings.correlation, tenant=tenant, untracked=UntrackedSettings(own_domains=("support.test",)))
    raw = (b"Message-ID: <memo@support.test>\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\nFrom: bo@support.test\r\n"
           b"To: desk@support.test\r\nSubject: lunch\r\n\r\nNoon?\r\n")
    correlation = correlator.correlate(parse_mail(raw, tenant=tenant))
    assert correlation.untracked_reason == "internal"
    return [untracked_record(correlation, "support")]


def answer_records(settings, tenant: str) -> tuple[dict, dict]:
    """The mail.correlated and mail.responses records of our desk's answer to the question, 45
    minutes after it."""
    correlator = Correlator(settings.correlation, tenant=tenant)
    correlator.correlate(parse_mail(_mail("<q@customer.test>", "Invoice 7 is wrong", 0), tenant=tenant))
    raw = (b"Message-ID: <a@support.test>\r\nDate: Mon, 02 Mar 2026 09:45:00 +0000\r\nFrom: desk@support.test\r\n"
           b"To: ann@customer.test\r\nSubject: Re: Invoice 7 is wrong\r\nIn-Reply-To: <q@customer.test>\r\n\r\nFixed.\r\n")
    answer = correlator.correlate(parse_mail(raw, tenant=tenant, direction="out"))
    assert answer.response is not None
    return (correlated_record(answer, "support", SourcePosition(MAIL_RAW, 0, 9)), response_record(answer, "support"))


def test_explain_finds_a_pipeline_mail_on_the_topics_and_in_clickhouse(sandbox, cli, capsys, clickhouse_factory,
                                                                       chdb_path, monkeypatch):
    settings = sandbox.settings()
    outputs = [(MAIL_CORRELATED, "acme", r) for r in correlated_records(settings, "acme")]
    outputs += [(MAIL_CORRELATED, "acme", r) for r in correlated_records(settings, "acme", generation=1)]
    outputs += [(MAIL_CORRELATED, "globex", r) for r in correlated_records(settings, "globex")]
    outputs += [(MAIL_UNTRACKED, "acme", r) for r in untracked_records(settings, "acme")]
    outputs += list(zip((MAIL_CORRELATED, MAIL_RESPONSES), ("acme", "acme"), answer_records(settings, "acme")))
    for topic in (MAIL_CORRELATED, MAIL_UNTRACKED, MAIL_RESPONSES):
        produce(sandbox, settings, topic, [(tenant.encode(), sandbox.codec.encode(topic, record))
                                           for where, tenant, record in outputs if where == topic])
    # Not a record, though it holds the Message-ID's bytes: skipped and counted, never a crash.
    produce(sandbox, settings, MAIL_CORRELATED, [(b"acme", b"\x00\x00\x00\x00\x07 <r@customer.test> \xff")])

    code, out, err = cli(["explain", "r@customer.test", "--source", "topic"], capsys)
    assert code == 0, err
    acme, globex = out.split("\n\n")
    assert "is in 2 tenants (acme, globex)" in err and "1 records holding <r@customer.test> could not be decoded" in err
    assert "linked to:    <q@customer.test>  by InReplyTo (3)" in acme and "generation 1" in acme
    assert "  tenant:       acme" in acme and "  generations:  also 0 (--generation N explains another)" in acme
    assert f"found in:     the topics mail.correlated, mail.untracked and mail.responses on {sandbox.bootstrap}" in acme
    assert "  tenant:       globex" in globex and "generation 0" in globex and "also" not in globex
    code, out, err = cli(["explain", "<r@customer.test>", "--source", "TOPIC", "--tenant", "acme", "--generation", "0"],
                         capsys)
    assert code == 0 and "generation 0" in out and "also 1" in out and "globex" not in out + err
    code, out, err = cli(["explain", "memo@support.test", "--source", "topic"], capsys)
    assert code == 0 and "not tracked:  every participant is in one of our own domains (internal mail)" in out
    code, out, err = cli(["explain", "a@support.test", "--source", "topic"], capsys)
    assert code == 0 and "  answers:      <q@customer.test> after 0.8 h" in out, out
    code, out, err = cli(["explain", "r@customer.test", "--source", "topic", "--tenant", "initech"], capsys)
    assert code == 2 and "<r@customer.test> of tenant initech was not found: not in the topics" in err

    # The same outputs in ClickHouse, through the sink (the hostile record becomes a dead letter).
    from pipeline.sinks.clickhouse import ClickHouseSink, sink_until

    store = clickhouse_factory()
    sink = ClickHouseSink(settings.kafka, sandbox.bootstrap, store, sandbox.codec, app_id=sandbox.app_id)
    rows = lambda table: store.query(f"SELECT count() FROM {{db}}.{table} FINAL").result_rows[0][0]  # noqa: E731
    sink_until(sink, lambda: (rows("mail_correlated"), rows("mail_untracked"), rows("mail_responses")) == (7, 1, 1),
               timeout_s=60)
    sink.close()
    # The command opens the store of a data folder: the test's chDB, in the test's database.
    monkeypatch.setenv("THREADLINE_WORKER_DATA_DIR", str(chdb_path.parent))
    monkeypatch.setenv("THREADLINE_CLICKHOUSE_DATABASE", store.database)
    code, out, err = cli(["explain", "r@customer.test", "--tenant", "acme"], capsys)
    assert code == 0, err
    assert "linked to:    <q@customer.test>  by InReplyTo (3)" in out and "generation 1" in out
    assert (f"found in:     ClickHouse chdb:{chdb_path}, tables mail_correlated, mail_untracked and mail_responses" in out
            and "also 0" in out), out
    code, out, err = cli(["explain", "memo@support.test", "--source", "clickhouse"], capsys)
    assert code == 0 and "not tracked:  every participant" in out and "found in:     ClickHouse" in out
    code, out, err = cli(["explain", "a@support.test"], capsys)
    assert code == 0 and "  answers:      <q@customer.test> after 0.8 h" in out and "found in:     ClickHouse" in out
    # Not in the store yet (the sink lags): the topics answer.
    late = correlated_records(settings, "initech")
    produce(sandbox, settings, MAIL_CORRELATED, [(b"initech", sandbox.codec.encode(MAIL_CORRELATED, late[0]))])
    code, out, err = cli(["explain", "q@customer.test", "--tenant", "initech"], capsys)
    assert code == 0 and "found in:     the topics" in out and "  tenant:       initech" in out


def test_ctrl_c_stops_a_follow_cleanly_while_the_broker_is_gone(tmp_path):
    """Its own broker, killed under a following tail: Ctrl-C then still ends it with the summary
    (a KeyboardInterrupt inside librdkafka's callbacks came out of poll as a SystemError)."""
    from pipeline.broker import EmbeddedBroker, create_topics
    from pipeline.settings import KafkaSettings

    with EmbeddedBroker.start(tmp_path / "broker.log") as broker:
        create_topics(KafkaSettings(), broker.bootstrap)
        env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
        env.update(THREADLINE_KAFKA_BOOTSTRAP=broker.bootstrap, THREADLINE_WORKER_DATA_DIR=str(tmp_path / "data"))
        process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tail", "mail.correlated", "--follow"],
                                   env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert "waiting for new ones" in process.stderr.readline()
            broker.process.kill()
            broker.process.wait(10)
            time.sleep(8)  # long enough to notice, and into librdkafka's reconnect attempts and their logs
            assert process.poll() is None
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0 and out == "", err
    assert "unreachable" in err  # it noticed, and went on waiting
    assert "Traceback" not in err and err.rstrip().endswith("tail: 0 records of mail.correlated")


def test_ctrl_c_ends_explain_in_one_line_while_the_broker_is_gone(tmp_path):
    """Its own broker, killed before `explain --source topic` reads it: Ctrl-C during the read (the
    wait for the broker, whose reconnects log many times a second) ends it at once with one line,
    exit 130, not at the read's 10 s timeout nor with a SystemError out of librdkafka's callbacks."""
    from pipeline.broker import EmbeddedBroker, create_topics
    from pipeline.settings import KafkaSettings

    with EmbeddedBroker.start(tmp_path / "broker.log") as broker:
        create_topics(KafkaSettings(), broker.bootstrap)
        broker.process.kill()
        broker.process.wait(10)
        env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
        env.update(THREADLINE_KAFKA_BOOTSTRAP=broker.bootstrap, THREADLINE_WORKER_DATA_DIR=str(tmp_path / "data"))
        process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "explain", "q@customer.test", "--source",
                                    "topic"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            assert "unreachable" in process.stderr.readline()  # it is waiting for the broker
            time.sleep(1)
            process.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            out, err = process.communicate(timeout=30)
            took = time.monotonic() - interrupted
        finally:
            process.kill()
    assert process.returncode == 130 and out == "", err
    assert err == "threadline: interrupted\n"  # the watch's line was read above
    assert took < 4, took  # the read's timeout is 10 s
