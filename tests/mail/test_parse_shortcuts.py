"""Shortcuts of parse_mail's header reading give what the code they stand in for gave: the end of
the header block (two searches instead of a regular expression) and header text without encoded
words (not handed to email.header.decode_header), dates of the common form (not handed to
email.utils.parsedate_to_datetime), and the facts of a Content-Type value cached per value (not
re-parsed by every Message accessor)."""

from __future__ import annotations

import re
from email.header import decode_header
from email.message import Message
from email.policy import compat32
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mail.fastmime import charset, content_type_fact, report_type
from pipeline.mail.parse import _decode_header, _header_block, parsed_date

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def reference_header_block(raw: bytes) -> bytes:
    end = _HEADER_END.search(raw)
    return raw if end is None else raw[:end.start()]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"X: y", b" "]), max_size=16))
def test_header_block_ends_where_the_expression_matched(pieces):
    raw = b"".join(pieces)
    assert _header_block(raw) == reference_header_block(raw)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab =?_Q\t\n\r\u00a0\x1f\u00e9"), max_size=24))
def test_header_text_without_encoded_words_reads_as_decode_header_reads_it(value):
    if "=?" not in value:
        assert decode_header(value) == [(value, None)]  # what the shortcut relies on
    # The one chunk, its white space runs made one space (the rest of _decode_header).
    expected = re.sub(r"\s+", " ", value).strip() if decode_header(value) == [(value, None)] else None
    if expected is not None:
        assert _decode_header(value, []) == expected


def date_outcome(parse, value: str):
    try:
        parsed = parse(value)
    except Exception as error:  # the stdlib raises ValueError for a date out of range, an unknown form
        return type(error)
    return parsed, parsed.tzinfo  # equal instants in other zones would compare equal


_ODD_DATES = [
    "Tue, 3 Dec 2024 10:00:00 +0100", "3 Dec 2024 10:00:00 +0100", "Tue,  03 Dec 2024 10:00:00 -0530 (EST)",
    "Tue, 3 Dec 2024 10:00:00 -0000", "Tue, 3 Dec 2024 10:00:00 +0000", "Tue, 3 Dec 2024 10:00:00 GMT",
    "Tue, 3 Dec 2024 10:00:00 EST", "Tue, 3 Dec 2024 10:00:00 UT", "Tue, 3 Dec 2024 10:00 +0100",
    "Tue, 3 Dec 24 10:00:00 +0100", "Tue, 3 Dec 0099 10:00:00 +0100", "Tue, 3 dec 2024 10:00:00 +0100",
    "Tue, 31 Feb 2024 10:00:00 +0100", "Tue, 3 Dec 2024 24:00:00 +0100", "Tue, 3 Dec 2024 10:60:00 +0100",
    "Tue, 3 Dec 2024 10:00:60 +0100", "Tue, 3 Dec 2024 10:00:00 +2400", "Tue, 3 Dec 2024 10:00:00 +0099",
    "Tue, 3 Dec 2024 10:00:00 -9999", "Tue, 0 Dec 2024 10:00:00 +0100", "Tue, 3 Dec 9999 23:59:59 -2359",
    "Tue, 3 Dec 2024 10:00:00 +0100\n (CET)", "Tue,3 Dec 2024 10:00:00 +0100", "Xyz, 3 Dec 2024 10:00:00 +0100",
    "  Tue, 3 Dec 2024 10:00:00 +0100  ", "Tue, 3 Dec 2024 10:00:00 +01000", "Tue, 3 Dec 2024 10.00.00 +0100",
    "Tue, 3 Dec 2024 10:00:00 +0100\x85x", "Tue,\xa03 Dec 2024 10:00:00 +0100", "Dec 3 2024 10:00:00 +0100",
]


@pytest.mark.parametrize("value", _ODD_DATES)
def test_odd_dates_read_as_parsedate_to_datetime_reads_them(value):
    assert date_outcome(parsed_date, value) == date_outcome(parsedate_to_datetime, value)


