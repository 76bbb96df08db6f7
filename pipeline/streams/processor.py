"""The correlator's batch step, free of Faust so that it is tested and benchmarked directly.

One batch of ``mail.raw`` records in; out come ``mail.correlated``, ``mail.untracked``,
``mail.responses`` and ``deadletter`` records and the index's table writes (the batch-step
contract of :mod:`pipeline.runtime.batch`: a crash redelivers against an index that has not seen it).

Each partition's table holds one entry per indexed mail (key ``tenant \\x1f message id``, value:
the entry and the ``mail.raw`` offset it came from) and one marker with the last applied source
offset.  Records delivered again after the table was written are skipped instead of being
correlated twice: by the marker, or, when a crash lost the marker's write but not the entry's,
by the entry's own source offset.

People's corrections (``corrections``, kept by :mod:`pipeline.streams.corrections`) are in each
tenant's correlator: a mail is correlated with them, and a correction that comes after its mail
is applied to the index (:meth:`MailProcessor.apply_correction`); either way the corrected
decisions go out as ``mail.correlated`` records of the same event id, which replace the earlier
ones downstream (the newest record of a mail wins).
"""

from __future__ import annotations

import traceback
from typing import Callable, Iterator, MutableMapping

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.records import (
    SourcePosition, bounce_event_record, correlated_record, response_record, untracked_record,
)
from pipeline.contracts.topics import MAIL_CORRELATED, MAIL_RAW, MAIL_RESPONSES, MAIL_UNTRACKED, TRACKING_EVENTS
from pipeline.correlation.corrections import Correction, CorrectionBook
from pipeline.correlation.engine import Correlator
from pipeline.correlation.model import Correlation, IndexedMail
from pipeline.errors import RejectedInput
from pipeline.mail.bounce import Bounce
from pipeline.mail.record import MailRecord
from pipeline.runtime.batch import BatchResult, OffsetMarkers, Output, RawItem, add_dead_letter
from pipeline.runtime.state import StateFormatError, TenantStates, encode_state, tenant_key
from pipeline.settings import Settings
from pipeline.streams.parsing import MailReader, ParseFailed, Parsed, ParsePool

AGENT = "correlator"
INDEX_TABLE = "correlation-index"


class TableIndexStore:
    """The engine's :class:`~pipeline.correlation.index.MailStore` on a table: holds the tenant's
    entries read from the table after a reset until its index is built from them; writes are
    buffered until the batch's outputs are out.  Each entry remembers the source offset of its mail
    (``current_offset`` when it was put)."""

    def __init__(self, stored: list[dict], tenant: str, partition: int) -> None:
        self.stored = stored
        self.tenant = tenant
        self.partition = partition
        self.pending: dict[str, bytes | None] = {}
        self.current_offset = -1
        self.source_offsets: dict[str, int] = {}  # message id -> offset of its mail.raw record

    def put(self, entry: IndexedMail) -> None:
        # An entry put again (a correction moved it) still comes from its own mail's record.
        offset = self.source_offsets.setdefault(entry.message_id, self.current_offset)
        self.pending[tenant_key(self.tenant, entry.message_id)] = encode_state({"offset": offset, "entry": entry.to_dict()})

    def delete(self, message_id: str) -> None:
        self.source_offsets.pop(message_id, None)
        self.pending[tenant_key(self.tenant, message_id)] = None

    def entries(self) -> Iterator[IndexedMail]:
        stored, self.stored = self.stored, []  # the index keeps them from here on
        for data in stored:
            entry = IndexedMail.from_dict(data["entry"])
            self.source_offsets[entry.message_id] = data["offset"]
            yield entry

    def take_pending(self) -> dict[str, bytes | None]:
        pending, self.pending = self.pending, {}
        return pending


