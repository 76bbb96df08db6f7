"""The escalation state machine (DESIGN.md §4): pure Python, injected clock, no I/O.

One clock per conversation (tenant, conversation id)::

    inbound mail ──> OPEN ──warn_after──> WARNED ──escalate_after──> ESCALATED
                      │                     │                           │
                      └──── outbound mail in the conversation ──────────┴──> RESOLVED

* An inbound mail in a conversation without a clock starts one (OPEN); the oldest unanswered
  inbound mail is the one that escalates.
* Deadlines are computed once, when the clock starts, in business time of the policy
  (:mod:`pipeline.escalation.business_time`); both count from the mail's event time.
* An outbound mail of the conversation dated at or after the clock's start resolves it.
* A later inbound mail (dated after the clock's start, or after the reply when resolved) follows
  the policy's ``on_customer_reply``: ``reopen`` opens a new clock when the conversation is
  RESOLVED and leaves an open one alone; ``restart`` starts a new clock from the new mail in
  both cases; ``keep`` changes nothing.
* A RESOLVED conversation, or an ESCALATED one nobody answers, is forgotten
  ``resolved_retention_days`` after its last transition.
* Automatic mail of a kind in the policy's ``ignore_automatic`` (the running clock's policy, else
  the one chosen for the mail) changes nothing: an inbound out-of-office or bounce opens and
  restarts no clock, an outbound auto-acknowledgement resolves none.

Time only moves through :meth:`EscalationTracker.advance`: during replay on event time (each
:meth:`~EscalationTracker.on_correlation` first advances to the mail's time), live on wall-clock
ticks (``advance()`` reads the injected clock). A WARNED / ESCALATED transition carries its
deadline as event time, never the moment a tick noticed it, so a replay and a live run that saw
the same mail produce the same records, with the same ids. Time never goes back: ``advance`` to
an earlier time than already seen fires nothing new, and a deadline before the latest time seen
fires at the next ``advance``.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Any, Callable

from pipeline.correlation.model import stable_event_id
from pipeline.escalation.business_time import add_business_time
from pipeline.escalation.model import (
    ALERT_TYPES,
    Alert,
    ConversationState,
    MailEvent,
    State,
    Transition,
    from_ms,
    to_ms,
)
from pipeline.escalation.policy import is_ignored, policy_named, recipients, select_policy
from pipeline.settings import EscalationPolicy, EscalationSettings

Clock = Callable[[], datetime]
StateKey = tuple[str, str]  # (tenant, conversation id)

STATE_FORMAT = 1
_NEVER = -(2 ** 62)


def transition_event_id(tenant: str, message_id: str, state: State, cycle: int) -> str:
    """Stable: the same mail reaching the same state in the same cycle always has this id."""
    return stable_event_id("escalation", tenant, message_id, state.value, str(cycle))


class EscalationTracker:
    """Clocks of unanswered inbound mail, for every conversation it has seen."""

    def __init__(self, settings: EscalationSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._states: dict[StateKey, ConversationState] = {}
        self._due: list[tuple[int, str, str]] = []  # (due ms, tenant, conversation id); stale entries skipped
        self._watermark = _NEVER
        self._retention_ms = int(self.settings.resolved_retention_days * 86_400_000)

    # -- input ---------------------------------------------------------------------------------

    def on_correlation(self, event: MailEvent) -> list[Transition]:
        """Advance to the mail's event time, then apply the mail. Returns every transition, in order."""
        if not self.settings.enabled:
            return []
        transitions = self.advance(event.event_time)
        key = (event.tenant, event.conversation_id)
        current = self._states.get(key)
        if is_ignored(self.settings, None if current is None else current.policy, event):
            return transitions  # an out-of-office is no customer waiting, an auto-acknowledgement no answer
        time_ms = to_ms(event.event_time)
        if event.direction == "in":
            if current is None:
                transitions.append(self._open(event, time_ms, previous=None))
            else:
                mode = policy_named(self.settings, current.policy).on_customer_reply
                later = time_ms > (current.started_ms if current.is_open else current.changed_ms)
                if later and (mode == "restart" or (mode == "reopen" and not current.is_open)):
                    transitions.append(self._open(event, time_ms, previous=current))
        elif event.direction == "out":
            if current is not None and current.is_open and time_ms >= current.started_ms:
                transitions.append(self._change(current, State.RESOLVED, time_ms))
        return transitions

    def advance(self, now: datetime | None = None) -> list[Transition]:
        """Fire every WARNED / ESCALATED deadline up to ``now`` (default: the injected clock), in
        deadline order, and forget conversations past their retention."""
        if not self.settings.enabled:
            return []
        self._watermark = max(self._watermark, to_ms(self.clock() if now is None else now))
        transitions: list[Transition] = []
        while self._due and self._due[0][0] <= self._watermark:
            due, tenant, conversation_id = heapq.heappop(self._due)
            current = self._states.get((tenant, conversation_id))
            if current is None or self._next_due(current) != due:
                continue  # stale: the clock was resolved, restarted or already fired
            if current.state is State.OPEN:
                transitions.append(self._change(current, State.WARNED, current.warn_ms))
            elif current.state is State.WARNED:
                transitions.append(self._change(current, State.ESCALATED, current.escalate_ms))
            else:
                del self._states[(tenant, conversation_id)]
        return transitions

    # -- queries -------------------------------------------------------------------------------

    def state_of(self, tenant: str, conversation_id: str) -> ConversationState | None:
        return self._states.get((tenant, conversation_id))

    def __len__(self) -> int:
        return len(self._states)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible, in a canonical order: equal trackers give equal dicts."""
        return {
            "format": STATE_FORMAT,
            "watermark_ms": None if self._watermark == _NEVER else self._watermark,
            "conversations": [self._states[key].to_dict() for key in sorted(self._states)],
        }

    @classmethod
    def from_dict(cls, settings: EscalationSettings, clock: Clock, data: dict[str, Any]) -> EscalationTracker:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown escalation state format {data.get('format')!r}")
        tracker = cls(settings, clock)
        watermark = data.get("watermark_ms")
        tracker._watermark = _NEVER if watermark is None else int(watermark)
        for item in data.get("conversations", ()):
            tracker.restore(ConversationState.from_dict(item))
        return tracker

    def restore(self, state: ConversationState) -> None:
        """Put back one conversation's state (e.g. read from a table row)."""
        self._states[(state.tenant, state.conversation_id)] = state
        self._schedule(state)

    # -- internals -----------------------------------------------------------------------------

    def _next_due(self, current: ConversationState) -> int:
        if current.state is State.OPEN:
            return current.warn_ms
        if current.state is State.WARNED:
            return current.escalate_ms
        return current.changed_ms + self._retention_ms

    def _schedule(self, current: ConversationState) -> None:
        heapq.heappush(self._due, (self._next_due(current), current.tenant, current.conversation_id))

    def _open(self, event: MailEvent, time_ms: int, previous: ConversationState | None) -> Transition:
        policy = select_policy(self.settings, event)
        start = from_ms(time_ms)
        current = ConversationState(
            tenant=event.tenant,
            conversation_id=event.conversation_id,
            state=State.OPEN,
            message_id=event.message_id,
            policy=policy.name,
            cycle=1 if previous is None else previous.cycle + 1,
            started_ms=time_ms,
            warn_ms=to_ms(add_business_time(start, policy.warn_after, policy)),
            escalate_ms=to_ms(add_business_time(start, policy.escalate_after, policy)),
            changed_ms=time_ms,
            owner=event.owner,
            mailbox=event.mailbox,
            regarding=event.regarding,
            assigned_on_ms=None if event.assigned_on is None else to_ms(event.assigned_on),
        )
        self._states[(event.tenant, event.conversation_id)] = current
        self._schedule(current)
        return self._transition(current, None if previous is None else previous.state, policy)

    def _change(self, current: ConversationState, state: State, time_ms: int) -> Transition:
        previous = current.state
        current.state = state
        current.changed_ms = time_ms
        self._schedule(current)
        return self._transition(current, previous, policy_named(self.settings, current.policy))

    def _transition(self, current: ConversationState, previous: State | None, policy: EscalationPolicy) -> Transition:
        event_id = transition_event_id(current.tenant, current.message_id, current.state, current.cycle)
        when = from_ms(current.changed_ms)
        assigned_on = None if current.assigned_on_ms is None else from_ms(current.assigned_on_ms)
        message = _message(current, previous, policy)
        alerts = tuple(
            Alert(event_id=stable_event_id("alert", event_id, user), tenant=current.tenant,
                  event_type=ALERT_TYPES[current.state], user=user, event_time=when, source_record_id=event_id,
                  assigned_on=assigned_on, record_owner=current.owner, message=message)
            for user in recipients(_notify(policy, current.state, previous), current.owner)
        )
        return Transition(event_id=event_id, tenant=current.tenant, message_id=current.message_id,
                          conversation_id=current.conversation_id, state=current.state, previous_state=previous,
                          policy=current.policy, event_time=when, owner=current.owner, mailbox=current.mailbox,
                          regarding=current.regarding, cycle=current.cycle, alerts=alerts)


