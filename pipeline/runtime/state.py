"""The agents' table state: tenant-scoped keys, and a tenant's entries read back after a reset.

Keys: every entry of an agent's table belongs to one tenant and is keyed
``tenant \\x1f part [\\x1f part ...]`` (:func:`tenant_key`); the per-partition offset markers
(:func:`offset_key`, used by :class:`~pipeline.runtime.batch.OffsetMarkers`) belong to no tenant.

Resume: a step keeps each tenant's state in memory (an index, a tracker, a directory) and builds
it from the table on its first use of that tenant after a reset (a rebalance).
:class:`TenantEntries` reads the whole table once for every tenant, grouped by tenant prefix, and
hands each tenant's entries out once: N tenants cost one pass over the table, not N.
"""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

SEPARATOR = "\x1f"
_OFFSET_MARKER = "\x00offset" + SEPARATOR

T = TypeVar("T")


def tenant_key(tenant: str, *parts: str) -> str:
    return SEPARATOR.join((tenant, *parts))


def offset_key(partition: int) -> str:
    return f"{_OFFSET_MARKER}{partition}"


class TenantEntries:
    """The stored entries of each tenant of a table, read in one pass at the first :meth:`take`
    after construction or :meth:`reset`.

    A tenant's entries are handed out once, then dropped here: the step keeps the state it built
    from them, and writes made after the pass belong to tenants it has taken already (a step
    writes only the state it holds)."""

    def __init__(self, table: Mapping[str, bytes]) -> None:
        self.table = table
        self._unread: dict[str, list[bytes]] | None = None

    def take(self, tenant: str, decode: Callable[[bytes], T]) -> list[T]:
        """The tenant's stored values, decoded; they stay here until every one of them decodes,
        so a failing value fails every attempt alike instead of leaving the tenant empty."""
        if self._unread is None:
            self._unread = {}
            for key, value in list(self.table.items()):
                tenant_of, separator, _ = key.partition(SEPARATOR)
                if separator and value is not None and not key.startswith(_OFFSET_MARKER):
                    self._unread.setdefault(tenant_of, []).append(value)
        decoded = [decode(value) for value in self._unread.get(tenant, ())]
        self._unread.pop(tenant, None)
        return decoded

    def reset(self) -> None:
        self._unread = None
