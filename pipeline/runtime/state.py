"""The agents' table state (docs/architecture.md, runtime): tenant-scoped keys, the one value
encoding, and a tenant's entries read back after a reset.

Keys are ``tenant \\x1f part [\\x1f part ...]`` (:func:`tenant_key`); the offset markers
(:func:`offset_key`) belong to no tenant.  Values are compact UTF-8 JSON, datetimes as ISO strings
(UTF-8, not ``\\u`` escapes: ``threadline erase`` finds addresses in the changelogs as bytes).
New code on the same ``worker.generation`` reads the tables the old code wrote, so a value's shape
changes only in a way its step still reads, or with a new generation; a value that is not this
encoding raises :class:`StateFormatError`, which stops the worker before anything is committed.

After a reset a step rebuilds a tenant's state from the table on first use (its resume):
:class:`TenantEntries` reads the table once for every tenant, not once per tenant.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping

SEPARATOR = "\x1f"
_OFFSET_MARKER = "\x00offset" + SEPARATOR


class StateFormatError(ValueError):
    """A table value this version cannot read: written by an older version, or damaged."""


def tenant_key(tenant: str, *parts: str) -> str:
    return SEPARATOR.join((tenant, *parts))


def offset_key(partition: int) -> str:
    return f"{_OFFSET_MARKER}{partition}"


def encode_state(value: Any) -> bytes:
    # default: datetimes as ISO strings; anything else not JSON raises TypeError
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=datetime.isoformat).encode()


def decode_state(key: str, value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
        raise StateFormatError(
            f"table entry {key!r} is not in the state encoding of this version ({type(exc).__name__}: {exc}): "
            "the table was written by an older version or is damaged; a new worker.generation rebuilds "
            "every table from the topics (docs/architecture.md, runtime)") from exc


class TenantEntries:
    """Each tenant's stored entries, read in one pass at the first :meth:`take` after a reset and
    handed out once: the step keeps the state it builds from them, and the writes made after the
    pass belong to tenants it has taken (a step writes only state it holds)."""

    def __init__(self, table: Mapping[str, bytes]) -> None:
        self.table = table
        self._unread: dict[str, list[tuple[str, bytes]]] | None = None

    def take(self, tenant: str) -> list[Any]:
        """The tenant's stored values, decoded; they stay here until every one of them decodes,
        so a failing value fails every attempt alike instead of leaving the tenant empty."""
        if self._unread is None:
            self._unread = {}
            for key, value in list(self.table.items()):
                tenant_of, separator, _ = key.partition(SEPARATOR)
                if separator and value is not None and not key.startswith(_OFFSET_MARKER):
                    self._unread.setdefault(tenant_of, []).append((key, value))
        decoded = [decode_state(key, value) for key, value in self._unread.get(tenant, ())]
        self._unread.pop(tenant, None)
        return decoded

    def reset(self) -> None:
        self._unread = None