def _notify(policy: EscalationPolicy, state: State, previous: State | None) -> tuple[str, ...]:
    if state is State.OPEN:
        return policy.notify_on_open
    if state is State.WARNED:
        return policy.notify_on_warn
    if state is State.ESCALATED:
        return policy.notify_on_escalate
    # Resolving a mail nobody was warned about is no news.
    return policy.notify_on_resolve if previous in (State.WARNED, State.ESCALATED) else ()


def _hours(value: float) -> str:
    return f"{value:g} hour" + ("" if value == 1 else "s")


def _message(current: ConversationState, previous: State | None, policy: EscalationPolicy) -> str:
    unit = " of business time" if policy.business_hours is not None or policy.holidays else ""
    mail = f"Mail {current.message_id} (conversation {current.conversation_id}"
    mail += f", regarding {current.regarding})" if current.regarding else ")"
    if current.state is State.OPEN:
        again = " again" if previous is not None else ""
        return (f"{mail} waits{again} for a reply; policy {current.policy} warns after "
                f"{_hours(policy.warn_after)} and escalates after {_hours(policy.escalate_after)}{unit}.")
    if current.state is State.WARNED:
        return (f"{mail} is unanswered after {_hours(policy.warn_after)}{unit} (policy {current.policy}); "
                f"it escalates after {_hours(policy.escalate_after)}.")
    if current.state is State.ESCALATED:
        return f"{mail} is unanswered after {_hours(policy.escalate_after)}{unit} (policy {current.policy}): escalated."
    return f"{mail} was answered ({previous.value if previous else 'open'} before)."
