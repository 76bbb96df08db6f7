"""parse_mail: RFC 5322 bytes -> MailRecord; only MailParseError ever escapes, oddities go to ``defects``."""

from __future__ import annotations

import base64
import re
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.mail.content import MAX_SHINGLES, SHINGLE_WORDS, WINNOW_WINDOW, fingerprint_body
from pipeline.mail.parse import _MAX_PARTS, MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, html_to_text, parse_mail
from pipeline.mail.record import BODY_TEXT_LIMIT, MailParseError, MailRecord


def mail(*headers: str | bytes, body: str | bytes = "Hello.\r\n", message_id: str | None = "<m1@example.org>") -> bytes:
    """Raw CRLF mail from header lines; adds a Message-ID unless ``message_id`` is None."""
    lines = [h.encode("utf-8") if isinstance(h, str) else h for h in headers]
    if message_id is not None:
        lines.insert(0, f"Message-ID: {message_id}".encode())
    if not any(line.lower().startswith(b"date:") for line in lines):
        lines.append(b"Date: Tue, 05 Mar 2024 10:15:00 +0100")
    if not any(line.lower().startswith(b"from:") for line in lines):
        lines.append(b"From: Ann <ann@example.org>")
    raw_body = body.encode("utf-8") if isinstance(body, str) else body
    return b"\r\n".join(lines) + b"\r\n\r\n" + raw_body


# --------------------------------------------------------------------------- normal mail


NORMAL = (
    b"Message-ID: <CAB123.456@mail.example.com>\r\n"
    b"In-Reply-To: <parent@example.com>\r\n"
    b"References: <root@example.com> <middle@example.com>\r\n"
    b"\t<parent@example.com>\r\n"
    b"Subject: =?utf-8?q?Re=3A_Caf=C3=A9_opening?=\r\n"
    b"From: \"Smith, Ann\" <Ann.Smith@Example.COM>\r\n"
    b"To: Bob <BOB@x.org>, carol@Y.org, not-an-address\r\n"
    b"Cc: Dave <dave@z.org>\r\n"
    b"Cc: eve@z.org, DAVE@z.org\r\n"
    b"Date: Tue, 05 Mar 2024 10:15:00 +0100\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"We open the caf\xc3\xa9 on Monday morning at nine.\r\n"
)


def test_normal_mail_fields():
    received = datetime(2024, 3, 5, 9, 16, tzinfo=timezone.utc)
    record = parse_mail(NORMAL, direction="out", tenant="acme", mailbox="sales@acme.test", received_at=received)
    assert isinstance(record, MailRecord)
    assert record.message_id == "<CAB123.456@mail.example.com>"
    assert record.in_reply_to == ("<parent@example.com>",)
    assert record.references == ("<root@example.com>", "<middle@example.com>", "<parent@example.com>")
    assert record.subject == "Re: Café opening"
    assert record.from_addr == "ann.smith@example.com"
    assert record.from_name == "Smith, Ann"
    assert record.to == ("bob@x.org", "carol@y.org")  # lower-cased; the bare word without '@' is dropped
    assert record.cc == ("dave@z.org", "eve@z.org")  # both Cc headers, de-duplicated case-insensitively
    assert record.bcc == () and record.reply_to == ()
    assert record.date == datetime(2024, 3, 5, 9, 15, tzinfo=timezone.utc)
    assert record.date.utcoffset() == timedelta(0)
    assert record.direction == "out" and record.tenant == "acme" and record.mailbox == "sales@acme.test"
    assert record.received_at == received
    assert record.size == len(NORMAL)
    assert record.body_text.strip() == "We open the café on Monday morning at nine."
    assert record.own_shingles and record.own_shingles == fingerprint_body("We open the café on Monday morning at nine.")[0]
    assert record.defects == ()
    assert record.participants == ("ann.smith@example.com", "bob@x.org", "carol@y.org", "dave@z.org", "eve@z.org")
    assert record.event_time == record.date


