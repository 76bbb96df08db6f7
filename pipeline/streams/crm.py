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
from pipeline.runtime.state import TenantStates, encode_state, tenant_key

AGENT = "crm"


def _resumed_directory(_tenant: str, records: list[dict]) -> CrmDirectory:
    directory = CrmDirectory()
    for record in records:
        directory.apply({**record, "updated_at": datetime.fromisoformat(record["updated_at"])})
    return directory


class CrmProcessor:
    def __init__(self, codec: AvroCodec, table: MutableMapping[str, bytes]) -> None:
        self.codec = codec
        self.markers = OffsetMarkers(table)
        self._directories: TenantStates[CrmDirectory] = TenantStates(table, _resumed_directory)

    def reset(self) -> None:
        self._directories.reset()
        self.markers.clear()

    def regarding_for(self, tenant: str, address: str) -> str | None:
        return self._directories.of(tenant).regarding_for(address) if address else None

    def record_owner(self, tenant: str, record_id: str) -> str | None:
        record = self._directories.of(tenant).get("record", record_id)
        return record.owner if record is not None else None

    def process(self, items: list[RawItem], source_topic: str = CRM_ENTITIES) -> BatchResult:
        result = BatchResult()
        for item, record in decoded_records(items, self.markers, self.codec, CRM_ENTITIES, source_topic, AGENT, result):
            if self._directories.of(record["tenant"]).apply(record):
                key = tenant_key(record["tenant"], record["entity_type"], record["entity_id"])
                result.writes.setdefault(item.partition, {})[key] = None if record["deleted"] else encode_state(record)
                result.count(f"crm:{record['entity_type']}")
        self.markers.add_writes(items, result)
        return result
