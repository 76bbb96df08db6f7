"""Bounce parsing: RFC 3464 DSNs, mailer-daemon text bounces, hard vs soft, never an exception."""

from __future__ import annotations

import random
from email import message_from_string
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.mail.bounce import Bounce, parse_bounce
from pipeline.mail.parse import parse_mail

ORIGINAL_ID = "<campaign.4f2a9c@news.shop.example>"


def original(message_id: str = ORIGINAL_ID, to: str = "nobody@customer.example") -> MIMEText:
    mail = MIMEText("Our spring offer is here.\n")
    mail["From"] = "News <news@shop.example>"
    mail["To"] = to
    mail["Subject"] = "Spring offer"
    mail["Date"] = "Tue, 05 Mar 2024 10:15:00 +0000"
    mail["Message-ID"] = message_id
    return mail


def delivery_status(*recipients: dict[str, str], mta: str = "mx.shop.example") -> MIMEBase:
    blocks = [f"Reporting-MTA: dns; {mta}\nArrival-Date: Tue, 05 Mar 2024 10:15:01 +0000"]
    for fields in recipients:
        blocks.append("\n".join(f"{name}: {value}" for name, value in fields.items()))
    part = MIMEBase("message", "delivery-status")
    part.set_payload([message_from_string(block + "\n") for block in blocks])
    return part


def dsn(*recipients: dict[str, str], attach: str = "message", text: str = "Your message could not be delivered.\n",
        subject: str = "Undelivered Mail Returned to Sender", message_id: str = "<dsn.1@mx.shop.example>") -> bytes:
    report = MIMEMultipart("report", **{"report-type": "delivery-status"})
    report["From"] = "MAILER-DAEMON@mx.shop.example (Mail Delivery System)"
    report["To"] = "news@shop.example"
    report["Subject"] = subject
    report["Date"] = "Tue, 05 Mar 2024 10:15:02 +0000"
    report["Message-ID"] = message_id
    report["Auto-Submitted"] = "auto-replied"
    report.attach(MIMEText(text))
    report.attach(delivery_status(*recipients))
    if attach == "message":
        report.attach(MIMEMessage(original()))
    elif attach == "headers":
        headers = "".join(f"{name}: {value}\n" for name, value in original().items())
        report.attach(MIMEText(headers, "rfc822-headers"))
    return report.as_bytes()


def test_hard_dsn_5_1_1_with_the_original_attached():
    raw = dsn({"Final-Recipient": "rfc822; Nobody@Customer.example", "Original-Recipient": "rfc822;alias@customer.example",
               "Action": "failed", "Status": "5.1.1",
               "Diagnostic-Code": "smtp; 550 5.1.1 <nobody@customer.example>: Recipient address rejected: User unknown"})
    bounce = parse_bounce(raw)
    assert isinstance(bounce, Bounce)
    assert (bounce.kind, bounce.reason, bounce.status, bounce.dsn) == ("hard", "user_unknown", "5.1.1", True)
    assert (bounce.original_message_id, bounce.original_id_source) == (ORIGINAL_ID, "message/rfc822")
    assert bounce.message_id == "<dsn.1@mx.shop.example>"
    assert bounce.reporting_mta == "mx.shop.example"
    (recipient,) = bounce.recipients
    assert recipient.address == "nobody@customer.example"
    assert recipient.original_recipient == "alias@customer.example"
    assert (recipient.kind, recipient.action, recipient.status) == ("hard", "failed", "5.1.1")
    assert "Recipient address rejected" in recipient.diagnostic
    assert parse_mail(raw).is_bounce  # the mail parser agrees it is a bounce


