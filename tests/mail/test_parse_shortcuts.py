"""Shortcuts of parse_mail's header reading give what the code they stand in for gave: the end of
the header block (two searches instead of a regular expression) and header text without encoded
words (not handed to email.header.decode_header)."""

from __future__ import annotations

import re
from email.header import decode_header

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mail.parse import _decode_header, _header_block

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