def test_defaults_for_envelope_fields():
    record = parse_mail(NORMAL)
    assert (record.direction, record.tenant, record.mailbox, record.received_at) == ("in", "default", "", None)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ("=?utf-8?b?w5xiZXJzaWNodCBmw7xyIE3DpHJ6?=", "Übersicht für März"),
        ("=?ISO-8859-1?Q?Caf=E9_cr=E8me?=", "Café crème"),
        ("=?iso-8859-1?q?Caf=E9?= menu today", "Café menu today"),  # encoded + plain keeps the space
        ("Re: =?utf-8?q?Caf=C3=A9?= and more", "Re: Café and more"),
        ("=?utf-8?q?one?= =?utf-8?q?_two?=", "one two"),  # space between encoded words is dropped (RFC 2047)
        ("plain   subject\r\n\twith fold", "plain subject with fold"),
    ],
)
def test_subject_decoding(encoded, expected):
    record = parse_mail(mail(f"Subject: {encoded}"))
    assert record.subject == expected
    assert "bad_encoding" not in record.defects


def test_from_with_encoded_display_name():
    record = parse_mail(mail("From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Juergen.Mueller@Example.DE>"))
    assert record.from_name == "Jürgen Müller"
    assert record.from_addr == "juergen.mueller@example.de"


def test_bare_message_id_gets_brackets_and_own_id_is_not_a_reference():
    record = parse_mail(mail("In-Reply-To: <self@x> <p@x>", "References: <r@x> <self@x> <r@x> <p@x>",
                             message_id="self@x"))
    assert record.message_id == "<self@x>"
    assert record.in_reply_to == ("<p@x>",)
    assert record.references == ("<r@x>", "<p@x>")  # oldest first, duplicates and own id removed


def test_date_without_zone_is_utc_and_other_zones_convert():
    assert parse_mail(mail("Date: Tue, 05 Mar 2024 10:15:00 -0000")).date == datetime(2024, 3, 5, 10, 15, tzinfo=timezone.utc)
    assert parse_mail(mail("Date: Sun, 31 Dec 2023 23:30:00 -0800")).date == datetime(2024, 1, 1, 7, 30, tzinfo=timezone.utc)


def test_hints_xref_and_bounce():
    record = parse_mail(mail("Auto-Submitted: Auto-Replied", "Precedence: BULK", "X-Threadline-Ref:  TL-42 ",
                             "Thread-Topic: =?utf-8?q?Caf=C3=A9?="))
    assert (record.auto_submitted, record.precedence, record.xref, record.thread_topic) == ("auto-replied", "bulk", "TL-42", "Café")
    assert not record.is_bounce
    assert parse_mail(mail("X-Custom: abc"), xheader_name="X-Custom").xref == "abc"
    assert parse_mail(mail("From: MAILER-DAEMON@mx.example.org")).is_bounce
    dsn = mail("Content-Type: multipart/report; report-type=delivery-status; boundary=B",
               body="--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n--B--\r\n")
    record = parse_mail(dsn)
    assert record.is_bounce and record.body_text.strip() == "Delivery failed."


# --------------------------------------------------------------------------- fatal input


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b" \r\n\t\r\n", "empty"),
        (bytes(range(256)) * 4, "not_a_mail"),
        (b"\x00\x01\x02\xff\xfe binary \x89PNG\r\n\x1a\n", "not_a_mail"),
        (b"just some text\nwithout any header fields\n\nat all\n", "not_a_mail"),
        (b"X-Unknown: a field but none of the known ones\r\n\r\nbody\r\n", "not_a_mail"),
        (b"\r\n\r\nSubject: after the blank line\r\n", "not_a_mail"),
    ],
)
def test_unusable_input_raises_reason(raw, reason):
    with pytest.raises(MailParseError) as caught:
        parse_mail(raw)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError) and str(caught.value).startswith(reason + ":")


