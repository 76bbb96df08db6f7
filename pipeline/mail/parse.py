"""RFC 5322 bytes -> :class:`MailRecord`.

Never raises anything but :class:`MailParseError` (with a stable reason code for the dead-letter
topic): empty input, no header block, a header block or a message over its limit.  Everything
else that is odd (bad encodings, broken MIME, missing ids, bad dates) is noted in ``defects``
and parsing goes on, because a real mailbox holds all of that.

The stdlib ``compat32`` policy is used: it is several times faster than the modern policy and
never raises on malformed headers; headers are decoded here explicitly.  Mail of the common
shapes (one text part; one level of multipart with leaf parts; plain ASCII header fields) skips
the stdlib's line-by-line feed parser: :mod:`pipeline.mail.fastmime` builds the same ``Message``
tree from a few searches, and hands every other mail to the stdlib parser, which stays the
reference (:func:`parse_mail_stdlib`; a differential test compares the two on every corpus mail).

Work per mail is bounded, whatever its size: the body text comes from at most
``TEXT_PART_BYTES`` of a text part or ``HTML_PART_BYTES`` of an HTML part (noted as
``body_truncated``), HTML is converted by a linear scanner, and a MIME structure that would make
the stdlib parser compare millions of lines against its open boundaries (deep nesting) is read
for its header only (``mime_too_deep``).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import copy
import functools
import hashlib
import html
import re
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Iterator

from pipeline.mail.automatic import AUTOMATIC_HEADERS, classify_automatic
from pipeline.mail.content import fingerprint_body
from pipeline.mail.fastmime import charset, content_type_fact, report_type, simple_message
from pipeline.mail.record import BODY_TEXT_LIMIT, Direction, MailParseError, MailRecord

MAX_HEADER_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
_MAX_PARTS = 200  # a MIME bomb of thousands of parts is walked no further
# Decoded bytes read from the chosen body part.  A character takes at most 4 bytes in the
# charsets mail uses, so a text part's first 4 * BODY_TEXT_LIMIT bytes fill the body text;
# HTML spends most of its bytes on markup, so it gets more, but not the 10 MB some mail has.
TEXT_PART_BYTES = 4 * BODY_TEXT_LIMIT
HTML_PART_BYTES = 512 * 1024
# The stdlib parser compares every line with every open multipart boundary, and recurses once
# per level: these bound the nesting it is handed and that comparison count.
_MAX_MIME_DEPTH = 64
_MAX_BOUNDARY_CHECKS = 4_000_000
_MAX_DELIMITER_LINES = 100_000  # "--" lines the estimate looks at, one by one

_ID = re.compile(r"<([^<>\s]{1,998})>")
_BARE_ID = re.compile(r"^\s*([^<>\s@]{1,900}@[^<>\s]{1,900})\s*$")
_SPACE = re.compile(r"\s+")
_FIELD_LINE = re.compile(rb"^[!-9;-~]{1,76}:", re.MULTILINE)
_KNOWN_FIELDS = (b"from:", b"date:", b"message-id:", b"subject:", b"to:", b"received:", b"return-path:")


def _header_block(raw: bytes) -> bytes:
    """``raw`` up to its first blank line: where ``rb"\\r?\\n\\r?\\n"`` first matches, found with two
    searches for its newlines (the regular expression, without a fixed first byte, tries every
    position)."""
    end = raw.find(b"\n\n")
    limit = end + 2 if end >= 0 else len(raw)
    # Looked for only where a "\r" is (one byte is found many times faster than three).
    crlf = raw.find(b"\n\r\n", 0, limit) if raw.find(b"\r", 0, limit) >= 0 else -1
    if crlf >= 0 and (end < 0 or crlf < end):
        end = crlf
    if end < 0:
        return raw
    return raw[:end - 1] if end and raw[end - 1] == 13 else raw[:end]


# Codecs Python has that no mail charset is: they turn escapes into text (and warn about bad
# ones), convert domain labels, or always fail.  A mail naming one gets latin-1, like an unknown.
_NOT_MAIL_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"})


def _decode(data: bytes, charset: str, errors: str, defects: list[str]) -> str:
    """``data`` in ``charset``; an unknown or unusable charset, or bytes it refuses, give latin-1
    and ``bad_encoding``."""
    try:
        if codecs.lookup(charset).name not in _NOT_MAIL_CHARSETS:
            return data.decode(charset, errors)
    # LookupError: unknown name or a bytes-to-bytes codec (hex, zlib); ValueError (UnicodeError
    # included): bytes the codec refuses, an error handler it lacks, a NUL in the name.
    except (LookupError, ValueError):
        pass
    defects.append("bad_encoding")
    return data.decode("latin-1")


def _decode_header(value: str | None, defects: list[str]) -> str:
    """RFC 2047 words in any charset; unknown charsets fall back to latin-1, never raise."""
    if not value:
        return ""
    if isinstance(value, str) and "=?" not in value:  # no encoded word: decode_header returns it as it is
        return _SPACE.sub(" ", value).strip()
    try:
        parts = decode_header(value)
    except Exception:  # malformed encoded words: keep the raw text
        defects.append("bad_encoding")
        return _SPACE.sub(" ", value).strip()
    text = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            text.append(chunk)
        else:  # "utf-8*en": RFC 2231 lets an encoded word name its language after the charset
            text.append(_decode(chunk, (charset or "ascii").partition("*")[0], "strict", defects))
    # decode_header drops the white space between an encoded and a plain word.
    return _SPACE.sub(" ", "".join(text) if len(parts) > 1 else text[0]).strip()


def _text(value: object, defects: list[str]) -> str | None:
    """A raw header value as str: compat32 returns an ``email.header.Header`` instead of a str for
    a field with 8-bit bytes; those bytes are read as latin-1, like an unknown charset."""
    if value is None or isinstance(value, str):
        return value
    if "bad_encoding" not in defects:
        defects.append("bad_encoding")
    return "".join(chunk.decode("latin-1") if isinstance(chunk, bytes) else chunk
                   for chunk, _ in decode_header(value))


def _message_ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = [f"<{m}>" for m in _ID.findall(value)]
    if not found:
        bare = _BARE_ID.match(value)
        if bare:
            found = [f"<{bare.group(1)}>"]
    return found


# One item of an address list in its everyday forms: "Name <a@b>", "a@b", or '"Any, text" <a@b>'
# (the display names most mail programs quote), up to its comma; an empty item is skipped.
_ATOMS_ADDRESS = r"[^<>\s@,\"()\\\[\]:;]+@[^<>\s@,\"()\\\[\]:;]+"
_SIMPLE_ITEM = re.compile(
    rf"\s*(?:\"[^\"\\]*\"\s*<\s*({_ATOMS_ADDRESS})\s*>|[^<>@\"(),]*<\s*([^<>\s@,]+@[^<>\s@,]+)\s*>"
    r"|([^<>\s@,\"]+@[^<>\s@,\"]+))?\s*(?:,|\Z)")


def _simple_addresses(decoded: list[str]) -> list[str] | None:
    """The addresses when every item is in an everyday form; None sends it to the full parser
    (which is ~10x slower and needed only for escapes, comments, groups and odd quoting)."""
    found = []
    for value in decoded:
        position = 0
        while position < len(value):
            match = _SIMPLE_ITEM.match(value, position)
            if match is None:
                return None
            address = match.group(1) or match.group(2) or match.group(3)
            if address:
                found.append(address)
            position = match.end()
    return found


# The From field in the same forms, one address: '"Name" <a@b>', 'Name <a@b>' or 'a@b'.
_SIMPLE_FROM = re.compile(rf"\s*(?:\"([^\"\\]*)\"\s*<\s*({_ATOMS_ADDRESS})\s*>|([^<>@\"(),:;\[\]\\]*)<\s*({_ATOMS_ADDRESS})\s*>"
                          rf"|({_ATOMS_ADDRESS}))\s*")


def _name_and_address(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr`` of a decoded From field, without its parser for the everyday
    forms (a phrase's words joined by one space, a quoted name as it is)."""
    match = _SIMPLE_FROM.fullmatch(value)
    if match is None:
        return parseaddr(value)
    quoted, quoted_address, phrase, phrase_address, bare = match.groups()
    if bare is not None:
        return "", bare
    if quoted_address is not None:
        return quoted, quoted_address
    return " ".join(word for word in phrase.split(" ") if word), phrase_address


