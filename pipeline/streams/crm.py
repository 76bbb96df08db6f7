"""The CRM agent's batch step (Faust-free): ``crm.entities`` into per-tenant directories.

Each entity is kept in the worker's table (key ``tenant \\x1f type \\x1f id``, value: its
record as table state) and applied to the tenant's :class:`~pipeline.crm.CrmDirectory`, which the
correlator asks for the open record of an unmatched inbound mail's sender.  Entities and mail
arrive on different topics, so a mail sees the CRM as this worker knew it when the mail was
correlated; a replay can see a later CRM state (documented in docs/escalation.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import MutableMapping

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.topics import CRM_ENTITIES
from pipeline.crm import CrmDirectory
from pipeline.runtime.batch import BatchResult, OffsetMarkers, RawItem, decoded_records
from pipeline.runtime.state import TenantEntries, encode_state, tenant_key

AGENT = "crm"


class CrmProcessor:
    def __init__(self, codec: AvroCodec, table: MutableMapping[str, bytes]) -> None:
        self.codec = codec
        self.stored = TenantEntries(table)
        self.markers = OffsetMarkers(table)
        self._directories: dict[str, CrmDirectory] = {}

    def reset(self) -> None:
        self._directories.clear()
        self.stored.reset()
        self.markers.clear()

    def directory(self, tenant: str) -> CrmDirectory:
        directory = self._directories.get(tenant)
        if directory is None:
            directory = CrmDirectory()
            for record in self.stored.take(tenant):
                directory.apply({**record, "updated_at": datetime.fromisoformat(record["updated_at"])})
            self._directories[tenant] = directory
        return directory

    def regarding_for(self, tenant: str, address: str) -> str | None:
        return self.directory(tenant).regarding_for(address) if address else None

    def record_owner(self, tenant: str, record_id: str) -> str | None:
        record = self.directory(tenant).get("record", record_id)
        return record.owner if record is not None else None

    def process(self, items: list[RawItem], source_topic: str = CRM_ENTITIES) -> BatchResult:
        result = BatchResult()
        for item, record in decoded_records(items, self.markers, self.codec, CRM_ENTITIES, source_topic, AGENT, result):
            if self.directory(record["tenant"]).apply(record):
                key = tenant_key(record["tenant"], record["entity_type"], record["entity_id"])
                result.writes.setdefault(item.partition, {})[key] = None if record["deleted"] else encode_state(record)
                result.count(f"crm:{record['entity_type']}")
        self.markers.add_writes(items, result)
        return result
