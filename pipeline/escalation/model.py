"""Value types of escalation: the input event, the states, the output records and the per-conversation
state (small, serialisable, so a Faust table can hold it)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from pipeline.correlation.model import Correlation
from pipeline.escalation.business_time import as_utc

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds (floor), exact: no float rounding."""
    return (as_utc(moment) - EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


@cache
def field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, worked out once: records and states are written per mail."""
    return tuple(f.name for f in fields(cls))


def field_values(value: Any) -> dict[str, Any]:
    """A dataclass's fields by name, flat (a nested dataclass stays an object)."""
    return {name: getattr(value, name) for name in field_names(type(value))}


def known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls`` (a field it lacks keeps its default)."""
    return {name: data[name] for name in field_names(cls) if name in data}


class State(str, Enum):
    """The symbols of ``EscalationState`` in schemas/escalations.avsc."""

    OPEN = "OPEN"
    WARNED = "WARNED"
    ESCALATED = "ESCALATED"
    RESOLVED = "RESOLVED"


ALERT_TYPES = {
    State.OPEN: "escalation_opened",
    State.WARNED: "escalation_warned",
    State.ESCALATED: "escalation_escalated",
    State.RESOLVED: "escalation_resolved",
}


@dataclass(frozen=True, slots=True)
class MailEvent:
    """What escalation needs from one tracked, correlated mail (``direction`` is "in" or "out";
    ``automatic`` the kind of automatic mail of pipeline/mail/automatic.py, "" for a person's)."""

    tenant: str
    message_id: str
    conversation_id: str
    direction: str
    event_time: datetime
    mailbox: str | None = None
    regarding: str | None = None
    owner: str | None = None
    mail_type: str = "new"
    parent_message_id: str | None = None
    assigned_on: datetime | None = None
    automatic: str = ""
    subject: str = ""

    @classmethod
    def from_correlation(cls, correlation: Correlation, *, mailbox: str | None = None, owner: str | None = None,
                         assigned_on: datetime | None = None) -> MailEvent:
        return cls(tenant=correlation.tenant, message_id=correlation.message_id,
                   conversation_id=correlation.conversation_id, direction=correlation.direction,
                   event_time=correlation.event_time, mailbox=mailbox, regarding=correlation.regarding,
                   owner=owner, mail_type=correlation.mail_type, parent_message_id=correlation.parent_message_id,
                   assigned_on=assigned_on, automatic=correlation.automatic, subject=correlation.subject)


@dataclass(frozen=True, slots=True)
class Alert:
    """One user told about one transition (schemas/alerts.avsc)."""

    event_id: str
    tenant: str
    event_type: str
    user: str
    event_time: datetime
    source_record_id: str  # the transition's event id
    assigned_on: datetime | None
    record_owner: str | None
    message: str

    def to_record(self) -> dict[str, Any]:
        return field_values(self)


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of an unanswered inbound mail (schemas/escalations.avsc), with its alerts."""

    event_id: str
    tenant: str
    message_id: str  # the inbound mail whose clock this is
    conversation_id: str
    state: State
    previous_state: State | None
    policy: str
    event_time: datetime  # the deadline for WARNED / ESCALATED, the mail's time otherwise
    owner: str | None
    mailbox: str | None
    regarding: str | None
    cycle: int  # 1 for a conversation's first clock, +1 for every reopen / restart
    alerts: tuple[Alert, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "tenant": self.tenant,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "state": self.state.value,
            "previous_state": self.previous_state.value if self.previous_state else None,
            "policy": self.policy,
            "event_time": self.event_time,
            "owner": self.owner,
            "mailbox": self.mailbox,
            "regarding": self.regarding,
        }


@dataclass(slots=True)
class ConversationState:
    """The running clock of one conversation. Times are epoch milliseconds."""

    tenant: str
    conversation_id: str
    state: State
    message_id: str  # the oldest unanswered inbound mail (the newest under "restart")
    policy: str
    cycle: int
    started_ms: int  # event time of that mail
    warn_ms: int  # deadlines, computed once when the clock starts
    escalate_ms: int
    changed_ms: int  # event time of the last transition
    owner: str | None = None
    mailbox: str | None = None
    regarding: str | None = None
    assigned_on_ms: int | None = None

    @property
    def is_open(self) -> bool:
        return self.state is not State.RESOLVED

    def to_dict(self) -> dict[str, Any]:
        data = field_values(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationState:
        values = {name: data.get(name) for name in field_names(cls)}
        values["state"] = State(values["state"])
        return cls(**values)

