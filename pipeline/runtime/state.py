"""The agents' table state: tenant-scoped keys, the one value encoding (UTF-8 JSON: ``threadline
erase`` finds addresses in the changelogs as bytes), and each tenant's entries read back in one
pass after a reset.  Upgrades and the resume: docs/architecture.md, runtime.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping

SEPARATOR = "\x1f"
_OFFSET_MARKER = "\x00offset" + SEPARATOR


class StateFormatError(ValueError):
    """A table value this version cannot read (an older version's, or damaged): stops the worker."""


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
        raise StateFormatError(f"table entry {key!r} is not this version's state ({type(exc).__name__}: {exc}): "
                               "an older version's or damaged; a new worker.generation rebuilds every table "
                               "from the topics (docs/architecture.md, runtime)") from exc


class TenantEntries:
    """Each tenant's entries, read in one pass at the first :meth:`take` after a reset and handed
    out once: the step keeps what it builds from them (and writes only tenants it has taken)."""

    def __init__(self, table: Mapping[str, bytes]) -> None:
        self.table = table
        self._unread: dict[str, list[tuple[str, bytes]]] | None = None

    def take(self, tenant: str) -> list[Any]:
        """Decoded; kept until all of them decode, so a bad value fails every attempt alike."""
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
