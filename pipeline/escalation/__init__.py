"""Escalation of unanswered inbound mail and SLA targets: policies, business time and the state machines (pure)."""

from pipeline.escalation.business_time import add_business_time, business_seconds_between
from pipeline.escalation.model import Alert, ConversationState, MailEvent, State, Transition
from pipeline.escalation.policy import recipients, select_policy
from pipeline.escalation.sla import SlaEvent, SlaTracker, sla_event_id
from pipeline.escalation.tracker import EscalationTracker, transition_event_id

__all__ = [
    "Alert",
    "ConversationState",
    "EscalationTracker",
    "MailEvent",
    "SlaEvent",
    "SlaTracker",
    "State",
    "Transition",
    "add_business_time",
    "business_seconds_between",
    "recipients",
    "select_policy",
    "sla_event_id",
    "transition_event_id",
]
