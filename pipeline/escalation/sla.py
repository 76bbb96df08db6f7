"""SLA targets of support conversations (issue 16): pure Python, injected clock, no I/O.

Three targets per conversation (tenant, conversation id), each with warn and breach times on the
policy's business calendar (``EscalationPolicy.sla``):

* **first response**: from the first inbound person's mail of a cycle to our first person's reply.
* **next response**: from a customer's follow-up after our reply to our next reply. Every
  follow-up that comes while we wait on the customer starts a new cycle of it.
* **resolution**: from the first inbound person's mail until the conversation is resolved: by the
  regarding record's status (``resolved_states``), by our mail with ``resolved_marker`` in its
  subject, or by ``resolve_after_inactivity`` hours of customer silence after our last reply
  (resolved at the time of that reply). While the desk waits on the customer (``pause``) the
  resolution clock stands still and its deadlines move by the paused working time.

A customer's mail after the resolution reopens the conversation: first response and resolution
start their next cycle. Automatic mail of a kind the policy ignores (``ignore_automatic``) does
nothing at all: it is neither a customer's mail nor our reply.

Each outcome (started, paused, resumed, warned, breached, met) of a target instance is one
:class:`SlaEvent`. Like :class:`~pipeline.escalation.tracker.EscalationTracker`, time only moves
through :meth:`SlaTracker.advance`, a deadline's event carries the deadline as its time and ids
are stable, so a replay and a live run that saw the same input give the same records.

A record change does not move time: one dated after the tracker's time waits (pending, per
tenant and record) until :meth:`SlaTracker.advance` reaches it, by a mail's event time or a tick,
and is applied there in time order among the deadlines (a deadline before a change at the same
instant). So a CRM change dated today, read while last year's mail is replayed, waits for the mail
to get there instead of firing every deadline in between. A change read when time is already past
it applies at once, at the tracker's time: time never goes back, so such a change (read late) takes
effect later than its date.

The one outcome decided after the fact is resolution by inactivity: it is known only when the
silence has lasted ``resolve_after_inactivity`` hours. Until then (while we wait on the customer)
the resolution clock's deadlines and the record changes that would pause or resume it are *held*:
if the customer writes, or we write again, they are played out up to that mail; if the silence
lasts, the resolution was met at our last reply and they never happened. So no warning or breach
is published that the resolution at the earlier reply would contradict, and live ticks cannot make
a difference.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pipeline.correlation.model import stable_event_id
from pipeline.escalation.business_time import add_business_time, business_seconds_between
from pipeline.escalation.model import MailEvent, field_values, from_ms, known_fields, to_ms
from pipeline.escalation.policy import is_ignored, policy_named, select_policy
from pipeline.escalation.tracker import Clock, StateKey
from pipeline.settings import EscalationPolicy, EscalationSettings, SlaTarget

STATE_FORMAT = 1
_NEVER = -(2 ** 62)
_HOUR_MS = 3_600_000


class Target(str, Enum):
    """The symbols of ``SlaTarget`` in schemas/sla.events.avsc."""

    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    RESOLUTION = "resolution"


class Outcome(str, Enum):
    """The symbols of ``SlaOutcome`` in schemas/sla.events.avsc."""

    STARTED = "started"
    PAUSED = "paused"
    RESUMED = "resumed"
    WARNED = "warned"
    BREACHED = "breached"
    MET = "met"


def sla_event_id(tenant: str, conversation_id: str, target: Target, message_id: str, cycle: int, outcome: Outcome,
                 pause: int | None = None) -> str:
    """Stable; ``pause`` numbers the pauses of one instance (only paused / resumed happen twice).
    ``message_id``, the mail that started the instance, keeps a conversation forgotten after its
    retention and started over at cycle 1 from replacing the rows of its first cycle."""
    parts = ["sla", tenant, conversation_id, target.value, message_id, str(cycle), outcome.value]
    return stable_event_id(*parts, *(() if pause is None else (str(pause),)))


@dataclass(frozen=True, slots=True)
class SlaEvent:
    """One outcome of one target instance (a record of ``sla.events``)."""

    event_id: str
    tenant: str
    conversation_id: str
    message_id: str  # the inbound mail that started the target
    target: Target
    outcome: Outcome
    cycle: int
    policy: str
    team: str | None
    owner: str | None
    mailbox: str | None
    regarding: str | None
    started_at: datetime
    due_at: datetime | None  # the breach deadline; None while paused
    event_time: datetime
    business_seconds: float  # working time from started_at to event_time, pauses excluded
    on_time: bool  # met before the breach deadline

    def to_record(self) -> dict[str, Any]:
        record = field_values(self)
        record["target"], record["outcome"] = self.target.value, self.outcome.value
        return record


@dataclass(slots=True)
class SlaClock:
    """One running target instance. Times are epoch milliseconds."""

    target: Target
    cycle: int
    message_id: str
    # The policy the instance started under: a reopen may choose another for the conversation, and
    # a response still owed from before keeps its own calendar and team.
    policy: str
    started_ms: int
    warn_after: float  # the target's hours when it started: a settings change does not move a running clock
    breach_after: float
    warn_ms: int  # deadlines, moved by every pause that ends
    breach_ms: int
    warned: bool = False
    breached: bool = False
    paused_since_ms: int | None = None
    paused_seconds: float = 0.0  # working time of the pauses that ended
    pauses: int = 0

    def next_deadline(self) -> int | None:
        if self.paused_since_ms is not None or self.breached:
            return None
        return self.breach_ms if self.warned else self.warn_ms

    def to_dict(self) -> dict[str, Any]:
        data = field_values(self)
        data["target"] = self.target.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlaClock:
        values = known_fields(cls, data)
        values["target"] = Target(values["target"])
        return cls(**values)


@dataclass(slots=True)
class SlaConversationState:
    """The SLA state of one conversation. Times are epoch milliseconds."""

    tenant: str
    conversation_id: str
    policy: str
    changed_ms: int  # the latest mail, record change or outcome: retention counts from it
    waiting_on_customer: bool = False  # we replied after the customer's latest mail
    last_customer_ms: int = _NEVER
    last_reply_ms: int | None = None
    resolved_ms: int | None = None
    owner: str | None = None
    mailbox: str | None = None
    regarding: str | None = None
    first_response_cycle: int = 0  # the cycle numbers used so far
    next_response_cycle: int = 0
    resolution_cycle: int = 0
    response: SlaClock | None = None  # the running first or next response (never both)
    resolution: SlaClock | None = None
    held_changes: list[tuple[int, bool]] = field(default_factory=list)  # (time, waiting) while held

    def to_dict(self) -> dict[str, Any]:
        data = field_values(self)
        data["response"] = None if self.response is None else self.response.to_dict()
        data["resolution"] = None if self.resolution is None else self.resolution.to_dict()
        data["held_changes"] = [list(change) for change in self.held_changes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlaConversationState:
        values = known_fields(cls, data)
        for name in ("response", "resolution"):
            values[name] = None if values.get(name) is None else SlaClock.from_dict(values[name])
        values["held_changes"] = [(int(time), bool(waiting)) for time, waiting in values.get("held_changes", ())]
        return cls(**values)


@dataclass(slots=True)
class RecordStatus:
    """What the tracker knows of one CRM record: its status now, and the changes dated after the
    tracker's time, which wait for it. Times are epoch milliseconds."""

    tenant: str
    record_id: str
    status: str | None = None  # casefolded; None: no status (or the record was deleted)
    updated_ms: int = _NEVER  # the date of the change applied last: an older version read later is stale
    # (date, arrival, status), in date order; ``arrival`` numbers the tracker's pending changes as read,
    # so changes of one date apply in the order they were read, as they would at once after a tick.
    pending: list[tuple[int, int, str | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = field_values(self)
        data["pending"] = [list(change) for change in self.pending]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordStatus:
        values = known_fields(cls, data)
        values["pending"] = [(int(time), int(arrival), status) for time, arrival, status in values.get("pending", ())]
        return cls(**values)


class SlaTracker:
    """SLA target instances of every conversation it has seen."""

    def __init__(self, settings: EscalationSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._states: dict[StateKey, SlaConversationState] = {}
        self._by_record: dict[tuple[str, str], set[str]] = {}  # (tenant, record id) -> conversation ids
        self._due: list[tuple[int, str, str]] = []  # (due ms, tenant, conversation id); stale entries skipped
        # The latest due time pushed per conversation: most mail leaves it unchanged, and pushing it
        # again for every mail would fill the heap with copies until that time passes.
        self._scheduled: dict[StateKey, int] = {}
        self._changed: set[StateKey] = set()
        self._records: dict[tuple[str, str], RecordStatus] = {}
        self._changes: list[tuple[int, int, str, str]] = []  # (date ms, arrival, tenant, record id) per pending change
        self._arrivals = 0
        self._changed_records: set[tuple[str, str]] = set()
        self._watermark = _NEVER
        self._retention_ms = int(self.settings.resolved_retention_days * 86_400_000)

    # -- input ---------------------------------------------------------------------------------

    def on_mail(self, event: MailEvent) -> list[SlaEvent]:
        """Advance to the mail's event time, then apply the mail. Returns every outcome, in order."""
        if not self.settings.enabled:
            return []
        out = self.advance(event.event_time)
        current = self._states.get((event.tenant, event.conversation_id))
        if is_ignored(self.settings, None if current is None else current.policy, event):
            return out
        time_ms = to_ms(event.event_time)
        if event.direction == "in":
            current = self._customer_mail(current, event, time_ms, out)
        elif event.direction == "out" and current is not None:
            self._our_mail(current, event, time_ms, out)
        if current is not None:
            self._follow_regarding(current, event.regarding)
            self._touch(current, time_ms)
        return out

    def on_record_state(self, tenant: str, record_id: str, status: str | None,
                        event_time: datetime) -> list[SlaEvent]:
        """The CRM status of a record (None: none, or the record was deleted), as of ``event_time``
        (its ``updated_at``). Time does not move: a change dated after the tracker's time waits for
        :meth:`advance`; one dated at or before it applies now, at the tracker's time. A version
        older than the one applied last is stale and changes nothing. A status that differs from the
        record's last one resolves, pauses or resumes the conversations regarding the record."""
        if not self.settings.enabled:
            return []
        time_ms = to_ms(event_time)
        status = (status or "").strip().casefold() or None
        key = (tenant, record_id)
        record = self._records.setdefault(key, RecordStatus(tenant=tenant, record_id=record_id))
        self._changed_records.add(key)
        if time_ms > self._watermark:
            # After the changes of the same date read before it: the later one read wins, as in the CRM directory.
            self._arrivals += 1
            record.pending.insert(bisect.bisect_right(record.pending, time_ms, key=lambda change: change[0]),
                                  (time_ms, self._arrivals, status))
            heapq.heappush(self._changes, (time_ms, self._arrivals, tenant, record_id))
            return []
        out: list[SlaEvent] = []
        if time_ms >= record.updated_ms:
            self._apply_record_state(record, status, time_ms, self._watermark, out)
        return out

    def advance(self, now: datetime | None = None) -> list[SlaEvent]:
        """Fire every deadline and apply every pending record change up to ``now`` (default: the
        injected clock), in time order (a deadline before a change at the same instant), and forget
        conversations past their retention."""
        if not self.settings.enabled:
            return []
        self._watermark = max(self._watermark, to_ms(self.clock() if now is None else now))
        out: list[SlaEvent] = []
        while True:
            deadline = self._due[0][0] if self._due and self._due[0][0] <= self._watermark else None
            change = self._changes[0][0] if self._changes and self._changes[0][0] <= self._watermark else None
            if deadline is None and change is None:
                return out
            if deadline is None or (change is not None and change < deadline):
                _, _, tenant, record_id = heapq.heappop(self._changes)
                record = self._records[(tenant, record_id)]
                time_ms, _, status = record.pending.pop(0)  # the record's earliest: this very entry
                self._changed_records.add((tenant, record_id))
                self._apply_record_state(record, status, time_ms, time_ms, out)
                continue
            due, tenant, conversation_id = heapq.heappop(self._due)
            if self._scheduled.get((tenant, conversation_id)) == due:
                del self._scheduled[(tenant, conversation_id)]
            current = self._states.get((tenant, conversation_id))
            if current is None or self._next_due(current) != due:
                continue  # stale: superseded by a later change of the conversation
            self._fire(current, out)

    # -- queries -------------------------------------------------------------------------------

    def state_of(self, tenant: str, conversation_id: str) -> SlaConversationState | None:
        return self._states.get((tenant, conversation_id))

    def __len__(self) -> int:
        return len(self._states)

    def pop_changed(self) -> list[StateKey]:
        """The conversations whose state changed (or was forgotten) since the last call, sorted: what a
        table of states must write. A mail or record change can change a state without any event
        (a second reply moves the silence), so the events alone do not say it."""
        changed, self._changed = sorted(self._changed), set()
        return changed

    def record_of(self, tenant: str, record_id: str) -> RecordStatus | None:
        return self._records.get((tenant, record_id))

    def pop_changed_records(self) -> list[tuple[str, str]]:
        """The (tenant, record id) of the records whose status or pending changes changed since the
        last call, sorted: what a table of states must write next to :meth:`pop_changed`."""
        changed, self._changed_records = sorted(self._changed_records), set()
        return changed

    @property
    def watermark(self) -> datetime | None:
        """The time the tracker has reached (None before any): whether a record change read now
        waits or applies at once depends on it, so a table of states keeps it too."""
        return None if self._watermark == _NEVER else from_ms(self._watermark)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible, in a canonical order: equal trackers give equal dicts."""
        return {
            "format": STATE_FORMAT,
            "watermark_ms": None if self._watermark == _NEVER else self._watermark,
            "conversations": [self._states[key].to_dict() for key in sorted(self._states)],
            "records": [self._records[key].to_dict() for key in sorted(self._records)],
        }

    @classmethod
    def from_dict(cls, settings: EscalationSettings, clock: Clock, data: dict[str, Any]) -> SlaTracker:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown SLA state format {data.get('format')!r}")
        tracker = cls(settings, clock)
        watermark = data.get("watermark_ms")
        if watermark is not None:
            tracker.restore_watermark(from_ms(int(watermark)))
        for item in data.get("conversations", ()):
            tracker.restore(SlaConversationState.from_dict(item))
        for item in data.get("records", ()):
            tracker.restore_record(RecordStatus.from_dict(item))
        return tracker

    def restore_watermark(self, watermark: datetime) -> None:
        """Put back the time the tracker had reached (e.g. read from a table row), firing nothing."""
        self._watermark = max(self._watermark, to_ms(watermark))

    def restore_record(self, record: RecordStatus) -> None:
        """Put back one record's status and pending changes (e.g. read from a table row)."""
        self._records[(record.tenant, record.record_id)] = record
        for time_ms, arrival, _ in record.pending:
            heapq.heappush(self._changes, (time_ms, arrival, record.tenant, record.record_id))
            self._arrivals = max(self._arrivals, arrival)

    def restore(self, state: SlaConversationState) -> None:
        """Put back one conversation's state (e.g. read from a table row)."""
        self._states[(state.tenant, state.conversation_id)] = state
        self._index(state)
        self._schedule(state)

    # -- mail ----------------------------------------------------------------------------------

    def _customer_mail(self, current: SlaConversationState | None, event: MailEvent, time_ms: int,
                       out: list[SlaEvent]) -> SlaConversationState | None:
        if current is None or (current.resolved_ms is not None and time_ms > current.resolved_ms):
            return self._new_cycle(current, event, time_ms, out)
        if current.resolved_ms is not None or not current.waiting_on_customer:
            return current  # resolved after this mail, or still unanswered: the oldest mail keeps its clocks
        assert current.last_reply_ms is not None
        if time_ms <= current.last_reply_ms:
            return current  # older than our reply: it was answered
        self._play_out_held(current, time_ms, out)
        current.waiting_on_customer = False
        current.last_customer_ms = time_ms
        policy = self._policy(current)
        if policy.sla.pause == "after_reply" and current.resolution is not None:
            self._pause_or_resume(current, False, time_ms, out)
        if policy.sla.next_response is not None:
            current.next_response_cycle += 1
            current.response = self._start(current, Target.NEXT_RESPONSE, current.next_response_cycle, event,
                                           time_ms, policy.sla.next_response, policy, out)
        return current

    def _new_cycle(self, previous: SlaConversationState | None, event: MailEvent, time_ms: int,
                   out: list[SlaEvent]) -> SlaConversationState:
        """The conversation's first customer mail, or one after its resolution (a reopen)."""
        policy = select_policy(self.settings, event)
        current = previous or SlaConversationState(tenant=event.tenant, conversation_id=event.conversation_id,
                                                   policy=policy.name, changed_ms=time_ms)
        current.policy, current.owner, current.mailbox = policy.name, event.owner, event.mailbox
        self._follow_regarding(current, event.regarding)
        current.resolved_ms, current.waiting_on_customer, current.last_customer_ms = None, False, time_ms
        current.held_changes = []
        self._states[(current.tenant, current.conversation_id)] = current
        sla = policy.sla
        # A response still owed from before the resolution stays the one we owe.
        if current.response is None and sla.first_response is not None:
            current.first_response_cycle += 1
            current.response = self._start(current, Target.FIRST_RESPONSE, current.first_response_cycle, event,
                                           time_ms, sla.first_response, policy, out)
        if sla.resolution is not None:
            current.resolution_cycle += 1
            current.resolution = self._start(current, Target.RESOLUTION, current.resolution_cycle, event, time_ms,
                                             sla.resolution, policy, out)
            if sla.pause == "record_state" and self._record_status(current) in sla.waiting_states:
                self._pause_or_resume(current, True, time_ms, out)
        return current

    def _our_mail(self, current: SlaConversationState, event: MailEvent, time_ms: int, out: list[SlaEvent]) -> None:
        response = current.response
        if response is not None and time_ms >= response.started_ms:
            current.response = None
            out.append(self._event(current, response, Outcome.MET, time_ms))
        if current.resolved_ms is not None or time_ms < current.last_customer_ms:
            return  # nothing left to resolve, or a reply older than the customer's latest mail
        if current.last_reply_ms is not None and time_ms < current.last_reply_ms:
            return  # older than our latest reply: the silence counts from that one
        # A reply during the silence decides what happened up to it: the silence now counts from it.
        self._play_out_held(current, time_ms, out)
        current.waiting_on_customer = True
        current.last_reply_ms = time_ms
        sla = self._policy(current).sla
        if sla.resolved_marker is not None and sla.resolved_marker.casefold() in event.subject.casefold():
            self._resolve(current, time_ms, out)
        elif sla.pause == "after_reply" and current.resolution is not None:
            self._pause_or_resume(current, True, time_ms, out)

    # -- clocks --------------------------------------------------------------------------------

    def _start(self, current: SlaConversationState, target: Target, cycle: int, event: MailEvent, time_ms: int,
               times: SlaTarget, policy: EscalationPolicy, out: list[SlaEvent]) -> SlaClock:
        start = from_ms(time_ms)
        clock = SlaClock(target=target, cycle=cycle, message_id=event.message_id, policy=policy.name,
                         started_ms=time_ms,
                         warn_after=times.warn_after, breach_after=times.breach_after,
                         warn_ms=to_ms(add_business_time(start, times.warn_after, policy)),
                         breach_ms=to_ms(add_business_time(start, times.breach_after, policy)))
        out.append(self._event(current, clock, Outcome.STARTED, time_ms))
        return clock

    def _pause_or_resume(self, current: SlaConversationState, waiting: bool, time_ms: int,
                         out: list[SlaEvent]) -> None:
        clock = current.resolution
        assert clock is not None
        if waiting and clock.paused_since_ms is None:
            clock.paused_since_ms = time_ms
            clock.pauses += 1
            out.append(self._event(current, clock, Outcome.PAUSED, time_ms))
        elif not waiting and clock.paused_since_ms is not None:
            policy = policy_named(self.settings, clock.policy)
            clock.paused_seconds += business_seconds_between(from_ms(clock.paused_since_ms), from_ms(time_ms),
                                                             policy)
            clock.paused_since_ms = None
            # The target's hours plus the paused working time, from the same start: the deadline moved
            # by exactly the working time the clock stood still.
            start, shift = from_ms(clock.started_ms), clock.paused_seconds / 3600
            clock.warn_ms = to_ms(add_business_time(start, clock.warn_after + shift, policy))
            clock.breach_ms = to_ms(add_business_time(start, clock.breach_after + shift, policy))
            out.append(self._event(current, clock, Outcome.RESUMED, time_ms))

    def _resolve(self, current: SlaConversationState, time_ms: int, out: list[SlaEvent]) -> None:
        clock = current.resolution
        if clock is not None:
            out.append(self._event(current, clock, Outcome.MET, time_ms))
        current.resolution, current.resolved_ms, current.held_changes = None, time_ms, []
        current.waiting_on_customer = False

    def _held(self, current: SlaConversationState) -> bool:
        """The resolution may yet turn out met at our last reply (resolution by inactivity)."""
        return (current.waiting_on_customer and current.resolution is not None
                and self._policy(current).sla.resolve_after_inactivity is not None)

    def _play_out_held(self, current: SlaConversationState, until_ms: int, out: list[SlaEvent]) -> None:
        """The held deadlines and record changes up to ``until_ms`` happened after all: fire them in
        time order (a deadline before a change at the same instant, as in :meth:`advance`)."""
        if not self._held(current):
            return
        changes = current.held_changes
        while current.resolution is not None:
            deadline = current.resolution.next_deadline()
            change_ms = changes[0][0] if changes else None
            if deadline is not None and deadline <= until_ms and (change_ms is None or deadline <= change_ms):
                self._fire_deadline(current, current.resolution, out)
            elif change_ms is not None and change_ms <= until_ms:
                _, waiting = changes.pop(0)
                self._pause_or_resume(current, waiting, change_ms, out)
            else:
                break
        current.held_changes = [change for change in changes if change[0] > until_ms]

    # -- time ----------------------------------------------------------------------------------

    def _pending(self, current: SlaConversationState) -> tuple[int, int]:
        """(due ms, what) of the conversation's next action: 0 its response deadline, 1 its
        resolution deadline, 2 resolution by inactivity, 3 forgetting it."""
        candidates: list[tuple[int, int]] = []
        if current.response is not None and (deadline := current.response.next_deadline()) is not None:
            candidates.append((deadline, 0))
        inactivity = self._policy(current).sla.resolve_after_inactivity
        if current.waiting_on_customer and inactivity is not None:
            assert current.last_reply_ms is not None
            candidates.append((current.last_reply_ms + round(inactivity * _HOUR_MS), 2))  # the clock is held
        elif current.resolution is not None and (deadline := current.resolution.next_deadline()) is not None:
            candidates.append((deadline, 1))
        return min(candidates) if candidates else (current.changed_ms + self._retention_ms, 3)

    def _next_due(self, current: SlaConversationState) -> int:
        return self._pending(current)[0]

    def _schedule(self, current: SlaConversationState) -> None:
        key, due = (current.tenant, current.conversation_id), self._next_due(current)
        if self._scheduled.get(key) != due:
            self._scheduled[key] = due
            heapq.heappush(self._due, (due, *key))

    def _touch(self, current: SlaConversationState, time_ms: int) -> None:
        current.changed_ms = max(current.changed_ms, time_ms)
        self._changed.add((current.tenant, current.conversation_id))
        self._schedule(current)

    def _fire(self, current: SlaConversationState, out: list[SlaEvent]) -> None:
        due, what = self._pending(current)
        if what == 0:
            assert current.response is not None
            self._fire_deadline(current, current.response, out)
        elif what == 1:
            assert current.resolution is not None
            self._fire_deadline(current, current.resolution, out)
        elif what == 2:
            assert current.last_reply_ms is not None
            self._resolve(current, current.last_reply_ms, out)
        else:
            self._forget(current)
            return
        self._touch(current, due)

    def _fire_deadline(self, current: SlaConversationState, clock: SlaClock, out: list[SlaEvent]) -> None:
        if clock.warned:
            clock.breached = True
            out.append(self._event(current, clock, Outcome.BREACHED, clock.breach_ms))
        else:
            clock.warned = True
            out.append(self._event(current, clock, Outcome.WARNED, clock.warn_ms))

    def _forget(self, current: SlaConversationState) -> None:
        del self._states[(current.tenant, current.conversation_id)]
        self._changed.add((current.tenant, current.conversation_id))
        self._unindex(current)

    # -- helpers -------------------------------------------------------------------------------

    def _policy(self, current: SlaConversationState) -> EscalationPolicy:
        return policy_named(self.settings, current.policy)

    def _follow_regarding(self, current: SlaConversationState, regarding: str | None) -> None:
        """A mail names the record its conversation is about: record changes reach it from now on."""
        if regarding is None or regarding == current.regarding:
            return
        self._unindex(current)
        current.regarding = regarding
        self._index(current)

    def _record_status(self, current: SlaConversationState) -> str | None:
        record = None if current.regarding is None else self._records.get((current.tenant, current.regarding))
        return None if record is None else record.status

    def _apply_record_state(self, record: RecordStatus, status: str | None, updated_ms: int, time_ms: int,
                            out: list[SlaEvent]) -> None:
        """The record's status is ``status`` from ``time_ms`` on (its version dated ``updated_ms``)."""
        previous, record.status, record.updated_ms = record.status, status, max(record.updated_ms, updated_ms)
        if status == previous:
            return  # another field of the record changed: nothing for the conversations regarding it
        for conversation_id in sorted(self._by_record.get((record.tenant, record.record_id), ())):
            current = self._states[(record.tenant, conversation_id)]
            if current.resolved_ms is None:
                sla = self._policy(current).sla
                if status in sla.resolved_states:
                    self._play_out_held(current, time_ms, out)
                    self._resolve(current, time_ms, out)
                elif sla.pause == "record_state" and current.resolution is not None:
                    waiting = status in sla.waiting_states
                    if self._held(current):
                        current.held_changes.append((time_ms, waiting))
                    else:
                        self._pause_or_resume(current, waiting, time_ms, out)
            self._touch(current, time_ms)

    def _index(self, current: SlaConversationState) -> None:
        if current.regarding is not None:
            self._by_record.setdefault((current.tenant, current.regarding), set()).add(current.conversation_id)

    def _unindex(self, current: SlaConversationState) -> None:
        key = (current.tenant, current.regarding)
        if current.regarding is not None and key in self._by_record:
            self._by_record[key].discard(current.conversation_id)
            if not self._by_record[key]:
                del self._by_record[key]

    def _event(self, current: SlaConversationState, clock: SlaClock, outcome: Outcome, time_ms: int) -> SlaEvent:
        policy = policy_named(self.settings, clock.policy)
        paused = clock.paused_since_ms
        effective_ms = time_ms if paused is None else min(time_ms, paused)
        elapsed = business_seconds_between(from_ms(clock.started_ms), from_ms(effective_ms), policy)
        pause = clock.pauses if outcome in (Outcome.PAUSED, Outcome.RESUMED) else None
        return SlaEvent(
            event_id=sla_event_id(current.tenant, current.conversation_id, clock.target, clock.message_id, clock.cycle,
                                  outcome, pause),
            tenant=current.tenant, conversation_id=current.conversation_id, message_id=clock.message_id,
            target=clock.target, outcome=outcome, cycle=clock.cycle, policy=clock.policy, team=policy.team,
            owner=current.owner, mailbox=current.mailbox, regarding=current.regarding,
            started_at=from_ms(clock.started_ms), due_at=None if paused is not None else from_ms(clock.breach_ms),
            event_time=from_ms(time_ms), business_seconds=max(0.0, elapsed - clock.paused_seconds),
            on_time=outcome is Outcome.MET and not clock.breached and effective_ms < clock.breach_ms,
        )
