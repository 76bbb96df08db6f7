"""Big mail through the claim check, and records whose dead letter must stay small."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timezone

import pytest

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import DEADLETTER_EXCERPT_BYTES, MailRawCodec, MailTooLarge, mail_raw_record
from pipeline.settings import MailSettings, Settings
from pipeline.runtime.batch import RawItem
from pipeline.streams.processor import MailProcessor

CODEC = AvroCodec(EmbeddedRegistry())
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def message(message_id: str, *, subject: str = "Contract", in_reply_to: str | None = None, attachment: int = 0,
            extra_header: bytes = b"") -> bytes:
    head = [f"Message-ID: {message_id}", "Date: Mon, 02 Mar 2026 09:00:00 +0000", "From: customer@example.com",
            "To: agent@support.example", f"Subject: {subject}", "MIME-Version: 1.0"]
    if in_reply_to:
        head += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    if not attachment:
        return "\r\n".join(head).encode() + b"\r\n" + extra_header + b"\r\nPlease see the contract.\r\n"
    blob = base64.encodebytes(os.urandom(attachment)).replace(b"\n", b"\r\n")
    return ("\r\n".join(head) + '\r\nContent-Type: multipart/mixed; boundary="b"\r\n').encode() + extra_header + (
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nPlease see the contract.\r\n--b\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + blob + b"--b--\r\n")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(mail=MailSettings(blob_dir=tmp_path / "blobs", max_message_bytes=20 * 2**20))


def encode(mail_raw: MailRawCodec, raw: bytes, tenant: str) -> bytes:
    return mail_raw.encode(mail_raw_record(tenant=tenant, mailbox="support", direction="in", source="test", raw=raw,
                                           received_at=T0))


def test_big_mail_travels_by_digest_and_is_correlated_for_each_tenant(settings):
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, CODEC)
    big = message("<big@x>", attachment=3 * 2**20)
    reply = message("<reply@x>", subject="Re: Contract", in_reply_to="<big@x>")
    values = [encode(mail_raw, big, "acme"), encode(mail_raw, big, "beta"), encode(mail_raw, reply, "acme"),
              encode(mail_raw, reply, "beta")]
    assert all(len(v) < settings.mail.inline_max_bytes for v in values)
    record = CODEC.decode("mail.raw", values[0])
    assert record["raw"] == b"" and record["raw_blob"]["size"] == len(big)
    assert mail_raw.raw_of(record) == big

    stream = [RawItem(0 if i % 2 == 0 else 1, i, b"t", v) for i, v in enumerate(values)]
    result = MailProcessor(settings, CODEC, {}).process(stream)
    linked = [CODEC.decode("mail.correlated", o.value) for o in result.outputs if o.topic == "mail.correlated"]
    assert sorted((r["tenant"], r["message_id"], r["method_name"]) for r in linked) == [
        ("acme", "<big@x>", "None"), ("acme", "<reply@x>", "InReplyTo"),
        ("beta", "<big@x>", "None"), ("beta", "<reply@x>", "InReplyTo")]


def test_small_mail_stays_inline(settings):
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, CODEC)
    record = CODEC.decode("mail.raw", encode(mail_raw, message("<s@x>"), "acme"))
    assert record["raw_blob"] is None and record["raw"].startswith(b"Message-ID: <s@x>")
    assert not (settings.blob_dir / "sha256").exists()


def test_mail_over_the_maximum_is_refused_at_the_door(settings):
    with pytest.raises(MailTooLarge, match="max_message_bytes"):
        encode(MailRawCodec(settings.mail, settings.blob_dir, CODEC), b"x" * (settings.mail.max_message_bytes + 1),
               "acme")


@pytest.mark.parametrize("damage, reason", [("delete", "blob_missing"), ("truncate", "blob_corrupt")])
def test_a_lost_or_damaged_blob_is_a_dead_letter_and_the_batch_goes_on(settings, damage, reason):
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, CODEC)
    big = message("<big@x>", attachment=2**20)
    value = encode(mail_raw, big, "acme")
    path = mail_raw.blobs.path_of(CODEC.decode("mail.raw", value)["raw_blob"]["sha256"])
    path.unlink() if damage == "delete" else path.write_bytes(big[:1000])
    stream = [RawItem(0, 0, b"acme", value), RawItem(0, 1, b"acme", encode(mail_raw, message("<ok@x>"), "acme"))]
    result = MailProcessor(settings, CODEC, {}).process(stream)
    assert result.counts == {f"deadletter:{reason}": 1, "None": 1}


def test_the_dead_letter_of_a_record_near_the_limit_is_small_and_points_at_it(settings):
    """The issue's poison record: ~1 MB with a 270 KB folded header. Its dead letter used to be
    over the producer's limit, which crashed the worker and lost the mail behind it."""
    folded = b"X-Filler: " + b"\r\n ".join([b"a" * 70] * 3800) + b"\r\n"
    poison = message("<poison@x>", attachment=520_000, extra_header=folded)
    poison += b" " * (999_800 - len(poison))
    mail_raw = MailRawCodec(settings.mail, settings.blob_dir, CODEC)
    good = [encode(mail_raw, message(f"<good{i}@x>", subject=f"Order {i}"), "acme") for i in range(3)]
    stream = [RawItem(0, 0, b"acme", encode(mail_raw, poison, "acme"))] + [
        RawItem(0, 1 + i, b"acme", v) for i, v in enumerate(good)]
    result = MailProcessor(settings, CODEC, {}).process(stream)
    assert result.counts == {"deadletter:header_too_large": 1, "None": 3}
    (letter,) = [o for o in result.outputs if o.topic == "deadletter"]
    assert len(letter.value) < DEADLETTER_EXCERPT_BYTES + 4096
    record = CODEC.decode("deadletter", letter.value)
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == ("mail.raw", 0, 0)
    assert record["value_size"] == len(stream[0].value)


def test_a_big_value_of_garbage_gets_a_small_dead_letter(settings):
    garbage = b"\x00\x00\x00\x00\x08" + os.urandom(3 * 2**20)
    result = MailProcessor(settings, CODEC, {}).process([RawItem(1, 7, b"acme", garbage)])
    (letter,) = result.outputs
    record = CODEC.decode("deadletter", letter.value)
    assert len(record["value"]) == DEADLETTER_EXCERPT_BYTES and record["value_size"] == len(garbage)
