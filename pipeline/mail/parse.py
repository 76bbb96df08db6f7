"""RFC 5322 bytes -> :class:`MailRecord`.

Never raises anything but :class:`MailParseError` (with a stable reason code for the dead-letter
topic): empty input, no header block, a header block or a message over its limit.  Everything
else that is odd (bad encodings, broken MIME, missing ids, bad dates) is noted in ``defects``
and parsing goes on, because a real mailbox holds all of that.

The stdlib ``compat32`` policy is used: it is several times faster than the modern policy and
never raises on malformed headers; headers are decoded here explicitly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
from datetime import datetime, timezone
from email import message_from_bytes
from email.header import decode_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from html.parser import HTMLParser

from pipeline.mail.content import fingerprint_body
from pipeline.mail.record import BODY_TEXT_LIMIT, Direction, MailParseError, MailRecord

MAX_HEADER_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
_MAX_PARTS = 200  # a MIME bomb of thousands of parts is walked no further

_ID = re.compile(r"<([^<>\s]{1,998})>")
_BARE_ID = re.compile(r"^\s*([^<>\s@]{1,900}@[^<>\s]{1,900})\s*$")
_SPACE = re.compile(r"\s+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_LINE = re.compile(rb"^[!-9;-~]{1,76}:", re.MULTILINE)
_KNOWN_FIELDS = (b"from:", b"date:", b"message-id:", b"subject:", b"to:", b"received:", b"return-path:")


def _header_block(raw: bytes) -> bytes:
    end = _HEADER_END.search(raw)
    return raw if end is None else raw[: end.start()]


def _decode_header(value: str | None, defects: list[str]) -> str:
    """RFC 2047 words in any charset; unknown charsets fall back to latin-1, never raise."""
    if not value:
        return ""
    try:
        parts = decode_header(value)
    except Exception:  # malformed encoded words: keep the raw text
        defects.append("bad_encoding")
        return _SPACE.sub(" ", value).strip()
    text = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            text.append(chunk)
            continue
        try:
            text.append(chunk.decode(charset or "ascii"))
        except (LookupError, UnicodeDecodeError):
            if "bad_encoding" not in defects:
                defects.append("bad_encoding")
            text.append(chunk.decode("latin-1"))
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


# One address in its everyday forms: "Name <a@b>" or "a@b", without quotes or comments.
_SIMPLE_ADDRESS = re.compile(r"^\s*(?:[^<>@\"(),]*<\s*([^<>\s@,]+@[^<>\s@,]+)\s*>|([^<>\s@,\"]+@[^<>\s@,\"]+))\s*$")


def _simple_addresses(decoded: list[str]) -> list[str] | None:
    """The addresses when every item is in an everyday form; None sends it to the full parser
    (which is ~10x slower and needed only for quotes, comments and groups)."""
    found = []
    for value in decoded:
        for item in value.split(","):
            if not item.strip():
                continue
            match = _SIMPLE_ADDRESS.match(item)
            if match is None:
                return None
            found.append(match.group(1) or match.group(2))
    return found


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


def _date(value: str | None, defects: list[str]) -> datetime | None:
    if not value:
        defects.append("missing_date")
        return None
    try:
        parsed = parsedate_to_datetime(value)
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


class _TextFromHtml(HTMLParser):
    """Visible text of an HTML part with line breaks where blocks end."""

    _BREAKS = {"br", "p", "div", "tr", "li", "blockquote", "h1", "h2", "h3", "h4", "pre", "table"}
    _HIDDEN = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextFromHtml()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is lenient; this guards against the unforeseen
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    return "".join(parser.parts)


def _part_text(part: Message, defects: list[str]) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        defects.append("broken_mime")
        return ""
    if part.defects:  # e.g. invalid base64, noted on the part while decoding it
        defects.append("broken_mime")
    if payload is None:
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, errors="replace")
    except (LookupError, ValueError):  # unknown charset, or a codec such as idna that cannot "replace"
        defects.append("bad_encoding")
        return payload.decode("latin-1")


def _body_text(message: Message, defects: list[str]) -> str:
    html_part = None
    for count, part in enumerate(message.walk()):
        if count >= _MAX_PARTS:
            defects.append("too_many_parts")
            break
        if part.defects:  # broken MIME inside a nested part, noted while parsing it
            defects.append("broken_mime")
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        if part.get_content_disposition() == "attachment":
            continue
        if content_type == "text/plain":
            return _part_text(part, defects)
        if content_type == "text/html" and html_part is None:
            html_part = part
    return html_to_text(_part_text(html_part, defects)) if html_part is not None else ""


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


def _is_bounce(message: Message, from_addr: str) -> bool:
    if message.get_content_type() == "multipart/report" and (
        (message.get_param("report-type") or "").lower() == "delivery-status"
    ):
        return True
    local = from_addr.partition("@")[0]
    return local in ("mailer-daemon", "postmaster")


def parse_mail(raw: bytes, *, direction: Direction = "in", tenant: str = "default", mailbox: str = "",
               received_at: datetime | None = None, xheader_name: str = "X-Threadline-Ref",
               max_header_bytes: int = MAX_HEADER_BYTES, max_size: int = MAX_MESSAGE_BYTES) -> MailRecord:
    if not raw or not raw.strip():
        raise MailParseError("empty", "the message has no bytes")
    if len(raw) > max_size:
        raise MailParseError("too_large", f"{len(raw)} bytes is over the limit of {max_size}")
    header = _header_block(raw)
    if len(header) > max_header_bytes:
        raise MailParseError("header_too_large", f"header block of {len(header)} bytes is over {max_header_bytes}")
    lowered = header.lower()
    if not _FIELD_LINE.search(header) or not any(field in lowered for field in _KNOWN_FIELDS):
        raise MailParseError("not_a_mail", "no header block with From, Date, Message-ID, Subject or To")
    try:
        message = message_from_bytes(raw, policy=compat32)
    except Exception as exc:  # the compat32 parser is lenient; this guards against the unforeseen
        raise MailParseError("unparsable", f"{type(exc).__name__}: {exc}") from exc

    defects: list[str] = []
    if message.defects:
        defects.append("broken_mime")
    # One pass over the header fields: Message.get() scans and lower-cases every field per call.
    fields: dict[str, list] = {}
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
        name, address = parseaddr(from_header)
        from_name, from_addr = name.strip(), address.strip().lower()
    body = _body_text(message, defects)
    if len(body) > BODY_TEXT_LIMIT:
        body = body[:BODY_TEXT_LIMIT]
        defects.append("body_truncated")
    own, quoted, attribution = fingerprint_body(body)
    xref = _text(first(xheader_name.lower()), defects)
    return MailRecord(
        message_id=message_id,
        in_reply_to=tuple(dict.fromkeys(in_reply_to)),
        references=tuple(references),
        subject=_decode_header(first("subject"), defects),
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
        is_bounce=_is_bounce(message, from_addr),
        body_text=body,
        own_line_hashes=own,
        quoted_line_hashes=quoted,
        attribution=attribution,
        direction=direction,
        tenant=tenant,
        mailbox=mailbox,
        received_at=received_at,
        size=len(raw),
        defects=tuple(dict.fromkeys(defects)),
    )