class MailProcessor:
    """Correlates batches of ``mail.raw`` for every tenant of the partitions this worker holds."""

    def __init__(self, settings: Settings, codec: AvroCodec, table: MutableMapping[str, bytes], *,
                 regarding_for: Callable[[str, str], str | None] | None = None,
                 corrections_for: Callable[[str], CorrectionBook] | None = None) -> None:
        """``regarding_for(tenant, sender)``: the business record of an unmatched inbound mail's
        sender (the CRM directory), when known; ``corrections_for(tenant)``: the tenant's
        corrections in force (the corrections agent's book, which grows as corrections arrive)."""
        self.settings = settings
        self.codec = codec
        self.regarding_for = regarding_for
        self.corrections_for = corrections_for
        self.generation = settings.worker.generation
        self._correlators: TenantStates[Correlator] = TenantStates(table, self._resume)
        self._stores: dict[str, TableIndexStore] = {}
        self.markers = OffsetMarkers(table)
        self.reader = MailReader(settings, codec)

    def reset(self) -> None:
        """Forget derived state (after a rebalance): indexes are rebuilt from the table on demand."""
        self._correlators.reset()
        self._stores.clear()
        self.markers.clear()

    def sender_of(self, tenant: str, message_id: str) -> str | None:
        """Who sent an outbound mail this worker has indexed (None when unknown here)."""
        correlator = self._correlators.get(tenant)
        entry = correlator.index.get(message_id) if correlator is not None else None
        return entry.from_addr or None if entry is not None and entry.direction == "out" else None

    def _bounce_events(self, bounce: Bounce | None, correlator: Correlator, mail: MailRecord,
                       result: BatchResult) -> None:
        """A delivery failure becomes one ``tracking.events`` record (kind bounce) per failed
        recipient of the original mail, with the original's campaign when it is one."""
        if bounce is None or not bounce.original_message_id:
            return
        original = correlator.index.get(bounce.original_message_id)
        campaign_id = original.campaign_id if original is not None else None
        for recipient in bounce.recipients:
            event = bounce_event_record(mail.tenant, bounce.original_message_id, recipient, campaign_id,
                                        mail.event_time)
            result.outputs.append(Output(TRACKING_EVENTS, mail.tenant.encode(),
                                         self.codec.encode(TRACKING_EVENTS, event)))
            result.count(f"bounce:{recipient.kind}")

    def _resume(self, tenant: str, entries: list[dict], partition: int) -> Correlator:
        store = self._stores[tenant] = TableIndexStore(entries, tenant, partition)
        resolver = None
        if self.regarding_for is not None:
            lookup = self.regarding_for
            resolver = (lambda mail: lookup(tenant, mail.from_addr) if mail.direction == "in" else None)
        return Correlator(self.settings.correlation, store, tenant=tenant, untracked=self.settings.untracked,
                          generation=self.generation, regarding_resolver=resolver,
                          corrections=self.corrections_for(tenant) if self.corrections_for is not None else None)

    def apply_correction(self, correction: Correction, partition: int, result: BatchResult) -> None:
        """Apply a correction that came after its mail to the tenant's index: the corrected
        ``mail.correlated`` records to ``result``'s outputs, the index writes to its writes for
        this table (:data:`INDEX_TABLE`)."""
        correlator = self._correlators.of(correction.tenant, partition)
        store = self._stores[correction.tenant]
        self._corrected(correlator.correct(correction), store, result)
        pending = store.take_pending()
        if pending:
            result.other_writes.setdefault(INDEX_TABLE, {}).setdefault(partition, {}).update(pending)

    def _corrected(self, correlations: list[Correlation], store: TableIndexStore, result: BatchResult) -> None:
        """The ``mail.correlated`` records of decisions a correction changed, with their own mail's
        mailbox and ``mail.raw`` position."""
        index = self._correlators[store.tenant].index
        for correlation in correlations:
            position = SourcePosition(MAIL_RAW, store.partition, store.source_offsets.get(correlation.message_id, -1))
            record = correlated_record(correlation, index.get(correlation.message_id).mailbox, position)
            result.outputs.append(Output(MAIL_CORRELATED, store.tenant.encode(), self.codec.encode(MAIL_CORRELATED, record)))
            result.count("corrected")

    def process(self, items: list[RawItem], source_topic: str = MAIL_RAW) -> BatchResult:
        result = BatchResult()
        for item in items:
            self._process_item(item, source_topic, result, None)
        self._finish(items, result)
        return result

    async def process_read_by(self, pool: ParsePool, items: list[RawItem], source_topic: str = MAIL_RAW) -> BatchResult:
        """:meth:`process`, with the new records read by ``pool`` (parsed in its processes): each
        chunk is correlated while the next ones are read."""
        result = BatchResult()
        # By place in the batch, not by (partition, offset): the consumer can hand a record over
        # twice in one batch (seen when a killed worker's partitions were read again); both
        # copies are read, the second is skipped as a redelivery once the first is applied.
        unread = [place for place, item in enumerate(items) if not self.markers.is_redelivery(item)]
        wanted = set(unread)
        parsed: dict[int, Parsed] = {}
        chunks = iter(pool.chunks([items[place].value for place in unread]))
        start = 0
        for place, item in enumerate(items):
            while place in wanted and place not in parsed:
                size, chunk = next(chunks)
                parsed.update(zip(unread[start:start + size], await chunk))
                start += size
            self._process_item(item, source_topic, result, parsed.pop(place, None))
        self._finish(items, result)
        return result

    def _process_item(self, item: RawItem, source_topic: str, result: BatchResult, read: Parsed | None) -> None:
        """One record (``read`` already, or read here), unless it is a redelivery of one applied."""
        if self.markers.is_redelivery(item):
            result.skipped_redeliveries += 1
            return
        position = SourcePosition(source_topic, item.partition, item.offset)
        try:
            self._process_one(item, position, result, read or self.reader.read(item.value))
        except RejectedInput as exc:
            add_dead_letter(self.codec, item, position, exc.reason, str(exc), AGENT, result)
        except ParseFailed as exc:
            add_dead_letter(self.codec, item, position, "internal_error", exc.detail, AGENT, result)
        except (OSError, StateFormatError):
            # The blob store is unreachable (an unmounted network folder), or a table holds
            # state this version cannot read: not the mail's fault. Stop the batch before
            # anything is acknowledged; it is read again after a restart.
            raise
        except Exception as exc:  # a bug must not stop the partition: park the record, go on
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            add_dead_letter(self.codec, item, position, "internal_error", detail, AGENT, result)
        self.markers.advance(item)

    def _finish(self, items: list[RawItem], result: BatchResult) -> None:
        """The index entries and offset markers of the batch, the markers last in each partition."""
        for store in self._stores.values():
            pending = store.take_pending()
            if pending:
                result.writes.setdefault(store.partition, {}).update(pending)
        self.markers.add_writes(items, result)

    def _process_one(self, item: RawItem, position: SourcePosition, result: BatchResult, read: Parsed) -> None:
        mail = read.mail_or_raise()
        tenant = mail.tenant
        correlator = self._correlators.of(tenant, item.partition)
        store = self._stores[tenant]
        if store.source_offsets.get(correlator.indexed_id(mail)) == item.offset:
            # Indexed from this very record before a crash that lost the batch's offset marker
            # but not the entry: its outputs went out before the entry was written.
            result.skipped_redeliveries += 1
            return
        store.current_offset = item.offset
        correlation = correlator.correlate(mail)
        for flag in correlation.flags:  # e.g. message_id_collision: counted beside the method
            result.count(f"flag:{flag}")
        key = tenant.encode()
        if mail.is_bounce:
            self._bounce_events(read.bounce, correlator, mail, result)
        if correlation.untracked_reason:
            result.outputs.append(Output(MAIL_UNTRACKED, key, self.codec.encode(
                MAIL_UNTRACKED, untracked_record(correlation, mail.mailbox))))
            result.count(f"untracked:{correlation.untracked_reason}")
            return
        result.outputs.append(Output(MAIL_CORRELATED, key, self.codec.encode(
            MAIL_CORRELATED, correlated_record(correlation, mail.mailbox, position))))
        result.count(correlation.method_name)
        self._corrected(correlator.corrections_after(correlation.message_id), store, result)
        if correlation.response is not None:
            result.outputs.append(Output(MAIL_RESPONSES, key, self.codec.encode(
                MAIL_RESPONSES, response_record(correlation, mail.mailbox))))
