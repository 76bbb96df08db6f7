"""What Threadline knows of the users' CRM (``crm.entities``): contacts, companies, records (cases,
leads) and owners, per tenant.  Pure: no Kafka, no Faust.

Used for the eWay-CRM behaviour: a new inbound mail that nothing correlates is still linked to a
business record by its sender — contact -> company -> the newest open record of that company
(or of the contact itself) — and that record's owner owns the mail.  Versions of one entity are
applied last-writer-wins by ``updated_at`` (ties: the later one applied), so a redelivered or
replayed entity changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

OPEN_STATUSES = frozenset({"open", "new", "active", "in progress", "waiting"})


@dataclass(frozen=True, slots=True)
class Entity:
    entity_type: str  # contact, company, record, owner
    entity_id: str
    name: str
    email: str | None
    company_id: str | None
    owner: str | None
    status: str | None
    updated_at: datetime

    @classmethod
    def from_record(cls, record: dict) -> Entity:
        return cls(entity_type=record["entity_type"], entity_id=record["entity_id"], name=record["name"],
                   email=(record.get("email") or "").strip().lower() or None, company_id=record.get("company_id"),
                   owner=record.get("owner"), status=record.get("status"), updated_at=record["updated_at"])

    @property
    def is_open_record(self) -> bool:
        return self.entity_type == "record" and (self.status or "open").strip().lower() in OPEN_STATUSES


class CrmDirectory:
    """One tenant's entities and the lookups derived from them."""

    def __init__(self) -> None:
        self._entities: dict[tuple[str, str], Entity] = {}
        # Derived lookups, so that a mail costs a dict read, not a scan of the CRM.
        self._contacts_by_email: dict[str, set[str]] = {}
        self._records_by_holder: dict[str, set[str]] = {}  # company or contact id -> record ids

    def apply(self, record: dict) -> bool:
        """Apply one ``crm.entities`` record; returns whether it changed anything."""
        key = (record["entity_type"], record["entity_id"])
        current = self._entities.get(key)
        if current is not None and record["updated_at"] < current.updated_at:
            return False  # an older version arriving late
        entity = None if record.get("deleted") else Entity.from_record(record)
        if current == entity:
            return False
        if current is not None:
            self._unindex(current)
            del self._entities[key]
        if entity is not None:
            self._entities[key] = entity
            self._index(entity)
        return True

    def _index(self, entity: Entity) -> None:
        if entity.entity_type == "contact" and entity.email:
            self._contacts_by_email.setdefault(entity.email, set()).add(entity.entity_id)
        elif entity.entity_type == "record" and entity.company_id:
            self._records_by_holder.setdefault(entity.company_id, set()).add(entity.entity_id)

    def _unindex(self, entity: Entity) -> None:
        if entity.entity_type == "contact" and entity.email:
            self._contacts_by_email.get(entity.email, set()).discard(entity.entity_id)
        elif entity.entity_type == "record" and entity.company_id:
            self._records_by_holder.get(entity.company_id, set()).discard(entity.entity_id)

    def get(self, entity_type: str, entity_id: str) -> Entity | None:
        return self._entities.get((entity_type, entity_id))

    def contact_for(self, address: str) -> Entity | None:
        """The contact with this address (the most recently updated one when several share it)."""
        ids = self._contacts_by_email.get(address.strip().lower(), ())
        found = [self._entities[("contact", i)] for i in ids]
        return max(found, key=lambda e: (e.updated_at, e.entity_id)) if found else None

    def open_record_for(self, address: str) -> Entity | None:
        """The newest open record of the sender's contact or company (None when there is none)."""
        contact = self.contact_for(address)
        if contact is None:
            return None
        holders = {contact.entity_id} | ({contact.company_id} if contact.company_id else set())
        records = [self._entities[("record", i)] for holder in holders for i in self._records_by_holder.get(holder, ())]
        records = [e for e in records if e.is_open_record]
        return max(records, key=lambda e: (e.updated_at, e.entity_id)) if records else None

    def regarding_for(self, address: str) -> str | None:
        record = self.open_record_for(address)
        return record.entity_id if record is not None else None
