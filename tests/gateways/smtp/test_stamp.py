"""Stamping and marking of outbound mail (pipeline/gateways/smtp/stamp.py): pure, byte for byte."""

from __future__ import annotations

import email
import email.policy
import re
import time

from pipeline.correlation.methods.xheader import parse_xref
from pipeline.correlation.tokens import TokenCounter
from pipeline.gateways.smtp.stamp import hop_count, outbound_copies, to_crlf
from pipeline.mail.parse import parse_mail
from pipeline.settings import RelaySettings, Settings
from pipeline.tracking.tokens import Keyring, verify_token

from relay_helpers import TRACKING, mail, prepare_outbound, sections, settings  # tests/gateways/smtp/relay_helpers.py

NOW = 1_772_442_000
PIXEL = re.compile(r'<img src="https://t\.example/track/o/([A-Za-z0-9_-]+)\.gif"')


def pixel_token(raw: bytes) -> str | None:
    """The open token of the pixel in the mail's HTML body (decoded), if any."""
    body = email.message_from_bytes(raw, policy=email.policy.default).get_body(("html",))
    found = PIXEL.search(body.get_content()) if body is not None else None
    return found.group(1) if found else None


def headers_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def test_message_id_is_added_only_when_absent_and_the_rest_is_kept_byte_for_byte():
    raw = mail()
    out = prepare_outbound(raw, settings(), None, now=NOW)
    assert out.count(b"Message-ID:") == 1 and b"Message-ID: <q1@acme.test>\r\n" in out
    assert out.startswith(raw.split(b"\r\n\r\n")[0])           # the client's header fields, untouched
    assert out.endswith(b"\r\n\r\n" + raw.split(b"\r\n\r\n", 1)[1])  # the body, untouched

    stamped = prepare_outbound(mail(message_id=None), settings(), None, now=NOW)
    found = re.findall(rb"Message-ID: <([0-9a-f-]{36})@threadline>\r\n", stamped)
    assert len(found) == 1
    # A Date is added when the client sent none; a second pass changes nothing more.
    assert b"Date: " in stamped
    assert prepare_outbound(stamped, settings(), None, now=NOW) == stamped

    custom = Settings(correlation={"instance_id": "acme prod"}, relay=RelaySettings())
    assert re.search(rb"Message-ID: <[0-9a-f-]{36}@acme-prod>", prepare_outbound(mail(message_id=None), custom, None))
    # A Message-ID with nothing usable in it is replaced (it could never be referenced).
    broken = prepare_outbound(mail(message_id="no id here"), settings(), None, now=NOW)
    assert b"no id here" not in broken and re.search(rb"Message-ID: <[0-9a-f-]{36}@threadline>", broken)


def test_reference_header_names_the_mail_itself_and_the_parser_reads_it():
    for message_id in ("<q1@acme.test>", None):
        out = prepare_outbound(mail(message_id=message_id), settings(), None, now=NOW)
        parsed = parse_mail(out, direction="out")
        fields = parse_xref(parsed.xref)
        assert fields == {"instance": "threadline", "ref": parsed.message_id}
        if message_id:
            assert parsed.message_id == message_id
    # A header the client set already is kept as it is.
    own = mail(extra="X-Threadline-Ref: instance=threadline; ref=<other@acme.test>")
    out = prepare_outbound(own, settings(), None, now=NOW)
    assert headers_of(out).count("X-Threadline-Ref") == 1
    assert parse_xref(parse_mail(out).xref)["ref"] == "<other@acme.test>"


def test_regarding_header_moves_into_the_reference_header():
    raw = mail(extra="X-Threadline-Regarding:  SUPP-11102003.2512242023 ")
    out = prepare_outbound(raw, settings(), None, now=NOW)
    assert "X-Threadline-Regarding" not in headers_of(out)
    assert parse_xref(parse_mail(out).xref) == {"instance": "threadline", "ref": "<q1@acme.test>",
                                                "regarding": "SUPP-11102003.2512242023"}
    # Folded over two lines, with the field separator in it: one clean record id.
    folded = prepare_outbound(mail(extra="X-Threadline-Regarding: LEAD-7;\r\n x"), settings(), None, now=NOW)
    assert parse_xref(parse_mail(folded).xref)["regarding"] == "LEAD-7 x"
    # Not ASCII: left out, and the client's header still does not leave.
    odd = prepare_outbound(mail(extra="X-Threadline-Regarding: =?utf-8?q?F=C3=A4lle?="), settings(), None, now=NOW)
    assert "regarding" not in parse_xref(parse_mail(odd).xref) and "Regarding" not in headers_of(odd)


