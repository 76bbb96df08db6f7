"""The escalation agent's batch step, free of Faust (like :mod:`pipeline.streams.processor`).

Input: ``mail.correlated`` records of this worker's generation, except those that re-decide a
mail after a person's correction (docs/pipeline.md).  Per tenant, an
:class:`~pipeline.escalation.tracker.EscalationTracker` and an
:class:`~pipeline.escalation.sla.SlaTracker`, fed the same mail and the same ticks (a tenant's
mail is ordered on one partition, so each tracker sees its own event time only, and N workers
decide exactly like one).  Output: ``escalations``, ``alerts`` and ``sla.events`` records, and
table writes: one entry per conversation that either tracker holds (key ``tenant \\x1f
conversation id``, value ``{"escalation": clock or null, "sla": SLA state or null}``), written
when either state changed, plus the per-partition offset marker.

Time: each mail first advances its tenant's trackers to the mail's event time (replay-safe).
Wall-clock ticks (:meth:`EscalationProcessor.tick`) are applied only by a caught-up agent (see
``pipeline.streams.app``); their outputs and state writes are made durable like a batch's, in the
partitions of the tenants they touched (a crash in between fires them again with the same event
ids, which consumers treat as duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, MutableMapping

from pipeline.contracts.avro import AvroCodec
from pipeline.contracts.topics import ALERTS, ESCALATIONS, MAIL_CORRELATED, SLA_EVENTS
from pipeline.correlation.corrections import is_recorrection
from pipeline.escalation.model import ConversationState, MailEvent, Transition
from pipeline.escalation.policy import default_owner
from pipeline.escalation.sla import SlaConversationState, SlaEvent, SlaTracker
from pipeline.escalation.tracker import EscalationTracker
from pipeline.settings import Settings
from pipeline.runtime.batch import BatchResult, OffsetMarkers, Output, RawItem, decoded_records
from pipeline.runtime.state import TenantStates, encode_state, tenant_key

AGENT = "escalation"


@dataclass(slots=True)
class TenantClocks:
    """A tenant's escalation clocks and SLA targets."""

    escalation: EscalationTracker
    sla: SlaTracker


class EscalationProcessor:
    def __init__(self, settings: Settings, codec: AvroCodec, table: MutableMapping[str, bytes],
                 clock: Callable[[], datetime], *,
                 record_owner: Callable[[str, str], str | None] | None = None) -> None:
        """``record_owner(tenant, record id)``: the CRM owner of a business record; a mail about
        a record with an owner belongs to that owner, else to the agent it was sent to."""
        self.settings = settings
        self.codec = codec
        self.clock = clock
        self.generation = settings.worker.generation
        self.record_owner = record_owner
        self._trackers: TenantStates[TenantClocks] = TenantStates(table, self._resume)
        self._partition_of: dict[str, int] = {}
        self._dirty: dict[str, set[str]] = {}  # tenant -> conversations whose state changed
        self.markers = OffsetMarkers(table)
        self._own_domains = frozenset(d.lower() for d in settings.untracked.own_domains)

    def reset(self) -> None:
        self._trackers.reset()
        self._partition_of.clear()
        self._dirty.clear()
        self.markers.clear()

    def _resume(self, tenant: str, conversations: list[dict], partition: int) -> TenantClocks:
        clocks = TenantClocks(EscalationTracker(self.settings.escalation, self.clock),
                              SlaTracker(self.settings.escalation, self.clock))
        for entry in conversations:
            if "escalation" not in entry and "sla" not in entry:
                entry = {"escalation": entry}  # written before SLA targets: an escalation clock alone
            if entry.get("escalation") is not None:
                clocks.escalation.restore(ConversationState.from_dict(entry["escalation"]))
            if entry.get("sla") is not None:
                clocks.sla.restore(SlaConversationState.from_dict(entry["sla"]))
        self._partition_of[tenant] = partition
        return clocks

    def _emit(self, transitions: list[Transition], sla_events: list[SlaEvent], result: BatchResult) -> None:
        for transition in transitions:
            key = transition.tenant.encode()
            result.outputs.append(Output(ESCALATIONS, key, self.codec.encode(ESCALATIONS, transition.to_record())))
            result.count(f"escalation:{transition.state.value}")
            for alert in transition.alerts:
                result.outputs.append(Output(ALERTS, key, self.codec.encode(ALERTS, alert.to_record())))
            self._dirty.setdefault(transition.tenant, set()).add(transition.conversation_id)
        for event in sla_events:
            result.outputs.append(Output(SLA_EVENTS, event.tenant.encode(),
                                         self.codec.encode(SLA_EVENTS, event.to_record())))
            result.count(f"sla:{event.outcome.value}")

    def process(self, items: list[RawItem], source_topic: str = MAIL_CORRELATED) -> BatchResult:
        result = BatchResult()
        for item, record in decoded_records(items, self.markers, self.codec, MAIL_CORRELATED, source_topic, AGENT,
                                            result):
            if record["generation"] != self.generation:
                continue  # another generation's correlation: its own escalation agent handles it
            if is_recorrection(record["evidence"]):
                # A person's correction re-decided a mail already handled: its clocks stand (applied
                # again at the mail's old time, a moved inbound mail would open a clock long overdue).
                result.count("skipped:recorrected")
                continue
            event = MailEvent(tenant=record["tenant"], message_id=record["message_id"],
                              conversation_id=record["conversation_id"], direction=record["direction"],
                              event_time=record["event_time"], mailbox=record["mailbox"],
                              regarding=record["regarding"], mail_type=record["mail_type"],
                              parent_message_id=record["parent_message_id"],
                              owner=self._owner(record), automatic=record["automatic"], subject=record["subject"])
            clocks = self._trackers.of(event.tenant, item.partition)
            self._emit(clocks.escalation.on_correlation(event), clocks.sla.on_mail(event), result)
        self._collect_writes(result)
        self.markers.add_writes(items, result)
        return result

    def _owner(self, record: dict) -> str | None:
        if record["regarding"] and self.record_owner is not None:
            owner = self.record_owner(record["tenant"], record["regarding"])
            if owner:
                return owner
        return default_owner(record["direction"], record["to"] + record["cc"], self._own_domains)

    def tick(self, now: datetime) -> BatchResult:
        """Fire deadlines up to ``now`` for every tenant; the result holds the outputs and the state
        writes of every tenant it touched, applied by the caller like a batch's."""
        result = BatchResult()
        for clocks in self._trackers.values():
            self._emit(clocks.escalation.advance(now), clocks.sla.advance(now), result)
        self._collect_writes(result)
        return result

    def _collect_writes(self, result: BatchResult) -> None:
        for tenant, clocks in self._trackers.items():
            # An SLA state can change without an event (a second reply moves the silence), and a
            # forgotten one leaves none: the tracker says which changed.
            conversations = self._dirty.pop(tenant, set()) | {c for _, c in clocks.sla.pop_changed()}
            if not conversations:
                continue
            writes = result.writes.setdefault(self._partition_of[tenant], {})
            for conversation_id in sorted(conversations):
                escalation = clocks.escalation.state_of(tenant, conversation_id)
                sla = clocks.sla.state_of(tenant, conversation_id)
                writes[tenant_key(tenant, conversation_id)] = None if escalation is None and sla is None else (
                    encode_state({"escalation": None if escalation is None else escalation.to_dict(),
                                  "sla": None if sla is None else sla.to_dict()}))