def test_soft_dsn_4_2_2_delayed_with_only_the_headers_attached():
    raw = dsn({"Final-Recipient": "rfc822; full@customer.example", "Action": "delayed", "Status": "4.2.2",
               "Diagnostic-Code": "smtp; 452 4.2.2 Mailbox full", "Will-Retry-Until": "Fri, 8 Mar 2024 10:15:01 +0000"},
              attach="headers", subject="Delayed Mail (still being retried)")
    bounce = parse_bounce(raw)
    assert (bounce.kind, bounce.reason, bounce.status) == ("soft", "mailbox_full", "4.2.2")
    assert (bounce.original_message_id, bounce.original_id_source) == (ORIGINAL_ID, "text/rfc822-headers")
    assert [(r.address, r.action) for r in bounce.recipients] == [("full@customer.example", "delayed")]


def test_mixed_dsn_is_hard_and_lists_every_failed_recipient_but_not_the_delivered_one():
    raw = dsn({"Final-Recipient": "rfc822; ok@customer.example", "Action": "delivered", "Status": "2.0.0"},
              {"Final-Recipient": "rfc822; later@customer.example", "Action": "delayed", "Status": "4.4.1"},
              {"Final-Recipient": "rfc822; gone@customer.example", "Action": "failed", "Status": "5.2.1"})
    bounce = parse_bounce(raw)
    assert [(r.address, r.kind, r.reason) for r in bounce.recipients] == [
        ("later@customer.example", "soft", "no_answer"), ("gone@customer.example", "hard", "mailbox_disabled")]
    assert (bounce.kind, bounce.reason, bounce.status) == ("hard", "mailbox_disabled", "5.2.1")


def test_status_taken_from_the_diagnostic_code_when_the_status_field_is_missing():
    raw = dsn({"Final-Recipient": "rfc822; x@customer.example", "Action": "failed",
               "Diagnostic-Code": "smtp; 550 5.7.1 Message rejected as spam (from 192.168.4.2)"})
    (recipient,) = parse_bounce(raw).recipients
    assert (recipient.status, recipient.kind, recipient.reason) == ("5.7.1", "hard", "rejected")


def test_positive_dsn_is_no_bounce():
    raw = dsn({"Final-Recipient": "rfc822; ok@customer.example", "Action": "delivered", "Status": "2.0.0"},
              subject="Successful Mail Delivery Report")
    assert parse_bounce(raw) is None


POSTFIX_TEXT = b"""\
From: MAILER-DAEMON@mx.shop.example (Mail Delivery System)
To: news@shop.example
Subject: Undelivered Mail Returned to Sender
Message-ID: <20240305101502.ABC@mx.shop.example>
Date: Tue, 05 Mar 2024 10:15:02 +0000

This is the mail system at host mx.shop.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<nobody@customer.example>: host mx.customer.example[203.0.113.7] said: 550
    Requested action not taken: mailbox unavailable (in reply to RCPT TO
    command)

------ This is a copy of the message, including all the headers. ------

From: News <news@shop.example>
To: nobody@customer.example
Subject: Spring offer
Message-ID: <campaign.4f2a9c@news.shop.example>

Our spring offer is here.
"""


def test_mailer_daemon_text_bounce_without_dsn():
    bounce = parse_bounce(POSTFIX_TEXT)
    assert bounce is not None and not bounce.dsn
    assert [r.address for r in bounce.recipients] == ["nobody@customer.example"]
    assert (bounce.kind, bounce.status, bounce.reason) == ("hard", "5.0.0", "other")
    assert "mailbox unavailable" in bounce.recipients[0].diagnostic
    assert (bounce.original_message_id, bounce.original_id_source) == (ORIGINAL_ID, "text")


def test_qmail_failure_notice_with_status_in_the_text():
    raw = (b"From: MAILER-DAEMON@mail.customer.example\nTo: news@shop.example\nSubject: failure notice\n\n"
           b"Hi. This is the qmail-send program at mail.customer.example.\n"
           b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
           b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
           b"<nobody@customer.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
           b"--- Below this line is a copy of the message.\n\nMessage-ID: <campaign.4f2a9c@news.shop.example>\n"
           b"To: nobody@customer.example\n\nhello\n")
    bounce = parse_bounce(raw)
    assert [(r.address, r.status, r.reason, r.kind) for r in bounce.recipients] == [
        ("nobody@customer.example", "5.1.1", "user_unknown", "hard")]
    assert bounce.original_message_id == ORIGINAL_ID