def test_header_block_over_limit():
    raw = b"Subject: big\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\nbody\r\n"
    with pytest.raises(MailParseError) as caught:
        parse_mail(raw)
    assert caught.value.reason == "header_too_large"
    # the same header is fine under a larger limit, and a smaller limit is honoured
    assert parse_mail(raw, max_header_bytes=2 * MAX_HEADER_BYTES).subject == "big"
    with pytest.raises(MailParseError, match="header_too_large"):
        parse_mail(mail("Subject: x" * 20), max_header_bytes=100)


def test_message_over_limit():
    raw = b"A" * (MAX_MESSAGE_BYTES + 1)  # over the limit is checked before anything else
    with pytest.raises(MailParseError) as caught:
        parse_mail(raw)
    assert caught.value.reason == "too_large"
    with pytest.raises(MailParseError) as caught:
        parse_mail(mail(), max_size=10)
    assert caught.value.reason == "too_large"


# --------------------------------------------------------------------------- odd but usable input


def test_missing_message_id_is_synthesized_and_stable():
    raw = mail("Subject: no id", message_id=None)
    first, second = parse_mail(raw), parse_mail(raw)
    assert re.fullmatch(r"<[0-9a-f]{32}@missing\.threadline>", first.message_id)
    assert first.message_id == second.message_id
    assert parse_mail(mail("Subject: other", message_id=None)).message_id != first.message_id
    assert "missing_message_id" in first.defects
    assert parse_mail(mail(message_id="no brackets and no at sign")).defects.count("missing_message_id") == 1


def test_duplicate_message_id_header_uses_the_first():
    record = parse_mail(mail("Message-ID: <second@x>", message_id="<first@x>"))
    assert record.message_id == "<first@x>"
    assert "duplicate_message_id_header" in record.defects


@pytest.mark.parametrize("value", ["not a date", "Tue, 45 Foo 2024 99:99:99 +0100", "Mon, 1 Jan 99999 00:00:00 +0000"])
def test_bad_date(value):
    record = parse_mail(mail(f"Date: {value}"))
    assert record.date is None
    assert "bad_date" in record.defects
    assert record.event_time is None
    received = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert parse_mail(mail(f"Date: {value}"), received_at=received).event_time == received


def test_missing_date():
    raw = b"Message-ID: <a@b>\r\nFrom: a@b.c\r\n\r\nbody\r\n"
    record = parse_mail(raw)
    assert record.date is None and "missing_date" in record.defects and "bad_date" not in record.defects


def test_multipart_without_boundary():
    record = parse_mail(mail("Content-Type: multipart/mixed", body="no parts here\r\n"))
    assert "broken_mime" in record.defects


def test_boundary_never_closed():
    body = "--B\r\nContent-Type: text/plain\r\n\r\nfirst part text that never ends\r\n"
    record = parse_mail(mail("Content-Type: multipart/mixed; boundary=B", body=body))
    assert "broken_mime" in record.defects
    assert "first part text that never ends" in record.body_text


@pytest.mark.parametrize("payload", ["!!!not*base64***\r\n", "aGVsbG8gd29ybGQ\r\n", "aGVs#bG8g$d29y\r\n"])
def test_invalid_base64_body(payload):
    record = parse_mail(mail("Content-Type: text/plain", "Content-Transfer-Encoding: base64", body=payload))
    assert "broken_mime" in record.defects
    assert isinstance(record.body_text, str)