def test_track_in_the_subject_opts_in_to_the_pixel_and_the_tag_is_removed():
    html = "<html><body><p>See <a href=\"https://shop.example/p\">the offer</a></p></body></html>\n"
    out = prepare_outbound(mail(subject="Spring offer #track", body=html, content_type="text/html"), settings(),
                           None, recipient="bob@customer.test", now=NOW)
    parsed = parse_mail(out, direction="out")
    assert parsed.subject == "Spring offer"
    token = pixel_token(out)
    assert token, out
    payload = verify_token(token, Keyring.from_settings(TRACKING))
    assert (payload.kind, payload.message_id, payload.recipient) == ("open", "<q1@acme.test>", "bob@customer.test")
    assert parse_xref(parsed.xref)["ref"] == "<q1@acme.test>"  # stamping survives the marking
    # Without an opt-in nothing is marked.
    plain = prepare_outbound(mail(body=html, content_type="text/html"), settings(), None, now=NOW)
    assert pixel_token(plain) is None and b"https://shop.example/p" in plain


def test_tracked_mail_to_several_recipients_leaves_as_one_marked_copy_each():
    html = "<html><body><p>Hi</p></body></html>\n"
    raw = mail(subject="News #track", body=html, content_type="text/html")
    copies = outbound_copies(raw, *sections(settings()), None, sender="ann@acme.test",
                             recipients=["bob@customer.test", "eve@other.test"], now=NOW)
    assert [rcpts for rcpts, _ in copies] == [("bob@customer.test",), ("eve@other.test",)]
    keyring = Keyring.from_settings(TRACKING)
    recipients = [verify_token(pixel_token(data), keyring).recipient for _, data in copies]
    assert recipients == ["bob@customer.test", "eve@other.test"]
    ids = {parse_mail(data).message_id for _, data in copies}
    assert len(ids) == 1  # one mail, one Message-ID
    untracked = outbound_copies(mail(), *sections(settings()), None, sender="ann@acme.test",
                                recipients=["bob@customer.test", "eve@other.test"], now=NOW)
    assert [rcpts for rcpts, _ in untracked] == [("bob@customer.test", "eve@other.test")]


def test_subject_tokens_when_enabled_per_sender_number_and_kept_on_replies():
    on = settings(subject_tokens=True, sender_user_numbers={"Ann@Acme.test": 7})
    counter = TokenCounter(on.correlation.tracking_token)
    first = prepare_outbound(mail(), on, counter, sender="ann@acme.test", now=NOW)
    assert parse_mail(first).subject == "Quote for 12 pumps CRM:0007001"
    second = prepare_outbound(mail(), on, counter, sender="ANN@acme.test", now=NOW)
    assert parse_mail(second).subject.endswith("CRM:0007002")
    # Unknown envelope sender: the From address decides; neither listed: user 0.
    by_from = prepare_outbound(mail(), on, counter, sender="bounces@acme.test", now=NOW)
    assert parse_mail(by_from).subject.endswith("CRM:0007003")
    other = prepare_outbound(mail().replace(b"ann@acme.test", b"carl@acme.test"), on, counter, sender=None, now=NOW)
    assert parse_mail(other).subject.endswith("CRM:0000001")
    # A reply carries its conversation's token: no new one, no counter used.
    reply = prepare_outbound(mail(subject="RE: Quote for 12 pumps CRM:0007001"), on, counter, sender="ann@acme.test")
    assert parse_mail(reply).subject == "RE: Quote for 12 pumps CRM:0007001"
    assert counter.state() == {7: 4, 0: 2}
    # An encoded subject gets the token after its encoded words; the decoded subject reads right.
    encoded = prepare_outbound(mail(subject="=?utf-8?q?Angebot_f=C3=BCr_Sie?="), on, counter, sender="ann@acme.test")
    assert parse_mail(encoded).subject == "Angebot für Sie CRM:0007004"
    # #track and a token together: the tag goes, the token stays.
    both = prepare_outbound(mail(subject="Offer #track"), on, counter, sender="ann@acme.test",
                            recipient="bob@customer.test", now=NOW)
    assert parse_mail(both).subject == "Offer CRM:0007005"
    # Off by default.
    assert parse_mail(prepare_outbound(mail(), settings(), TokenCounter(on.correlation.tracking_token))).subject \
        == "Quote for 12 pumps"


def test_line_ends_and_hops():
    assert to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    assert hop_count(b"Received: a\r\n b\r\nReceived: c\r\nSubject: x\r\n\r\nReceived: body\r\n") == 2


def test_a_header_folded_into_many_lines_is_handled_in_linear_time_and_kept_byte_for_byte():
    # 100,000 continuation lines (7 MB, well under mail.max_message_bytes): joining them one by
    # one took 45 s here, three times per mail in the relay, which handled no other mail meanwhile.
    folded = b"X-Filler: " + b"\r\n ".join(b"%070d" % n for n in range(100_000)) + b"\r\n"
    raw = mail(extra="Date: Tue, 05 Mar 2024 10:15:00 +0100\nX-Before: 1")
    raw = raw.replace(b"X-Before: 1\r\n", b"X-Before: 1\r\n" + folded)
    started = time.monotonic()
    stamped = prepare_outbound(raw, settings(), None)
    assert hop_count(raw) == 0
    assert time.monotonic() - started < 5
    header, body = stamped.split(b"\r\n\r\n", 1)
    assert folded in header + b"\r\n" and body == raw.split(b"\r\n\r\n", 1)[1]
    assert stamped.replace(re.search(rb"X-Threadline-Ref: [^\r]*\r\n", stamped).group(0), b"") == raw
