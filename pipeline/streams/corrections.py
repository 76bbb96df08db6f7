"""The corrections agent's batch step (Faust-free): ``corrections`` into per-tenant books.

Each tenant's corrections in force are kept in the worker's table, one entry per corrected mail
(key ``tenant \\x1f message id``, value: its record as table state), and in the tenant's
:class:`~pipeline.correlation.corrections.CorrectionBook`, which the tenant's correlator reads
for every mail it correlates.  A correction that comes after its mail is applied to the index by
``apply`` (the mail processor's ``apply_correction``), whose corrected ``mail.correlated`` records
and index writes go out with the batch.  ``corrections`` is keyed by tenant like ``mail.raw``,
so a tenant's corrections and mail are on the same partition of this worker.  A new generation
reads the topic from the beginning, so a replay applies every correction again.
"""

from __future__ import annotations

from typing import Callable, MutableMapping

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import SourcePosition
from pipeline.contracts.topics import CORRECTIONS
from pipeline.correlation.corrections import Correction, CorrectionBook, CorrectionError
from pipeline.runtime.batch import BatchResult, OffsetMarkers, RawItem, add_dead_letter, decoded_records
from pipeline.runtime.state import TenantStates, encode_state, tenant_key

AGENT = "corrections"
# apply(correction, partition, result): apply it to the mail already indexed, adding the outputs
# and index writes to ``result``.
Apply = Callable[[Correction, int, BatchResult], None]


def _resumed_book(_tenant: str, records: list[dict]) -> CorrectionBook:
    return CorrectionBook(Correction.from_record(record) for record in records)


class CorrectionsProcessor:
    def __init__(self, codec: AvroCodec, table: MutableMapping[str, bytes], apply: Apply | None = None) -> None:
        self.codec = codec
        self.apply = apply
        self.markers = OffsetMarkers(table)
        self._books: TenantStates[CorrectionBook] = TenantStates(table, _resumed_book)

    def reset(self) -> None:
        self._books.reset()
        self.markers.clear()

    def book_of(self, tenant: str) -> CorrectionBook:
        """The tenant's corrections in force (the same object as more arrive)."""
        return self._books.of(tenant)

    def process(self, items: list[RawItem], source_topic: str = CORRECTIONS) -> BatchResult:
        result = BatchResult()
        for item, record in decoded_records(items, self.markers, self.codec, CORRECTIONS, source_topic, AGENT, result):
            try:
                correction = Correction.from_record(record)
            except CorrectionError as exc:  # written by another client than `threadline correct`
                add_dead_letter(self.codec, item, SourcePosition(source_topic, item.partition, item.offset),
                                "invalid_correction", str(exc), AGENT, result)
                continue
            if not self._books.of(correction.tenant).add(correction):
                result.count("correction:superseded")  # the mail has a later one
                continue
            key = tenant_key(correction.tenant, correction.message_id)
            result.writes.setdefault(item.partition, {})[key] = encode_state(record)
            result.count(f"correction:{correction.action.value.lower()}")
            if self.apply is not None:
                self.apply(correction, item.partition, result)
        self.markers.add_writes(items, result)
        return result
