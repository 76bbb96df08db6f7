"""Suppressions: addresses that must not get campaign mail any more (unsubscribed), per tenant.

The tracking endpoint adds an address when its one-click unsubscribe link is POSTed; every
``send_campaign`` consults the store before each mail, so an unsubscribe is honoured by the next
send (and by a running one).  Addresses compare case-insensitively.

:class:`JsonlSuppressionStore` keeps one JSON object per line in
``{worker.data_dir}/{campaigns.suppression_file}``::

    {"tenant": "acme", "address": "ann@example.com", "reason": "unsubscribed",
     "at": "2026-03-02T09:00:00+00:00", "campaign_id": "spring-26", "message_id": "<...>"}

Each addition is one ``write`` of one line to a file opened for appending, then ``fsync``: the
endpoint and a running send (which only reads) can share the file.  A torn last line (a crash
while writing) is ignored; the file is only ever appended to.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from pipeline.durable import append_line
from pipeline.settings import Settings

UNSUBSCRIBED = "unsubscribed"


def _norm(address: str) -> str:
    return address.strip().lower()


class SuppressionStore(Protocol):
    def is_suppressed(self, tenant: str, address: str) -> bool: ...

    def add(self, tenant: str, address: str, *, reason: str = UNSUBSCRIBED, campaign_id: str | None = None,
            message_id: str | None = None) -> bool:
        """Record the address; False when it was suppressed already."""
        ...


class MemorySuppressionStore:
    def __init__(self) -> None:
        self._entries: set[tuple[str, str]] = set()

    def is_suppressed(self, tenant: str, address: str) -> bool:
        return (tenant, _norm(address)) in self._entries

    def add(self, tenant: str, address: str, *, reason: str = UNSUBSCRIBED, campaign_id: str | None = None,
            message_id: str | None = None) -> bool:
        key = (tenant, _norm(address))
        new = key not in self._entries
        self._entries.add(key)
        return new


class JsonlSuppressionStore:
    """The JSONL file (see the module doc); reads only what was appended since the last look."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: set[tuple[str, str]] = set()
        self._offset = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> JsonlSuppressionStore:
        return cls(settings.worker.data_dir.resolve() / settings.campaigns.suppression_file)

    def _refresh(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._offset:  # replaced by a shorter file: read it again
            self._entries.clear()
            self._offset = 0
        if size == self._offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(size - self._offset)
        complete = chunk.rfind(b"\n") + 1  # an unfinished last line is read next time
        for line in chunk[:complete].splitlines():
            try:
                entry = json.loads(line)
                self._entries.add((str(entry["tenant"]), _norm(str(entry["address"]))))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line
        self._offset += complete

    def is_suppressed(self, tenant: str, address: str) -> bool:
        with self._lock:
            self._refresh()
            return (tenant, _norm(address)) in self._entries

    def addresses(self, tenant: str) -> set[str]:
        with self._lock:
            self._refresh()
            return {address for t, address in self._entries if t == tenant}

    def add(self, tenant: str, address: str, *, reason: str = UNSUBSCRIBED, campaign_id: str | None = None,
            message_id: str | None = None) -> bool:
        with self._lock:
            self._refresh()
            key = (tenant, _norm(address))
            if key in self._entries:
                return False
            line = json.dumps({"tenant": tenant, "address": key[1], "reason": reason,
                               "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "campaign_id": campaign_id, "message_id": message_id}, ensure_ascii=False) + "\n"
            append_line(self.path, line.encode("utf-8"))
            self._entries.add(key)  # read back by _refresh too: a set, so no harm
            return True