def test_exim_bounce_names_recipients_in_x_failed_recipients():
    raw = (b"From: Mail Delivery System <Mailer-Daemon@mx.customer.example>\nTo: news@shop.example\n"
           b"Subject: Mail delivery failed: returning message to sender\nX-Failed-Recipients: a@customer.example\n"
           b"Auto-Submitted: auto-replied\n\n"
           b"This message was created automatically by mail delivery software.\n\n"
           b"A message that you sent could not be delivered to one or more of its\n"
           b"recipients. This is a temporary error. The following address(es) deferred:\n\n"
           b"  a@customer.example\n    SMTP error from remote mail server after RCPT TO:<a@customer.example>:\n"
           b"    452 4.2.2 The email account that you tried to reach is over quota\n\n"
           b"------ This is a copy of the message, including all the headers. ------\n\n"
           b"Message-Id: <x1@shop.example>\nTo: a@customer.example, b@customer.example\n\nhi\n")
    bounce = parse_bounce(raw)
    assert [(r.address, r.status, r.kind, r.reason) for r in bounce.recipients] == [
        ("a@customer.example", "4.2.2", "soft", "mailbox_full")]
    assert bounce.kind == "soft"
    assert bounce.original_message_id == "<x1@shop.example>"


def test_synthetic_campaign_bounce_from_synth_traffic():
    from pipeline.synth_traffic import _mail
    from datetime import datetime, timezone

    raw = _mail("<bounce.c1.7@mx.client7.example>", "MAILER-DAEMON@mx.client7.example", "news@shop.example",
                "Undelivered Mail Returned to Sender", datetime(2024, 3, 5, tzinfo=timezone.utc),
                "Delivery to r7@customer.example failed permanently.", in_reply_to="<c1.7@shop.example>")
    bounce = parse_bounce(raw)
    assert [(r.address, r.kind) for r in bounce.recipients] == [("r7@customer.example", "hard")]
    assert (bounce.original_message_id, bounce.original_id_source) == ("<c1.7@shop.example>", "in-reply-to")


def test_bounce_without_any_original_reference():
    raw = (b"From: postmaster@customer.example\nTo: news@shop.example\nSubject: Delivery failure\n\n"
           b"Your mail to someone@customer.example could not be delivered: 550 5.1.2 host unknown.\n")
    bounce = parse_bounce(raw)
    assert bounce.original_message_id is None and bounce.original_id_source is None
    assert [(r.address, r.status, r.reason) for r in bounce.recipients] == [
        ("someone@customer.example", "5.1.2", "bad_domain")]


def test_exchange_style_undeliverable_from_a_normal_address_with_empty_return_path():
    raw = (b"Return-Path: <>\nFrom: Microsoft Outlook <noreply-ndr@customer.example>\nTo: news@shop.example\n"
           b"Subject: Undeliverable: Spring offer\nIn-Reply-To: <campaign.4f2a9c@news.shop.example>\n\n"
           b"Delivery has failed to these recipients or groups:\n\nnobody@customer.example\n"
           b"The email address you entered couldn't be found.\n\nRemote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound'\n")
    bounce = parse_bounce(raw)
    assert [(r.address, r.kind) for r in bounce.recipients] == [("nobody@customer.example", "hard")]
    assert bounce.status == "5.1.10" and bounce.reason == "bad_domain"
    assert bounce.original_message_id == ORIGINAL_ID


@pytest.mark.parametrize("raw", [
    (b"From: ann@example.org\nTo: bob@example.org\nSubject: lunch?\nMessage-ID: <a@example.org>\n\n"
     b"Shall we meet at 12? My mail to carol@example.org could not be delivered, odd.\n"),
    (b"From: bob@example.org\nTo: news@shop.example\nSubject: Re: Undelivered Mail Returned to Sender\n"
     b"In-Reply-To: <x@y>\n\nWhy did my mail bounce? 550 5.1.1\n"),
    (b"From: ann@example.org\nTo: bob@example.org\nSubject: Out of office\nAuto-Submitted: auto-replied\n\n"
     b"I am away until Monday.\n"),
    (b"From: postmaster@example.org\nTo: all@example.org\nSubject: New mail server on Monday\n\n"
     b"Hello all, we move the mail server on Monday.\n"),
])
def test_normal_mail_is_no_bounce(raw):
    assert parse_bounce(raw) is None


