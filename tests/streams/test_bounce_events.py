"""A bounce of a campaign mail becomes a tracking.events bounce counted for that campaign."""

from datetime import datetime, timezone

from pipeline.contracts.avro import AvroCodec, EmbeddedRegistry
from pipeline.contracts.records import mail_raw_record
from pipeline.settings import Settings
from pipeline.runtime.batch import RawItem
from pipeline.streams.processor import MailProcessor
from pipeline.tracking.tokens import Keyring, TokenPayload, sign_token, unsubscribe_url

CODEC = AvroCodec(EmbeddedRegistry())
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _item(offset: int, raw: bytes, direction: str) -> RawItem:
    record = mail_raw_record(tenant="acme", mailbox="m", direction=direction, source="t", raw=raw, received_at=NOW)
    return RawItem(0, offset, b"acme", CODEC.encode("mail.raw", record))


def _campaign_mail(settings: Settings, message_id: str, recipient: str, campaign: str | None) -> bytes:
    headers = f"Message-ID: {message_id}\r\nFrom: news@acme.test\r\nTo: {recipient}\r\nSubject: Offer\r\n" \
              "Date: Mon, 02 Mar 2026 09:00:00 +0000\r\n"
    if campaign:
        token = sign_token(TokenPayload(kind="unsubscribe", tenant="acme", message_id=message_id, recipient=recipient,
                                        campaign_id=campaign, issued_at=int(NOW.timestamp())),
                           Keyring.from_settings(settings.tracking))
        headers += f"List-Unsubscribe: <{unsubscribe_url(settings.tracking.base_url, token)}>\r\n"
    return (headers + "\r\nHello\r\n").encode()


def _dsn(original_id: str, recipient: str, status: str) -> bytes:
    boundary = "b0undary"
    return (f"Message-ID: <dsn-{status}@mx.customer.test>\r\nFrom: MAILER-DAEMON@mx.customer.test\r\n"
            f"To: news@acme.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Date: Mon, 02 Mar 2026 09:01:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.test\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\n"
            f"From: news@acme.test\r\nTo: {recipient}\r\n\r\n--{boundary}--\r\n").encode()


def test_bounces_of_campaign_mail_count_for_the_campaign():
    settings = Settings()
    processor = MailProcessor(settings, CODEC, {})
    result = processor.process([
        _item(0, _campaign_mail(settings, "<c1@acme.test>", "gone@customer.test", "spring"), "out"),
        _item(1, _campaign_mail(settings, "<n1@acme.test>", "full@customer.test", None), "out"),
        _item(2, _dsn("<c1@acme.test>", "gone@customer.test", "5.1.1"), "in"),
        _item(3, _dsn("<n1@acme.test>", "full@customer.test", "4.2.2"), "in"),
    ])
    bounces = [CODEC.decode("tracking.events", o.value) for o in result.outputs if o.topic == "tracking.events"]
    assert [(b["message_id"], b["recipient"], b["campaign_id"], b["bounce_kind"]) for b in bounces] == [
        ("<c1@acme.test>", "gone@customer.test", "spring", "hard"),
        ("<n1@acme.test>", "full@customer.test", None, "soft")]
    assert all(b["kind"] == "bounce" and b["bounce_reason"] for b in bounces)


def test_a_forged_unsubscribe_token_names_no_campaign():
    settings = Settings()
    raw = _campaign_mail(settings, "<c2@acme.test>", "x@customer.test", "spring").replace(b"/u/", b"/u/AAAA")
    result = MailProcessor(settings, CODEC, {}).process([
        _item(0, raw, "out"), _item(1, _dsn("<c2@acme.test>", "x@customer.test", "5.1.1"), "in")])
    (bounce,) = [CODEC.decode("tracking.events", o.value) for o in result.outputs if o.topic == "tracking.events"]
    assert bounce["campaign_id"] is None