def _addresses(values: list[str] | None, defects: list[str]) -> tuple[str, ...]:
    if not values:
        return ()
    decoded = [_decode_header(v, defects) for v in values]
    seen: dict[str, None] = {}
    simple = _simple_addresses(decoded)
    try:
        pairs = [("", address) for address in simple] if simple is not None else getaddresses(decoded)
    except Exception:
        defects.append("bad_address")
        return ()
    for _, address in pairs:
        address = address.strip().lower()
        if "@" in address and " " not in address and len(address) <= 320:
            seen.setdefault(address, None)
    return tuple(seen)


# The date form nearly all mail has ("Tue, 3 Dec 2024 10:00:00 +0100", a comment or anything else
# after the zone): read by one match, with exactly the stdlib's arithmetic (about half its time);
# any other form (no seconds, 2-digit or odd years, zone names, lower-case months, other blanks)
# goes to the stdlib.
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_COMMON_DATE = re.compile(
    r"[ \t\r\n]*(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t\r\n]+)?([0-9]{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" ([1-9][0-9]{3}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})(?:[ \t\r\n]|\Z)")


@functools.lru_cache(maxsize=None)  # a few dozen zones in all the mail there is
def _zone(offset: str) -> timezone | None:
    """"+0130" as parsedate_to_datetime reads it; "-0000" (UTC, the source's zone unknown) is None."""
    seconds = int(offset[1:3]) * 3600 + int(offset[3:]) * 60
    if not seconds and offset[0] == "-":
        return None
    return timezone(timedelta(seconds=-seconds if offset[0] == "-" else seconds))