def _broken_inputs() -> list[bytes]:
    valid = dsn({"Final-Recipient": "rfc822; nobody@customer.example", "Action": "failed", "Status": "5.1.1"})
    no_boundary = valid.replace(b'boundary="', b'xboundary="', 1)
    garbled = valid.replace(b"Content-Type: message/delivery-status",
                            b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64", 1)
    return [b"", b"\x00\xff" * 50, b"not a mail at all", valid[: len(valid) // 2], valid[:200], no_boundary, garbled,
            valid.replace(b"Final-Recipient: rfc822; nobody@customer.example", b"Final-Recipient: rfc822;"),
            b"Content-Type: multipart/report; report-type=delivery-status\n\n--\n--\n",
            b"From: MAILER-DAEMON@x\nSubject: failure notice\nContent-Type: text/plain; charset=no-such-charset\n"
            b"Content-Transfer-Encoding: base64\n\n!!!not base64!!!\n"]


@pytest.mark.parametrize("raw", _broken_inputs())
def test_broken_mime_never_raises(raw):
    bounce = parse_bounce(raw)
    assert bounce is None or isinstance(bounce, Bounce)


def test_truncated_dsn_is_still_a_bounce_without_original():
    valid = dsn({"Final-Recipient": "rfc822; nobody@customer.example", "Action": "failed", "Status": "5.1.1"},
                attach="none")
    cut = valid[: valid.index(b"Status: 5.1.1") + len(b"Status: 5.1.1")]
    bounce = parse_bounce(cut)
    assert bounce is not None and bounce.kind == "hard"
    assert [r.address for r in bounce.recipients] == ["nobody@customer.example"]
    assert bounce.original_message_id is None


def test_deliberately_mangled_dsns_never_raise():
    valid = dsn({"Final-Recipient": "rfc822; nobody@customer.example", "Action": "failed", "Status": "5.1.1",
                 "Diagnostic-Code": "smtp; 550 5.1.1 unknown"})
    rng = random.Random(11)
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 20)):
            position = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[position] = rng.randrange(256)
            elif choice < 0.7:
                del data[position: position + rng.randint(1, 40)]
            else:
                data[position:position] = rng.choice([b"\n", b"--", b";", b"=?", b"\x00", b"boundary=", b":"])
        result = parse_bounce(bytes(data))
        assert result is None or isinstance(result, Bounce)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw):
    result = parse_bounce(raw)
    assert result is None or isinstance(result, Bounce)


def test_dsn_blocks_given_as_parsed_messages_are_read_too():
    report = MIMEMultipart("report", **{"report-type": "delivery-status"})
    report["From"] = "MAILER-DAEMON@mx.shop.example"
    report["Subject"] = "Delivery Status Notification (Failure)"
    report.attach(MIMEText("failed\n"))
    status = MIMEBase("message", "delivery-status")
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.shop.example"
    per_recipient["Final-Recipient"] = "rfc822; nobody@customer.example"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = "5.1.1"
    status.set_payload([per_message, per_recipient])
    report.attach(status)
    bounce = parse_bounce(report.as_bytes())
    assert [r.address for r in bounce.recipients] == ["nobody@customer.example"] and bounce.kind == "hard"


def test_failed_dsn_with_an_unreadable_recipient_is_a_bounce_naming_nobody():
    raw = dsn({"Final-Recipient": "rfc822;", "Action": "failed", "Status": "5.1.1"})
    bounce = parse_bounce(raw)
    assert bounce is not None and bounce.dsn and bounce.recipients == ()
    assert bounce.original_message_id == ORIGINAL_ID