def test_invalid_base64_in_a_subpart():
    body = ("--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "aGVsbG8gd29ybGQ\r\n--B--\r\n")
    record = parse_mail(mail("Content-Type: multipart/mixed; boundary=B", body=body))
    assert "broken_mime" in record.defects
    assert record.body_text.startswith("hello world")


def test_valid_base64_and_quoted_printable_have_no_defect():
    text = "A perfectly normal line of body text.\n"
    b64 = base64.b64encode(text.encode()).decode()
    record = parse_mail(mail("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", body=b64))
    assert record.body_text == text and record.defects == ()
    record = parse_mail(mail("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable",
                             body="Caf=C3=A9 ol=\r\né"))
    assert record.body_text == "Café olé" and record.defects == ()


def test_unknown_charset_in_header_and_body():
    raw = mail("Subject: =?x-unknown-charset?q?caf=E9?=", "Content-Type: text/plain; charset=x-unknown-charset",
               body=b"caf\xe9 au lait\r\n")
    record = parse_mail(raw)
    assert record.subject == "café"  # latin-1 fallback
    assert record.body_text.startswith("café au lait")
    assert "bad_encoding" in record.defects


@pytest.mark.parametrize("charset", ["idna", "punycode", "base64", "rot13", "utf-16"])
def test_odd_codec_names_as_body_charset(charset):
    record = parse_mail(mail(f"Content-Type: text/plain; charset={charset}", body=b"..\xff\xfe..\r\n"))
    assert isinstance(record.body_text, str)


def test_bad_utf8_body_is_replaced_not_fatal():
    record = parse_mail(mail("Content-Type: text/plain; charset=utf-8", body=b"ok \xff\xfe ok\r\n"))
    assert record.body_text.startswith("ok \ufffd\ufffd ok")


@pytest.mark.parametrize(
    "field",
    [b"Subject: caf\xe9 \xff", b"From: J\xf6rg <joerg@example.org>", b"To: \xff <x@y.org>",
     b"Message-ID: <id\xff@example.org>", b"In-Reply-To: <p\xe9@x>", b"References: <r\xe9@x> <s@x>",
     b"Date: Tue, 05 Mar 2024 10:15:00 +0100 \xff", b"Thread-Index: AQ\xff", b"Auto-Submitted: auto\xff",
     b"Precedence: bulk\xff", b"X-Threadline-Ref: TL-\xff"],
)
def test_8bit_bytes_in_headers(field):
    record = parse_mail(mail(field, message_id=None if field.startswith(b"Message-ID") else "<m1@example.org>"))
    assert "bad_encoding" in record.defects
    # nothing of the record may hold undecodable (surrogate-escaped) text
    for value in (record.message_id, record.subject, record.from_addr, record.from_name, *record.to,
                  *record.in_reply_to, *record.references, record.auto_submitted, record.precedence,
                  record.xref or "", record.body_text):
        value.encode("utf-8")


def test_8bit_bytes_in_mime_headers():
    raw = mail(b"Content-Type: text/plain; charset=\xff", b"Content-Disposition: inline\xff",
               b"Content-Transfer-Encoding: base64\xff", body="plain text body line\r\n")
    assert parse_mail(raw).body_text.startswith("plain text body line")


def test_8bit_header_values_are_latin1():
    record = parse_mail(mail(b"Subject: caf\xe9", b"From: J\xf6rg <joerg@example.org>", b"Message-ID: <id\xe9@x>",
                             message_id=None))
    assert record.subject == "café"
    assert record.from_name == "Jörg" and record.from_addr == "joerg@example.org"
    assert record.message_id == "<idé@x>"


def test_too_many_parts_stops_walking():
    parts = "".join(f"--B\r\nContent-Type: application/octet-stream\r\n\r\npart {i}\r\n" for i in range(_MAX_PARTS + 50))
    body = parts + "--B\r\nContent-Type: text/plain\r\n\r\nunreachable text\r\n--B--\r\n"
    record = parse_mail(mail("Content-Type: multipart/mixed; boundary=B", body=body))
    assert "too_many_parts" in record.defects
    assert record.body_text == ""
    # under the cap, the same shape reaches its text part and notes nothing
    few = "".join(f"--B\r\nContent-Type: application/octet-stream\r\n\r\npart {i}\r\n" for i in range(5))
    small = parse_mail(mail("Content-Type: multipart/mixed; boundary=B",
                            body=few + "--B\r\nContent-Type: text/plain\r\n\r\nreachable text\r\n--B--\r\n"))
    assert small.body_text.strip() == "reachable text" and small.defects == ()


def test_html_only_body():
    markup = ("<html><head><title>Title</title><style>p {color: red}</style></head><body>"
              "<p>Hello there,</p><div>the quarterly numbers &amp; the plan</div>"
              "<script>var x = 1;</script><br>Bye</body></html>")
    record = parse_mail(mail("Content-Type: text/html; charset=utf-8", body=markup))
    lines = [line.strip() for line in record.body_text.splitlines() if line.strip()]
    assert lines == ["Hello there,", "the quarterly numbers & the plan", "Bye"]
    assert record.body_text == html_to_text(markup)
    assert record.own_shingles == fingerprint_body("Hello there,\nthe quarterly numbers & the plan\nBye\n")[0]


def test_text_part_preferred_over_html_and_attachments_skipped():
    body = ("--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nattached\r\n"
            "--B\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n"
            "--B\r\nContent-Type: text/plain\r\n\r\nplain version\r\n--B--\r\n")
    record = parse_mail(mail("Content-Type: multipart/alternative; boundary=B", body=body))
    assert record.body_text.strip() == "plain version"


def test_body_truncated():
    record = parse_mail(mail(body="x" * (BODY_TEXT_LIMIT + 100)))
    assert len(record.body_text) == BODY_TEXT_LIMIT
    assert "body_truncated" in record.defects


def _thread_index(extra_blocks: int) -> bytes:
    return bytes(range(1, 23)) + bytes(range(100, 100 + 5 * extra_blocks))


def test_thread_index_decoded():
    data = _thread_index(2)
    encoded = base64.b64encode(data).decode()
    record = parse_mail(mail(f"Thread-Index: {encoded[:20]}\r\n {encoded[20:]}"))  # folded
    assert record.thread_index == data
    assert "bad_thread_index" not in record.defects


@pytest.mark.parametrize("value", ["!!!not base64!!!", base64.b64encode(b"x" * 10).decode(),
                                   base64.b64encode(_thread_index(1) + b"\x00").decode(), "AQID"])
def test_thread_index_broken(value):
    record = parse_mail(mail(f"Thread-Index: {value}"))
    assert record.thread_index is None
    assert "bad_thread_index" in record.defects


def test_defects_are_unique():
    record = parse_mail(mail("Subject: =?x-a?q?a?= =?x-b?q?b?=", "To: =?x-c?q?c?= <c@x>", message_id=None))
    assert len(record.defects) == len(set(record.defects))
    assert {"bad_encoding", "missing_message_id"} <= set(record.defects)


# --------------------------------------------------------------------------- property


def _only_parse_errors(raw: bytes) -> None:
    try:
        record = parse_mail(raw)
    except MailParseError as exc:
        assert exc.reason in {"empty", "too_large", "header_too_large", "not_a_mail", "unparsable"}
        return
    assert isinstance(record, MailRecord)
    assert record.message_id.startswith("<") and record.message_id.endswith(">")
    assert record.size == len(raw)


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_give_a_record_or_a_parse_error(raw):
    _only_parse_errors(raw)


_FIELD_NAMES = st.sampled_from([b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"In-Reply-To",
                                b"References", b"Thread-Index", b"Content-Type", b"Content-Transfer-Encoding",
                                b"Content-Disposition", b"Auto-Submitted", b"Precedence", b"X-Threadline-Ref"])


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_FIELD_NAMES, st.binary(max_size=80)), min_size=1, max_size=8), st.binary(max_size=600))
def test_arbitrary_header_values_give_a_record_or_a_parse_error(fields, body):
    raw = b"".join(name + b": " + value.replace(b"\n", b" ").replace(b"\r", b" ") + b"\r\n" for name, value in fields)
    _only_parse_errors(raw + b"\r\n" + body)