_DATE_PIECES = st.sampled_from(["Tue,", "Tue", "Sun, ", "3", "03", "31", "0", "99", " ", "  ", "\t", "\n ", "Dec",
                                "dec", "2024", "24", "0999", "10:00:00", "23:59", "24:00:61", "+0100", "-0000",
                                "+0000", "-2359", "+2400", "GMT", "EST", "UT", "(UTC)", ",", ":", "\xa0", "9999"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_DATE_PIECES, max_size=10))
def test_dates_read_as_parsedate_to_datetime_reads_them(pieces):
    value = "".join(pieces)
    assert date_outcome(parsed_date, value) == date_outcome(parsedate_to_datetime, value)


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 31), st.sampled_from(["Jan", "Feb", "Jun", "Dec"]), st.integers(1000, 9999),
       st.integers(0, 25), st.integers(0, 61), st.integers(0, 61), st.sampled_from("+-"), st.integers(0, 9999))
def test_common_form_dates_read_as_parsedate_to_datetime_reads_them(day, month, year, hour, minute, second, sign, zone):
    value = f"Mon, {day} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {sign}{zone:04d}"
    assert date_outcome(parsed_date, value) == date_outcome(parsedate_to_datetime, value)


def fact_outcome(fact, message: Message):
    try:
        return fact(message)
    except Exception as error:  # e.g. get_boundary's decoding of an RFC 2231 value with a NUL charset
        return type(error)


_CONTENT_TYPES = [
    "text/plain", "text/plain; charset=utf-8", 'TEXT/Plain; charset="ISO-8859-1"', "text/plain; charset*=utf-8''%41b",
    "text/plain; charset*0=ut; charset*1=f-8", "text/html; charset*=\x00''x", "multipart/alternative; boundary=abc",
    'multipart/mixed; boundary="=_a b c "', "multipart/mixed; boundary*=\x00''%41b", "multipart/report; report-type=Delivery-Status",
    "multipart/report; report-type*=us-ascii'en'delivery-status", "text", "a/b/c", "", ";", "text/plain; charset",
    "text/plain; charset=", 'text/plain; charset="utf-8', "text/plain; (comment) charset=utf-8", "message/rfc822",
    "multipart/digest; boundary=x", "text/plain;\n charset=utf-8", "text/plain; CHARSET=Big5; charset=utf-8",
]
_FACTS = [Message.get_content_type, Message.get_content_maintype, Message.get_boundary, charset, report_type]


@pytest.mark.parametrize("value", _CONTENT_TYPES)
@pytest.mark.parametrize("fact", _FACTS, ids=lambda fact: fact.__name__)
def test_cached_content_type_facts_are_the_messages_own(value, fact):
    message = Message(compat32)
    message["X"] = "y"
    message["Content-Type"] = value
    message["content-type"] = "text/html"  # the first one counts
    for _ in range(2):  # the second answer comes from the cache (or the same exception again)
        assert fact_outcome(lambda m: content_type_fact(m, fact), message) == fact_outcome(fact, message)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(["text/plain", "multipart/x", ";", " ", "charset", "boundary", "report-type", "*",
                                 "*0", "*1", "=", '"', "'", "utf-8", "%41", "\x00", "(c)", "\\", "a b"]), max_size=12))
def test_generated_content_type_facts_are_the_messages_own(pieces):
    message = Message(compat32)
    message["Content-Type"] = "".join(pieces)
    for fact in _FACTS:
        assert fact_outcome(lambda m: content_type_fact(m, fact), message) == fact_outcome(fact, message)


def test_a_message_without_content_type_has_its_default_type():
    message = Message(compat32)
    message.set_default_type("message/rfc822")  # as in a multipart/digest
    assert content_type_fact(message, Message.get_content_type) == "message/rfc822"
