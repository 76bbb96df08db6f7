"""Outlook / Exchange ``Thread-Index`` (PidTagConversationIndex, [MS-OXOMSG] 2.2.1.3).

Layout of the decoded bytes: a 22-byte header block (1 reserved byte, the 5 high-order bytes of
a FILETIME, a 16-byte GUID) then one 5-byte child block per reply.  Every mail of a conversation
shares the header block, so its hex is the conversation key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

HEADER_BYTES = 22
CHILD_BYTES = 5
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


class ThreadIndexError(ValueError):
    """Bytes that are not a Thread-Index."""


@dataclass(frozen=True, slots=True)
class ThreadIndex:
    header_time: datetime
    guid: uuid.UUID
    child_deltas: tuple[timedelta, ...]

    @property
    def child_count(self) -> int:
        return len(self.child_deltas)


def _well_formed(data: bytes) -> bool:
    return len(data) >= HEADER_BYTES and (len(data) - HEADER_BYTES) % CHILD_BYTES == 0


def conversation_key(data: bytes | None) -> str | None:
    """Hex of the header block, or None when ``data`` is not a well-formed Thread-Index."""
    return data[:HEADER_BYTES].hex() if data and _well_formed(data) else None


def _filetime(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("aware datetimes only")
    delta = moment - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def decode(data: bytes) -> ThreadIndex:
    if not _well_formed(data):
        raise ThreadIndexError(f"{len(data)} bytes is no Thread-Index (22 + 5n bytes)")
    # The header keeps bits 63..24 of the FILETIME (the low 3 bytes are dropped).
    header_ticks = int.from_bytes(data[1:6], "big") << 24
    deltas = []
    for offset in range(HEADER_BYTES, len(data), CHILD_BYTES):
        block = int.from_bytes(data[offset:offset + CHILD_BYTES], "big")
        coarse = block >> 39  # high bit 0: the delta is in units of 2**18 ticks, else 2**23
        units = (block >> 8) & ((1 << 31) - 1)
        deltas.append(timedelta(microseconds=(units << (23 if coarse else 18)) / 10))
    try:
        header_time = _FILETIME_EPOCH + timedelta(microseconds=header_ticks / 10)
    except OverflowError:  # garbage header bytes: a time past the year 9999
        raise ThreadIndexError("Thread-Index header time is out of range") from None
    return ThreadIndex(
        header_time=header_time,
        guid=uuid.UUID(bytes=bytes(data[6:22])),
        child_deltas=tuple(deltas),
    )


def encode_new(guid: uuid.UUID, moment: datetime) -> bytes:
    """The Thread-Index of a new conversation started at ``moment``."""
    ticks = _filetime(moment) >> 24
    return b"\x01" + ticks.to_bytes(5, "big") + guid.bytes


def encode_child(parent: bytes, moment: datetime) -> bytes:
    """The Thread-Index of a reply at ``moment`` to the mail whose Thread-Index is ``parent``."""
    if not _well_formed(parent):
        raise ThreadIndexError("parent is no Thread-Index")
    parsed = decode(parent)
    try:
        last = parsed.header_time + sum(parsed.child_deltas, timedelta())
    except OverflowError:
        raise ThreadIndexError("parent Thread-Index runs past the year 9999") from None
    ticks = max(0, _filetime(moment) - _filetime(last))
    if ticks < 1 << 49:  # fits 31 bits of 2**18-tick units
        block = (ticks >> 18) << 8
    else:
        block = (1 << 39) | (min(ticks >> 23, (1 << 31) - 1) << 8)
    return parent + block.to_bytes(CHILD_BYTES, "big")