# --------------------------------------------------------------------------- content fingerprints


PARENT_TEXT = ("We will ship the replacement parts on Friday, and the courier brings them to your\n"
               "loading dock before noon. Please make sure somebody can sign for the delivery.\n")


def test_a_reply_quotes_the_shingles_of_its_parents_own_text():
    own, _, _ = fingerprint_body(PARENT_TEXT)
    reply = ("Thanks, that works.\n"
             "On Tue, Jan 5, 2024, Ann Smith <ann@x.org> wrote:\n"
             + "".join(f"> {line}\n" for line in PARENT_TEXT.splitlines())
             + "> > This is what the grandparent mail said long ago, in its own words.\n")
    reply_own, quoted, attribution = fingerprint_body(reply)
    grandparent, _, _ = fingerprint_body("This is what the grandparent mail said long ago, in its own words.\n")
    assert set(quoted) & set(own)
    assert not set(quoted) & set(grandparent)  # deeper quotes are the grandparent's evidence
    assert reply_own == ()  # "Thanks, that works." has fewer than SHINGLE_WORDS words
    assert attribution == "ann smith ann@x.org"


def test_a_rewrapped_cut_quote_still_shares_shingles():
    own, _, _ = fingerprint_body(PARENT_TEXT)
    words = " ".join(PARENT_TEXT.split()).split(" ")[3:-4]  # cut at both ends
    rewrapped = "".join(f">   {' '.join(words[i:i + 5]).upper()}\n" for i in range(0, len(words), 5))
    _, quoted, _ = fingerprint_body(rewrapped)
    assert len(set(quoted) & set(own)) >= 3


