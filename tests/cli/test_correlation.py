"""pipeline/cli/correlation.py: `threadline correct` and `threadline correlate` as a user runs them
(for `correct` the broker is replaced by what the command hands to it; tests/integration/test_pipeline.py
runs it against a real one)."""

from __future__ import annotations

import json
import os

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.cli import correlation
from pipeline.cli.main import main
from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.topics import CORRECTIONS


@pytest.fixture
def produced(monkeypatch, tmp_path):
    """The records `correct` writes, encoded as for the broker and decoded back."""
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    codec, records = AvroCodec(EmbeddedRegistry()), []

    def produce_one(settings, topic, tenant, record):
        records.append((topic, tenant, codec.decode(topic, codec.encode(topic, record))))

    monkeypatch.setattr(correlation, "produce_one", produce_one)
    return records


def test_link_writes_one_correction_and_prints_its_event_id(produced, capsys):
    assert main(["correct", "link", "reply@customer.example", "<question@ours.example>", "--tenant", "acme",
                 "--author", "eve@ours.example", "--reason", "the customer answered in a new mail"]) == 0
    [(topic, tenant, record)] = produced
    assert (topic, tenant) == (CORRECTIONS, "acme")
    assert {k: record[k] for k in ("tenant", "action", "message_id", "other_message_id", "author", "reason")} == {
        "tenant": "acme", "action": "LINK", "message_id": "<reply@customer.example>",
        "other_message_id": "<question@ours.example>", "author": "eve@ours.example",
        "reason": "the customer answered in a new mail"}
    assert capsys.readouterr().out.strip() == record["event_id"]


def test_merge_a_b_corrects_b_and_unlink_defaults_to_the_os_user(produced, monkeypatch):
    monkeypatch.setattr(correlation.getpass, "getuser", lambda: "eve")
    assert main(["correct", "merge", "<a@x>", "<b@x>"]) == 0
    assert main(["correct", "unlink", "<c@x>"]) == 0
    assert main(["correct", "split", "<d@x>"]) == 0
    (_, _, merge), (_, tenant, unlink), (_, _, split) = produced
    assert (merge["action"], merge["message_id"], merge["other_message_id"]) == ("MERGE", "<b@x>", "<a@x>")
    assert (unlink["action"], unlink["other_message_id"], unlink["author"], tenant) == ("UNLINK", None, "eve", "default")
    assert len({merge["event_id"], unlink["event_id"], split["event_id"]}) == 3


def test_a_correction_that_means_nothing_is_one_line_and_nothing_is_written(produced, capsys):
    assert main(["correct", "link", "<a@x>", "<a@x>"]) == 2
    assert capsys.readouterr().err == "threadline: LINK names <a@x> twice\n" and produced == []


@pytest.mark.parametrize("argv, message", [
    (["correct", "unlink", "<a@x>", "--tenant", "acme\x1fother"], "is not a tenant"),
    (["correct", "unlink", "<a@x>", "--tenant", " "], "is not a tenant"),
    (["correct", "unlink", "two words"], "is not a Message-ID"),
    (["correct", "link", "<a@x>"], "required: PARENT"),
])
def test_an_argument_of_the_wrong_shape_is_refused_before_anything_is_written(produced, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err and produced == []


def test_a_broker_that_cannot_be_reached_is_a_clear_error_not_a_traceback(monkeypatch, tmp_path, capsys):
    import pipeline.broker

    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")

    def unreachable(*args, **kwargs):
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure"))

    monkeypatch.setattr(pipeline.broker, "create_topics", unreachable)
    assert main(["correct", "unlink", "<a@x>", "--author", "eve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("threadline: cannot reach the broker at 127.0.0.1:1") and "Traceback" not in err
    monkeypatch.delenv("THREADLINE_KAFKA_BOOTSTRAP")
    assert main(["correct", "unlink", "<a@x>", "--author", "eve"]) == 2
    assert "no broker configured" in capsys.readouterr().err


def test_correlate_writes_the_automatic_mail_label_per_tenant(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    mails = [
        ("From: Dana <dana@customer.example>", "Subject: Printer broken", "Message-ID: <req@customer.example>"),
        ("From: Desk <support@desk.example>", "Subject: Request received: Printer broken", "Auto-Submitted: auto-replied",
         "Message-ID: <ack@desk.example>", "In-Reply-To: <req@customer.example>"),
        ("From: Dana <dana@customer.example>", "Subject: Automatic reply: Printer broken",
         "Message-ID: <away@customer.example>", "In-Reply-To: <ack@desk.example>"),
    ]
    mbox = tmp_path / "desk.mbox"
    mbox.write_bytes(b"".join(
        b"From threadline Mon Mar  2 09:00:00 2026\n" + "\n".join(
            (*fields, "To: support@desk.example", f"Date: Mon, 02 Mar 2026 09:0{n}:00 +0000", "", "Hello.", "", "")).encode()
        for n, fields in enumerate(mails)))
    for tenant in ("acme", "globex"):
        out = tmp_path / f"{tenant}.jsonl"
        assert main(["correlate", str(mbox), "--tenant", tenant, "--out", str(out), "--no-progress"]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(line["tenant"], line["message_id"], line["automatic"]) for line in lines] == [
            (tenant, "<req@customer.example>", ""), (tenant, "<ack@desk.example>", "auto_reply"),
            (tenant, "<away@customer.example>", "auto_reply")]


def test_correlate_holds_its_index_with_the_collector_thresholds_of_the_settings(tmp_path, monkeypatch):
    import gc

    mbox = tmp_path / "one.mbox"
    mbox.write_bytes(b"From threadline Mon Mar  2 09:00:00 2026\nMessage-ID: <a@customer.example>\n"
                     b"From: a@customer.example\nSubject: hello\n\nHello.\n")
    monkeypatch.setenv("THREADLINE_WORKER_GC_THRESHOLDS", "[23456, 8, 4]")
    before = gc.get_threshold()
    try:
        assert main(["correlate", str(mbox), "--out", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
        assert gc.get_threshold() == (23456, 8, 4)
    finally:
        gc.set_threshold(*before)
