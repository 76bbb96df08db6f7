"""The agents' table state: tenant-scoped keys, the one value encoding (UTF-8 JSON: ``threadline
erase`` finds addresses in the changelogs as bytes), and each tenant's entries read back in one
pass after a reset.  Upgrades and the resume: docs/architecture.md, runtime.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable, Generic, Mapping, TypeVar

import orjson

SEPARATOR = "\x1f"
_OFFSET_MARKER = "\x00offset" + SEPARATOR
S = TypeVar("S")


class StateFormatError(ValueError):
    """A table value this version cannot read (an older version's, or damaged): stops the worker."""


def tenant_key(tenant: str, *parts: str) -> str:
    return SEPARATOR.join((tenant, *parts))


def offset_key(partition: int) -> str:
    return f"{_OFFSET_MARKER}{partition}"


def _datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not table state")


# orjson writes the same compact UTF-8 JSON as json.dumps(separators=(",", ":"), ensure_ascii=False)
# at a tenth of its cost (an index entry: 31 -> 3 us, one per mail): non-string keys as strings,
# datetimes (passed through) as isoformat().
_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def encode_state(value: Any) -> bytes:
    # datetimes as ISO strings; anything else not JSON raises TypeError
    try:
        return orjson.dumps(value, default=_datetime, option=_ORJSON)
    except TypeError:  # orjson's limits (an integer over 64 bits), or not JSON at all: json says which
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=datetime.isoformat).encode()


def decode_state(key: str, value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except ValueError:
        pass  # NaN, which json.dumps wrote; or not this version's state: json says why
    try:
        return json.loads(value)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
        raise StateFormatError(f"table entry {key!r} is not this version's state ({type(exc).__name__}: {exc}): "
                               "an older version's or damaged; a new worker.generation rebuilds every table "
                               "from the topics (docs/architecture.md, runtime)") from exc


class TenantStates(dict[str, S], Generic[S]):
    """Each tenant's state in memory (an index, a tracker, a directory), resumed on the tenant's
    first use after a reset by ``resume(tenant, entries, *context)`` from its decoded table entries.
    The first use reads every tenant's entries in one pass over the table, not one per tenant; the
    writes after that pass are of tenants already resumed (a step writes only the state it holds)."""

    def __init__(self, table: Mapping[str, bytes], resume: Callable[..., S]) -> None:
        super().__init__()
        self.table = table
        self.resume = resume
        self._unread: dict[str, list[tuple[str, bytes]]] | None = None

    def of(self, tenant: str, *context: Any) -> S:
        if tenant not in self:
            self[tenant] = self.resume(tenant, self._entries(tenant), *context)
            # Dropped only now: an entry that fails to decode or to resume fails every attempt alike.
            self._unread.pop(tenant, None)
        return self[tenant]

    def reset(self) -> None:
        self.clear()
        self._unread = None

    def _entries(self, tenant: str) -> list[Any]:
        if self._unread is None:
            self._unread = {}
            for key, value in list(self.table.items()):
                tenant_of, separator, _ = key.partition(SEPARATOR)
                if separator and value is not None and not key.startswith(_OFFSET_MARKER):
                    self._unread.setdefault(tenant_of, []).append((key, value))
        return [decode_state(key, value) for key, value in self._unread.get(tenant, ())]
