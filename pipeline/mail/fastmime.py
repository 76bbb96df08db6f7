"""A fast path for the common shapes of mail, beside the stdlib parser it must agree with.

``email.message_from_bytes`` (compat32) reads a mail line by line in Python, feeding every line
through a buffer and a stack of boundary matchers: most of the time to parse a mail.  Most mail
is one text part, or one level of multipart (alternative, mixed, signed) whose parts are leaves.
For those, :func:`simple_message` builds the very ``Message`` tree the feed parser would, from a
few searches over the whole text: the header fields tiled by one regular expression, the
boundary lines found with ``str.find``.  Everything downstream (transfer decoding, charsets, the
body choice) then runs the same ``Message`` methods on it.

It answers only for a mail it can vouch for and returns None for every other one, which then
takes the stdlib path: mixed or bare-CR line endings, a header block that is not plain ASCII or
that the feed parser would note a defect in (a continuation first, a line that is no field, an
envelope ``From `` line), message/* and nested multipart, multipart/digest, a multipart without
a boundary, with a transfer encoding or with a boundary structure the parser would complain about
or read in its own way (no first or no close delimiter, delimiters back to back, parts without a
header/body separator), and more parts than the body choice ever looks at.

The top-level ``Message`` holds only the ``Content-*`` fields (all that is read through it); all
fields come back separately, lower-case name to values in order, as ``Message.items()`` gives
them (compat32: the raw value after the colon, leading blanks and the line end stripped, folds
kept).
"""

from __future__ import annotations

import functools
import re
from email.message import Message
from email.policy import compat32
from typing import Callable, TypeVar

_Fact = TypeVar("_Fact")
_MAX_CACHED_VALUE = 998  # a line's worth: hostile mail's huge values are read, not kept

# name ":" value, continuation lines included; a header block is these fields and nothing else.
_FIELD = re.compile(r"([\041-\071\073-\176]+):[ \t]*+([^\n]*+(?:\n[ \t][^\n]*+)*+)\n")
_FIELDS = re.compile(r"(?:[\041-\071\073-\176]++:[^\n]*+(?:\n[ \t][^\n]*+)*+\n)*+")
_LEAF_MAINTYPES_REFUSED = ("multipart", "message")
_MULTIPART_ENCODINGS = ("7bit", "8bit", "binary")


def param(message: Message, name: str) -> str:
    """A Content-Type parameter as plain text; the RFC 2231 form (``name*=utf-8''v``) is read
    for its value only, because the stdlib's own decoding of it raises on a NUL charset."""
    value = message.get_param(name)
    if isinstance(value, tuple):
        value = value[2]
    return value if isinstance(value, str) else ""


def charset(message: Message) -> str:
    return param(message, "charset")


def report_type(message: Message) -> str:
    return param(message, "report-type")


def content_type_fact(message: Message, fact: Callable[[Message], _Fact]) -> _Fact:
    """``fact(message)`` for a ``fact`` that reads nothing but the message's (first) Content-Type
    field (``Message.get_content_type``, ``Message.get_boundary``, :func:`charset`, ...):
    ``Message`` re-parses the field for every such call, and mail repeats a few values."""
    value = message.get("content-type")
    if isinstance(value, str) and len(value) <= _MAX_CACHED_VALUE:
        return _cached_fact(value, fact)
    return fact(message)  # none (the default type), 8-bit (an email.header.Header) or huge


@functools.lru_cache(maxsize=4096)
def _cached_fact(value: str, fact: Callable[[Message], _Fact]) -> _Fact:
    # An exception (a value the stdlib's decoding refuses) is not cached: raised again each time.
    return fact(_message([("Content-Type", value)], None))


def _fields(block: str, crlf: bool) -> list[tuple[str, str]] | None:
    """The (name, value) fields of a header block ending in a line end, as compat32 sets them
    (leading blanks and the line end stripped); None if the block is anything but fields (a
    line that is no field or continuation, or a continuation first)."""
    if _FIELDS.fullmatch(block) is None:
        return None
    if crlf:
        return [(name, value.rstrip("\r\n")) for name, value in _FIELD.findall(block)]
    return _FIELD.findall(block)


def _message(fields: list[tuple[str, str]], payload: str | list[Message] | None) -> Message:
    message = Message(compat32)
    message._headers = fields
    message._payload = payload
    return message


