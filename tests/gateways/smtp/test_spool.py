"""The relay's durable files (pipeline/gateways/smtp/spool.py): the queue and the token counters."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.gateways.smtp.policy import RelayError
from pipeline.gateways.smtp.spool import QueuedMail, RelayQueue, load_counter, save_counter
from pipeline.mail.parse import parse_mail

from relay_helpers import mail, prepare_outbound, settings  # tests/gateways/smtp/relay_helpers.py


def test_token_counters_persist(tmp_path):
    on = settings(subject_tokens=True)
    path = tmp_path / "counters.json"
    counter = load_counter(path, on.correlation.tracking_token)
    prepare_outbound(mail(), on, counter)
    prepare_outbound(mail(), on, counter)
    save_counter(path, counter)
    again = load_counter(path, on.correlation.tracking_token)
    assert parse_mail(prepare_outbound(mail(), on, again)).subject.endswith("CRM:0000003")
    path.write_text("not json")
    with pytest.raises(RelayError, match="counter"):
        load_counter(path, on.correlation.tracking_token)


def test_queue_files_are_durable_exclusive_and_rewritable(tmp_path):
    queue = RelayQueue(tmp_path / "q")
    queue.open()
    try:
        (queue.directory / ".x.msg.tmp").write_bytes(b"half")
        name = queue.new_name()
        queue.put(QueuedMail(name, "ann@acme.test", ("bob@customer.test", "eve@other.test"), ("BODY=8BITMIME",),
                             b"data\r\n", 1.5, "<q1@acme.test>"))
        assert queue.pending() == [name]
        item = queue.load(name)
        assert (item.mail_from, item.rcpt_tos, item.data, item.message_id) == (
            "ann@acme.test", ("bob@customer.test", "eve@other.test"), b"data\r\n", "<q1@acme.test>")
        queue.keep_for(item, ["eve@other.test"])
        assert queue.load(name) == dataclasses.replace(item, rcpt_tos=("eve@other.test",))  # the envelope round-trips
        queue.fail(item, {"bob@customer.test": "550 no such user"})
        assert (queue.failed_dir / name).is_file() and queue.pending() == [name]
        queue.remove(name)
        assert queue.pending() == []
        assert queue.claim("a") and not queue.claim("a")
        queue.release("a")
        assert queue.claim("a")
        with pytest.raises(RelayError, match="another relay"):
            RelayQueue(tmp_path / "q").open()
    finally:
        queue.close()
    RelayQueue(tmp_path / "q").open()  # the lock went with the first queue