def parsed_date(value: str) -> datetime:
    """``email.utils.parsedate_to_datetime(value)``: the same value or the same exception."""
    match = _COMMON_DATE.match(value)
    if match is None:
        return parsedate_to_datetime(value)
    day, month, year, hour, minute, second, offset = match.groups()
    return datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=_zone(offset))


def _date(value: str | None, defects: list[str]) -> datetime | None:
    if not value:
        defects.append("missing_date")
        return None
    try:
        parsed = parsed_date(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("bad_date")
        return None
    if parsed is None:
        defects.append("bad_date")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        defects.append("bad_date")
        return None


_BLOCK_TAGS = frozenset({"br", "p", "div", "tr", "li", "blockquote", "h1", "h2", "h3", "h4", "pre", "table"})
_HIDDEN_TAGS = frozenset({"script", "style", "head", "title"})
_RAW_TEXT_END = {"script": re.compile(r"</script(?=[\s/>]|\Z)", re.IGNORECASE),
                 "style": re.compile(r"</style(?=[\s/>]|\Z)", re.IGNORECASE)}
_TAG_NAME = re.compile(r"[a-zA-Z][^\s/>\x00]*")
_QUOTED_VALUE = re.compile(r"=\s*([\"'])")
# Most tags hold no quote and no "<": one match reads them (a third of the time per tag).
_PLAIN_TAG = re.compile(r"<(/?)([a-zA-Z][^\s/>\x00<\"']*)([^<>\"']*)>")


def html_to_text(markup: str, max_chars: int | None = None) -> str:
    """Visible text of an HTML part, with line breaks where blocks end; at most ``max_chars``.

    A single forward scan, so the work is linear in the markup whatever it holds (html.parser
    takes minutes on 512 KiB of ``<x<x<x``: it rescans to the end for every unfinished tag).
    Every search for a terminator starts where the scan is and the scan then moves past what it
    found, so no byte is searched twice.  Like a browser, a tag, comment or quoted attribute
    left open at the end swallows the rest of the document.
    """
    parts: list[str] = []
    size = 0
    hidden = 0  # open script/style/head/title elements
    pos = 0
    length = len(markup)
    next_gt = -1  # the first ">" at or after the last search start; valid while it is ahead of pos
    while pos < length:
        lt = markup.find("<", pos)
        text = markup[pos:] if lt < 0 else markup[pos:lt]
        if text and not hidden:
            text = html.unescape(text) if "&" in text else text
            parts.append(text)
            size += len(text)
            if max_chars is not None and size >= max_chars:
                break
        if lt < 0:
            break
        plain = _PLAIN_TAG.match(markup, lt)
        if plain is not None:
            closing, name = plain.group(1) == "/", plain.group(2).lower()
            self_closing = not closing and plain.group(3).endswith("/")
            pos = plain.end()
        else:
            after = markup[lt + 1:lt + 2]
            if markup.startswith("<!--", lt):
                close = markup.find("-->", lt + 4)
                if close < 0:
                    break
                pos = close + 3
                continue
            closing = after == "/"
            name_match = _TAG_NAME.match(markup, lt + 2 if closing else lt + 1)
            if name_match is None and not closing and after not in ("!", "?"):
                if not hidden:  # "a < b": a literal "<"
                    parts.append("<")
                    size += 1
                pos = lt + 1
                continue
            if closing and markup.startswith("</>", lt):
                pos = lt + 3
                continue
            if next_gt <= lt:
                next_gt = markup.find(">", lt + 1)
                if next_gt < 0:
                    break
            gt = next_gt
            if name_match is None:  # <!DOCTYPE>, <?xml ?>, </ 3>: nothing visible up to ">"
                pos = gt + 1
                continue
            name = name_match.group().lower()
            if not closing:
                # A quoted attribute value may hold ">": the tag ends at the first ">" after it.
                scan = name_match.end()
                while (quote := _QUOTED_VALUE.search(markup, scan, gt)) is not None:
                    end_quote = markup.find(quote.group(1), quote.end())
                    if end_quote < 0:
                        return "".join(parts)[:max_chars]
                    scan = end_quote + 1
                    if scan > gt:
                        gt = next_gt = markup.find(">", scan)
                        if gt < 0:
                            return "".join(parts)[:max_chars]
            pos = gt + 1
            self_closing = not closing and markup[gt - 1] == "/" and gt - 1 >= name_match.end()
        if name in _HIDDEN_TAGS:
            if closing:
                hidden = max(0, hidden - 1)
            elif not self_closing:
                hidden += 1
                if name in _RAW_TEXT_END:  # script and style hold no tags, only text up to their end tag
                    end_tag = _RAW_TEXT_END[name].search(markup, pos)
                    if end_tag is None:
                        break
                    pos = end_tag.start()
        elif name in _BLOCK_TAGS:  # also while hidden, as html.parser did: breaks alone show nothing
            parts.append("\n\n" if self_closing else "\n")
            size += 2 if self_closing else 1
    return "".join(parts)[:max_chars]


def _walk(message: Message) -> Iterator[Message]:
    """Message.walk() in the same order, without a generator per nesting level."""
    stack = [message]
    while stack:
        part = stack.pop()
        yield part
        if part.is_multipart():
            stack.extend(reversed(part.get_payload()))


def _decoded_payload(part: Message, limit: int) -> tuple[bytes | None, bool]:
    """The part's payload, transfer-decoded, and whether it was cut to ``limit`` bytes.

    Only about as much of the encoded payload as ``limit`` needs is decoded, on a shallow copy
    of the part, so a 40 MB base64 part costs what a 1 MB one does.  The copy shares the part's
    ``defects``, so decoding problems are still noted on it.
    """
    # Not get_payload(): without decode=True it re-decodes an 8-bit payload with the part's own
    # charset, and raises for one such as idna.
    encoded = part._payload
    # Quoted-printable spends up to 3 characters on a byte; base64 4 on 3.
    if not isinstance(encoded, str) or len(encoded) <= 3 * limit:
        payload = part.get_payload(decode=True)
        if payload is not None and len(payload) > limit:
            return payload[:limit], True
        return payload, False
    head = encoded[:3 * limit]
    line_end = head.rfind("\n")
    if line_end > 0:  # whole lines: no "=XX" escape or base64 quantum is split
        head = head[:line_end + 1]
    if str(part.get("content-transfer-encoding", "")).lower() == "base64":  # as Message.get_payload reads it
        compact = "".join(head.split())
        head = compact[:len(compact) // 4 * 4]
    prefix = copy.copy(part)
    prefix.set_payload(head)
    payload = prefix.get_payload(decode=True)
    return (payload[:limit] if payload is not None else None), True


def _part_text(part: Message, limit: int, defects: list[str]) -> str:
    try:
        payload, truncated = _decoded_payload(part, limit)
    except Exception:
        defects.append("broken_mime")
        return ""
    if part.defects:  # e.g. invalid base64, noted on the part while decoding it
        defects.append("broken_mime")
    if payload is None:
        return ""
    if truncated:
        defects.append("body_truncated")
    text = _decode(payload, content_type_fact(part, charset).strip() or "us-ascii", "replace", defects)
    if truncated and text.endswith("\ufffd"):  # the cut split the last character
        text = text[:-1]
    return text


def _body_text(message: Message, defects: list[str]) -> str:
    html_part = None
    for count, part in enumerate(_walk(message)):
        if count >= _MAX_PARTS:
            defects.append("too_many_parts")
            break
        if part.defects:  # broken MIME inside a nested part, noted while parsing it
            defects.append("broken_mime")
        if part.is_multipart():
            continue
        content_type = content_type_fact(part, Message.get_content_type)
        if part.get_content_disposition() == "attachment":
            continue
        if content_type == "text/plain":
            return _part_text(part, TEXT_PART_BYTES, defects)
        if content_type == "text/html" and html_part is None:
            html_part = part
    if html_part is None:
        return ""
    # One character more than the body keeps, so that parse_mail notes the truncation.
    return html_to_text(_part_text(html_part, HTML_PART_BYTES, defects), max_chars=BODY_TEXT_LIMIT + 1)


_BOUNDARY_PARAM = re.compile(rb"boundary\s*=\s*(?:\"([^\"\r\n]{1,200})\"|([^\"\s;]{1,200}))")
_DELIMITER = re.compile(rb"\n--([^\r\n]{0,200})")


def _mime_too_deep(raw: bytes) -> bool:
    """Whether the stdlib parser would nest deeper than ``_MAX_MIME_DEPTH`` or compare more than
    ``_MAX_BOUNDARY_CHECKS`` lines with open boundaries.

    An estimate from a scan of the bytes: boundaries open where a ``boundary=`` parameter is
    declared and close at their delimiter lines (a sibling's delimiter closes the parts nested
    before it).  Case is ignored on both sides; an over-estimate only costs the body text.
    """
    lowered = raw.lower()
    if lowered.count(b"boundary") <= 1:  # every declaration starts with one: a count is ten times as fast
        return False
    declared = [(match.start(), True, match.group(1) or match.group(2)) for match in _BOUNDARY_PARAM.finditer(lowered)]
    if len(declared) <= 1:
        return False
    lines = raw.count(b"\n")
    if len(declared) <= _MAX_MIME_DEPTH and len(declared) * lines <= _MAX_BOUNDARY_CHECKS:
        return False
    if lowered.count(b"\n--") > _MAX_DELIMITER_LINES:
        return True
    names = {name for _, _, name in declared}
    events = declared + [(match.start(), False, match.group(1).rstrip()) for match in _DELIMITER.finditer(lowered)
                         if match.group(1).rstrip().removesuffix(b"--") in names or match.group(1).rstrip() in names]
    events.sort()
    stack: list[bytes] = []
    checks = 0
    last = 0
    for position, is_declaration, name in events:
        checks += len(stack) * raw.count(b"\n", last, position)
        last = position
        if is_declaration:
            stack.append(name)
            if len(stack) > _MAX_MIME_DEPTH:
                return True
            continue
        is_close = name.endswith(b"--") and name[:-2] in stack
        name = name[:-2] if is_close else name
        if name in stack:
            innermost = len(stack) - 1 - stack[::-1].index(name)
            del stack[innermost if is_close else innermost + 1:]
        if checks > _MAX_BOUNDARY_CHECKS:
            return True
    checks += len(stack) * raw.count(b"\n", last)
    return checks > _MAX_BOUNDARY_CHECKS


def _thread_index(value: str | None, defects: list[str]) -> bytes | None:
    if not value:
        return None
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        defects.append("bad_thread_index")
        return None
    if len(data) < 22 or (len(data) - 22) % 5:
        defects.append("bad_thread_index")
        return None
    return data


def _report_type(message: Message) -> str:
    """The report-type of a multipart/report (RFC 6522: "delivery-status", "disposition-notification",
    ...), lower case; "" for other mail."""
    if content_type_fact(message, Message.get_content_type) != "multipart/report":
        return ""
    return content_type_fact(message, report_type).lower()


def _is_bounce(report_type: str, from_addr: str) -> bool:
    if report_type == "delivery-status":
        return True
    local = from_addr.partition("@")[0]
    return local in ("mailer-daemon", "postmaster")


def parse_mail(raw: bytes, *, direction: Direction = "in", tenant: str = "default", mailbox: str = "",
               received_at: datetime | None = None, xheader_name: str = "X-Threadline-Ref",
               max_header_bytes: int = MAX_HEADER_BYTES, max_size: int = MAX_MESSAGE_BYTES) -> MailRecord:
    return _guarded(raw, True, direction=direction, tenant=tenant, mailbox=mailbox, received_at=received_at,
                    xheader_name=xheader_name, max_header_bytes=max_header_bytes, max_size=max_size)


def parse_mail_stdlib(raw: bytes, *, direction: Direction = "in", tenant: str = "default", mailbox: str = "",
                      received_at: datetime | None = None, xheader_name: str = "X-Threadline-Ref",
                      max_header_bytes: int = MAX_HEADER_BYTES, max_size: int = MAX_MESSAGE_BYTES) -> MailRecord:
    """:func:`parse_mail` with every mail through the stdlib parser: the reference the fast path
    (:mod:`pipeline.mail.fastmime`) is compared with, in tests and in ``threadline bench parse``."""
    return _guarded(raw, False, direction=direction, tenant=tenant, mailbox=mailbox, received_at=received_at,
                    xheader_name=xheader_name, max_header_bytes=max_header_bytes, max_size=max_size)


def mail_path(raw: bytes) -> str:
    """Which path parse_mail takes for ``raw``: "fast", "stdlib", or "rejected" (refused before
    parsing: empty, too large, no header block)."""
    try:
        _checked_header(raw, MAX_MESSAGE_BYTES, MAX_HEADER_BYTES)
    except MailParseError:
        return "rejected"
    return "fast" if not _mime_too_deep(raw) and simple_message(raw, _MAX_PARTS) is not None else "stdlib"


def _guarded(raw: bytes, fast: bool, **options) -> MailRecord:
    try:
        return _parse_mail(raw, fast, **options)
    except MailParseError:
        raise
    except Exception as exc:  # the last guard of the contract: callers dead-letter a mail, they never crash on one
        raise MailParseError("unparsable", f"{type(exc).__name__}: {exc}") from exc


def _message(raw: bytes, header: bytes, too_deep: bool, defects: list[str]) -> tuple[Message, bool]:
    """The parsed message, and whether its body was parsed (else only its header block)."""
    if not too_deep:
        try:
            return message_from_bytes(raw, policy=compat32), True
        except RecursionError:  # message/rfc822 nested past the interpreter's limit: no boundary shows it
            pass
    defects.append("mime_too_deep")
    # Header only: the ids, addresses and subject still correlate the mail; its body text is lost.
    return BytesHeaderParser(policy=compat32).parsebytes(header + b"\n\n"), False


def _checked_header(raw: bytes, max_size: int, max_header_bytes: int) -> bytes:
    if not raw or raw.isspace():
        raise MailParseError("empty", "the message has no bytes")
    if len(raw) > max_size:
        raise MailParseError("too_large", f"{len(raw)} bytes is over the limit of {max_size}")
    header = _header_block(raw)
    if len(header) > max_header_bytes:
        raise MailParseError("header_too_large", f"header block of {len(header)} bytes is over {max_header_bytes}")
    lowered = header.lower()
    if not _FIELD_LINE.search(header) or not any(field in lowered for field in _KNOWN_FIELDS):
        raise MailParseError("not_a_mail", "no header block with From, Date, Message-ID, Subject or To")
    return header


def _parse_mail(raw: bytes, fast: bool, *, direction: Direction, tenant: str, mailbox: str,
                received_at: datetime | None, xheader_name: str, max_header_bytes: int, max_size: int) -> MailRecord:
    header = _checked_header(raw, max_size, max_header_bytes)
    defects: list[str] = []
    too_deep = _mime_too_deep(raw)  # such mail is read for its header only, on either path
    found = simple_message(raw, _MAX_PARTS) if fast and not too_deep else None
    if found is not None:
        message, fields = found
        has_body = True
    else:
        message, has_body = _message(raw, header, too_deep, defects)
        if message.defects:
            defects.append("broken_mime")
        # One pass over the header fields: Message.get() scans and lower-cases every field per call.
        fields = {}
        for name, value in message.items():
            fields.setdefault(name.lower(), []).append(value)

    def first(name: str):
        values = fields.get(name)
        return values[0] if values else None

    id_headers = [_text(value, defects) for value in fields.get("message-id") or []]
    if len(id_headers) > 1:
        defects.append("duplicate_message_id_header")
    ids = _message_ids(id_headers[0]) if id_headers else []
    if ids:
        message_id = ids[0]
    else:
        defects.append("missing_message_id")
        message_id = f"<{hashlib.sha256(raw).hexdigest()[:32]}@missing.threadline>"

    in_reply_to = [i for i in _message_ids(_text(first("in-reply-to"), defects)) if i != message_id]
    references_header = " ".join(_text(value, defects) for value in fields.get("references") or [])
    references = [i for i in dict.fromkeys(_message_ids(references_header)) if i != message_id]
    from_name, from_addr = "", ""
    from_header = _decode_header(first("from"), defects)
    if from_header:
        name, address = _name_and_address(from_header)
        from_name, from_addr = name.strip(), address.strip().lower()
    body = _body_text(message, defects) if has_body else ""
    if len(body) > BODY_TEXT_LIMIT:
        body = body[:BODY_TEXT_LIMIT]
        defects.append("body_truncated")
    own, quoted, attribution = fingerprint_body(body)
    xref = _text(first(xheader_name.lower()), defects)
    subject = _decode_header(first("subject"), defects)
    report_type = _report_type(message)
    is_bounce = _is_bounce(report_type, from_addr)
    # Fields read only for the label: their encoding problems are no defect of the mail.
    automatic_headers = {name: [_text(value, []) for value in fields[name]] for name in AUTOMATIC_HEADERS & fields.keys()}
    return MailRecord(
        message_id=message_id,
        in_reply_to=tuple(dict.fromkeys(in_reply_to)),
        references=tuple(references),
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        to=_addresses(fields.get("to"), defects),
        cc=_addresses(fields.get("cc"), defects),
        bcc=_addresses(fields.get("bcc"), defects),
        reply_to=_addresses(fields.get("reply-to"), defects),
        date=_date(_text(first("date"), defects), defects),
        thread_index=_thread_index(_text(first("thread-index"), defects), defects),
        thread_topic=_decode_header(first("thread-topic"), defects),
        xref=xref.strip() if xref and xref.strip() else None,
        auto_submitted=(_text(first("auto-submitted"), defects) or "").strip().lower(),
        precedence=(_text(first("precedence"), defects) or "").strip().lower(),
        is_bounce=is_bounce,
        automatic=classify_automatic(automatic_headers, subject, is_bounce=is_bounce, report_type=report_type),
        body_text=body,
        own_shingles=own,
        quoted_shingles=quoted,
        attribution=attribution,
        direction=direction,
        tenant=tenant,
        mailbox=mailbox,
        received_at=received_at,
        size=len(raw),
        defects=tuple(dict.fromkeys(defects)),
    )


_FROM_DOMAIN = re.compile(rb"^From:[^\r\n]*@([A-Za-z0-9.-]+)", re.IGNORECASE | re.MULTILINE)


def mail_direction(raw: bytes, direction: str, own_domains: frozenset[str]) -> str:
    """``in``/``out`` as given; ``auto``: ``out`` when the From address is in one of our own
    domains (the organisation sent it), else ``in``."""
    if direction != "auto":
        return direction
    header_end = raw.find(b"\r\n\r\n")
    if header_end < 0:
        header_end = raw.find(b"\n\n")
    match = _FROM_DOMAIN.search(raw, 0, header_end if header_end >= 0 else len(raw))
    return "out" if match and match.group(1).decode("ascii").lower().rstrip(".") in own_domains else "in"