class _Lines:
    """Line ends of one mail: all "\\n" or all "\\r\\n"."""

    __slots__ = ("end", "blank", "crlf")

    def __init__(self, end: str) -> None:
        self.end = end
        self.blank = end + end
        self.crlf = end == "\r\n"


_LF = _Lines("\n")
_CRLF = _Lines("\r\n")


def _line_ends(raw: bytes) -> _Lines | None:
    if b"\r" not in raw:  # most mail: found as fast as memory reads, a count takes three times as long
        return _LF
    if raw.count(b"\r") == raw.count(b"\r\n") == raw.count(b"\n"):
        return _CRLF
    return None


def _leaf(text: str, lines: _Lines) -> Message | None:
    """One part of a multipart, from the text between its delimiter lines."""
    if text.startswith(lines.end):  # no header fields
        fields: list[tuple[str, str]] = []
        body = text[len(lines.end):]
    else:
        end = text.find(lines.blank)
        if end < 0:
            return None
        block = text[:end + len(lines.end)]
        fields_found = _fields(block, lines.crlf) if block.isascii() else None
        if fields_found is None:
            return None
        fields = fields_found
        body = text[end + len(lines.blank):]
    if body.endswith(lines.end):  # the line end before a delimiter belongs to the delimiter
        body = body[:-len(lines.end)]
    part = _message(fields, body)
    if content_type_fact(part, Message.get_content_maintype) in _LEAF_MAINTYPES_REFUSED:
        return None
    return part


def _delimiters(body: str, boundary: str, lines: _Lines, max_parts: int) -> list[tuple[int, int, bool]] | None:
    """(start, end after its line end, is close) of each delimiter line up to the close one;
    None without a close delimiter or with more than ``max_parts`` parts."""
    separator = "--" + boundary
    found: list[tuple[int, int, bool]] = []
    start = 0 if body.startswith(separator) else body.find(lines.end + separator)
    if start > 0:
        start += len(lines.end)
    while start >= 0:
        # A delimiter line: the separator, "--" for the close one, blanks, the line end (or EOF).
        after = start + len(separator)
        close = body.startswith("--", after)
        end = after + 2 if close else after
        while end < len(body) and body[end] in " \t":
            end += 1
        if end == len(body) or body.startswith(lines.end, end):
            found.append((start, min(end + len(lines.end), len(body)), close))
            if close:
                return found
            if len(found) > max_parts:
                return None
        start = body.find(lines.end + separator, start)
        if start >= 0:
            start += len(lines.end)
    return None


def simple_message(raw: bytes, max_parts: int) -> tuple[Message, dict[str, list[str]]] | None:
    """The message the stdlib parser would build, and its header fields; None when this mail is
    not of a shape vouched for here."""
    lines = _line_ends(raw)
    if lines is None:
        return None
    text = raw.decode("ascii", "surrogateescape")
    header_end = text.find(lines.blank)
    if header_end <= 0:
        return None
    block = text[:header_end + len(lines.end)]
    if not block.isascii():
        return None
    fields = _fields(block, lines.crlf)
    if fields is None:
        return None
    by_name: dict[str, list[str]] = {}
    content_fields = []
    for field in fields:
        values = by_name.get(name := field[0].lower())
        if values is None:
            by_name[name] = [field[1]]
        else:
            values.append(field[1])
        if name.startswith("content-"):  # all the record reads through the Message itself
            content_fields.append(field)
    body = text[header_end + len(lines.blank):]
    message = _message(content_fields, body)
    content_type = content_type_fact(message, Message.get_content_type)
    maintype = content_type.partition("/")[0]  # as Message.get_content_maintype splits it
    if maintype == "message":
        return None
    if maintype != "multipart":
        return message, by_name
    if content_type == "multipart/digest":  # its parts default to message/rfc822
        return None
    if str(message.get("content-transfer-encoding", "8bit")).lower() not in _MULTIPART_ENCODINGS:
        return None
    boundary = content_type_fact(message, Message.get_boundary)
    if not boundary:
        return None
    delimiters = _delimiters(body, boundary, lines, max_parts)
    if delimiters is None or delimiters[0][2]:
        return None
    parts = []
    for (_, content_start, _), (next_start, _, _) in zip(delimiters, delimiters[1:]):
        if next_start == content_start:  # delimiters back to back: the parser skips the second
            return None
        part = _leaf(body[content_start:next_start], lines)
        if part is None:
            return None
        parts.append(part)
    message._payload = parts
    return message, by_name