def test_any_common_run_of_words_shares_a_shingle():
    # Winnowing's guarantee: SHINGLE_WORDS + WINNOW_WINDOW - 1 common words always share one.
    rng = random.Random(7)
    vocabulary = [f"w{n}" for n in range(5000)]
    for _ in range(200):
        run = rng.sample(vocabulary, SHINGLE_WORDS + WINNOW_WINDOW - 1)
        first = rng.sample(vocabulary, rng.randrange(30)) + run + rng.sample(vocabulary, rng.randrange(30))
        second = rng.sample(vocabulary, rng.randrange(30)) + run + rng.sample(vocabulary, rng.randrange(30))
        assert set(fingerprint_body(" ".join(first))[0]) & set(fingerprint_body("> " + " ".join(second))[1])


def test_fewer_words_than_a_shingle_give_none():
    short = " ".join(["word"] * (SHINGLE_WORDS - 1))
    assert fingerprint_body(f"{short}\n> {short}\n") == ((), (), "")
    assert all(fingerprint_body(f"{short} more\n> {short} more\n")[:2])


def test_fingerprint_signature_and_outlook_original_message():
    answer = "Here is my own answer to your question about it."
    body = f"{answer}\n-- \nAnn Smith, Head of Something Important Inc. and more words\n"
    own, quoted, _ = fingerprint_body(body)
    assert own == fingerprint_body(answer)[0] and quoted == ()
    outlook = ("Sure, that works for the whole team here.\n"
               "-----Original Message-----\n"
               "From: Bob Jones\n"
               "the original text that is long enough to count\n")
    own, quoted, attribution = fingerprint_body(outlook)
    assert own == fingerprint_body("Sure, that works for the whole team here.")[0]
    assert quoted == fingerprint_body("the original text that is long enough to count")[0]
    assert attribution == "bob jones"


def test_fingerprint_bounded_and_not_blind_past_the_start():
    body = "\n".join(f"this is own line number {i:04d} of the body" for i in range(1200))  # < MAX_TEXT_CHARS
    own, quoted, _ = fingerprint_body(body)
    assert len(own) == MAX_SHINGLES == len(set(own)) and quoted == ()
    # A reply quoting only the end of the long mail still meets some of its kept shingles.
    tail = "\n".join(f"> this is own line number {i:04d} of the body" for i in range(1100, 1200))
    assert set(fingerprint_body(tail)[1]) & set(own)


def test_shingles_are_signed_64_bit_and_the_same_in_another_process():
    text = PARENT_TEXT + "café au lait et croissants pour tout le monde\n"
    values = fingerprint_body(text)[0]
    assert values and all(isinstance(v, int) and -(2**63) <= v < 2**63 for v in values)
    assert any(v < 0 for v in values) or any(v > 0 for v in values)
    code = "import sys; from pipeline.mail.content import fingerprint_body; print(*fingerprint_body(sys.argv[1])[0])"
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.split() == [str(v) for v in values]
