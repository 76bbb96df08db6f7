"""Determinism of the state machine over random mail sequences (hypothesis): a replay gives the same
transitions, extra clock ticks between mails change nothing, a tracker restored from its
serialised state continues exactly like the one that never stopped, and ignored automatic mail
changes nothing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.escalation import EscalationTracker, MailEvent, State, Transition
from pipeline.settings import BusinessHours, EscalationPolicy, EscalationSettings

FAST = settings(max_examples=120, deadline=None)
T0 = datetime(2026, 3, 27, 6, 0, tzinfo=timezone.utc)  # a Friday; Berlin changes to DST on Sunday
HORIZON_MIN = 4 * 24 * 60

POLICIES = (
    EscalationPolicy(name="vip", match={"mailbox": "vip@ours.example"}, warn_after=0.5, escalate_after=2,
                     on_customer_reply="restart", notify_on_escalate=("owner", "manager:max@ours.example"),
                     business_hours=BusinessHours(start="08:00", end="17:00", timezone="Europe/Berlin"),
                     holidays=["2026-03-30"]),
    EscalationPolicy(name="cases", match={"regarding_prefix": "SUPP-"}, warn_after=3, escalate_after=9,
                     on_customer_reply="keep", notify_on_resolve=("owner",)),
)
DEFAULT = EscalationPolicy(warn_after=4, escalate_after=8, notify_on_open=("team:intake",))
SHORT_MEMORY = EscalationSettings(policies=POLICIES, default_policy=DEFAULT, resolved_retention_days=1)
LONG_MEMORY = EscalationSettings(policies=POLICIES, default_policy=DEFAULT)


def never() -> datetime:
    raise AssertionError("the tests always pass the time")


def event(tenant: str, conversation: str, direction: str, minute: int) -> MailEvent:
    """Attributes follow from the message id, so a duplicate delivery is the same event."""
    message_id = f"<{tenant}.{conversation}.{direction}.{minute}@test>"
    digest = hashlib.sha256(message_id.encode()).digest()
    return MailEvent(
        tenant=tenant, message_id=message_id, conversation_id=conversation, direction=direction,
        event_time=T0 + timedelta(minutes=minute),
        mailbox=("support@ours.example", "vip@ours.example", None)[digest[0] % 3],
        regarding=(None, "SUPP-7", "LEAD-1")[digest[1] % 3],
        owner=(None, "olga@ours.example", "piet@ours.example")[digest[2] % 3],
        mail_type=("new", "reply")[digest[3] % 2],
    )


# A replay-like stream: each step moves a cursor by -2 .. +6 hours in quarter hours (so mail is
# mostly, not always, in time order), then delivers a mail or ticks the clock at the cursor.
MAILS = st.tuples(st.sampled_from(["acme", "beta"]), st.sampled_from(["c1", "c2"]), st.sampled_from(["in", "out"]))
STEPS = st.lists(st.tuples(st.integers(-8, 24), st.one_of(MAILS, MAILS, MAILS, st.none())), max_size=40)


def operations_of(steps: list) -> list:
    """Mails (MailEvent) and ticks (minutes after T0), in delivery order."""
    operations: list = []
    minute = 0
    for delta, mail in steps:
        minute = min(max(0, minute + 15 * delta), HORIZON_MIN)
        operations.append(minute if mail is None else event(*mail, minute))
    return operations


OPERATIONS = STEPS.map(operations_of)
EVENTS = OPERATIONS.map(lambda operations: [item for item in operations if isinstance(item, MailEvent)])


def conversations(tracker: EscalationTracker) -> dict:
    return {(tenant, conversation): tracker.state_of(tenant, conversation)
            for tenant in ("acme", "beta") for conversation in ("c1", "c2")}


def apply(tracker: EscalationTracker, operations: list) -> list[Transition]:
    out: list[Transition] = []
    for operation in operations:
        if isinstance(operation, MailEvent):
            out += tracker.on_correlation(operation)
        else:
            out += tracker.advance(T0 + timedelta(minutes=operation))
    return out


@FAST
@given(operations=OPERATIONS)
def test_replaying_the_same_input_gives_the_same_transitions(operations):
    first_tracker, second_tracker = EscalationTracker(SHORT_MEMORY, never), EscalationTracker(SHORT_MEMORY, never)
    first, second = apply(first_tracker, operations), apply(second_tracker, operations)
    assert first == second
    assert first_tracker.to_dict() == second_tracker.to_dict()


@FAST
@given(events=EVENTS, data=st.data())
def test_extra_ticks_between_mails_change_nothing(events, data):
    events = sorted(events, key=lambda e: e.event_time)
    end = T0 + timedelta(minutes=HORIZON_MIN + 60 * 24 * 3)
    plain = EscalationTracker(SHORT_MEMORY, never)
    expected: list[Transition] = []
    for item in events:
        expected += plain.advance(item.event_time)
        expected += plain.on_correlation(item)
    expected += plain.advance(end)

    ticked = EscalationTracker(SHORT_MEMORY, never)
    out: list[Transition] = []
    previous = T0
    for item in events + [None]:
        until = end if item is None else item.event_time
        span = int((until - previous).total_seconds())
        for second in sorted(data.draw(st.lists(st.integers(0, span), max_size=3))):
            out += ticked.advance(previous + timedelta(seconds=second))
        if item is not None:
            out += ticked.advance(item.event_time)
            out += ticked.on_correlation(item)
            previous = item.event_time
    out += ticked.advance(end)
    assert out == expected
    assert ticked.to_dict() == plain.to_dict()


@FAST
@given(operations=OPERATIONS, cut=st.integers(0, 40))
def test_a_restored_tracker_continues_like_the_one_that_never_stopped(operations, cut):
    end = T0 + timedelta(minutes=HORIZON_MIN + 60 * 24 * 3)
    whole = EscalationTracker(SHORT_MEMORY, never)
    expected = apply(whole, operations) + whole.advance(end)

    part = EscalationTracker(SHORT_MEMORY, never)
    out = apply(part, operations[:cut])
    restored = EscalationTracker.from_dict(SHORT_MEMORY, never, json.loads(json.dumps(part.to_dict())))
    out += apply(restored, operations[cut:]) + restored.advance(end)
    assert out == expected


AUTOMATIC = st.tuples(st.sampled_from(["acme", "beta"]), st.sampled_from(["c1", "c2"]), st.sampled_from(["in", "out"]),
                      st.sampled_from(["bounce", "auto_reply", "notifier", "auto_generated"]))


@FAST
@given(operations=OPERATIONS, floods=st.lists(st.tuples(st.integers(0, 40), st.lists(AUTOMATIC, min_size=1, max_size=6)),
                                              max_size=4))
def test_ignored_automatic_mail_anywhere_changes_no_transition(operations, floods):
    """An out-of-office flood, a bounce storm or auto-acknowledgements, at any point of the stream."""
    end = T0 + timedelta(minutes=HORIZON_MIN + 60 * 24 * 3)
    plain = EscalationTracker(SHORT_MEMORY, never)
    expected = apply(plain, operations) + plain.advance(end)
    flooded = list(operations)
    for position, burst in sorted(floods, reverse=True):
        position = min(position, len(flooded))
        # At the time of the operation before it: automatic mail moves time no further than a tick.
        before = flooded[position - 1] if position else 0
        minute = before if isinstance(before, int) else int((before.event_time - T0).total_seconds() // 60)
        for number, (tenant, conversation, direction, kind) in enumerate(burst):
            flooded.insert(position, replace(event(tenant, conversation, direction, minute), automatic=kind,
                                             message_id=f"<auto.{position}.{number}@test>"))
    # Like a tick, an automatic mail may fire an overdue deadline sooner: compare to the end.
    tracker = EscalationTracker(SHORT_MEMORY, never)
    assert apply(tracker, flooded) + tracker.advance(end) == expected


@FAST
@given(operations=OPERATIONS)
def test_every_clock_moves_forward_and_ids_are_unique(operations):
    tracker = EscalationTracker(LONG_MEMORY, never)  # nothing is forgotten within the horizon
    out = apply(tracker, operations) + tracker.advance(T0 + timedelta(days=60))
    ids = [t.event_id for t in out] + [a.event_id for t in out for a in t.alerts]
    assert len(ids) == len(set(ids))
    order = list(State)
    last: dict[tuple[str, str, int], State] = {}  # per clock (mail, cycle)
    latest: dict[tuple[str, str], State] = {}  # per conversation: its latest clock
    for transition in out:
        key = (transition.tenant, transition.message_id, transition.cycle)
        if key in last:
            assert transition.previous_state is last[key]
            assert order.index(transition.state) > order.index(last[key])
        else:
            assert transition.state is State.OPEN  # a new clock (a restart supersedes the old one)
        last[key] = latest[(transition.tenant, transition.conversation_id)] = transition.state
    # At the end every conversation is resolved or escalated: nothing is left pending.
    assert set(latest.values()) <= {State.RESOLVED, State.ESCALATED}
    # ... and the tracker holds each conversation in the state its last transition announced.
    assert {key: state.state for key, state in conversations(tracker).items() if state is not None} == latest
