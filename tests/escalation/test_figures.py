"""Support figures from escalation and SLA records (pipeline/escalation/figures.py)."""

import pytest

from pipeline.escalation.figures import current_states, format_duration, nearest_rank, sla_figures


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "–"), (0, "0 s"), (45, "45 s"), (59.6, "1 min"), (12_000, "3 h 20 min"), (9 * 86_400 + 3_600, "9 d 1 h"),
    (2 * 86_400 + 300, "2 d"), (217_084 * 3_600, "9045 d 4 h"),
])
def test_durations_read_in_the_two_largest_units(seconds, text):
    assert format_duration(seconds) == text


def test_nearest_rank_takes_a_value_that_occurs():
    assert nearest_rank([], 0.5) is None
    assert nearest_rank([3.0, 1.0, 2.0], 0.5) == 2.0 and nearest_rank([3.0, 1.0, 2.0], 0.9) == 3.0


def _sla(tenant, conversation, target, cycle, outcome, *, on_time=False, seconds=0.0, started_by="<m@test>"):
    return {"tenant": tenant, "conversation_id": conversation, "target": target, "cycle": cycle,
            "message_id": started_by, "outcome": outcome,
            "on_time": on_time, "business_seconds": seconds}


def test_each_target_instance_counts_once_by_how_it_ended():
    records = [
        _sla("a", "c1", "first_response", 1, "started"), _sla("a", "c1", "first_response", 1, "warned"),
        _sla("a", "c1", "first_response", 1, "met", on_time=True, seconds=100),
        _sla("a", "c2", "first_response", 1, "started"), _sla("a", "c2", "first_response", 1, "breached"),
        _sla("a", "c2", "first_response", 1, "met", seconds=900),
        _sla("b", "c1", "first_response", 1, "breached"),  # the other tenant's conversation of the same id
        _sla("a", "c3", "first_response", 1, "started"),
        _sla("a", "c1", "next_response", 1, "met", on_time=True, seconds=50),
        _sla("a", "c1", "next_response", 2, "started"),
        # The conversation forgotten after its retention and started over: another instance of cycle 1.
        _sla("a", "c1", "next_response", 1, "started", started_by="<later@test>"),
    ]
    figures = sla_figures(records)
    first = figures["first_response"]
    assert (first.instances, first.met_on_time, first.met_late, first.breached_open, first.open) == (4, 1, 1, 1, 1)
    assert first.share_met == pytest.approx(1 / 3)
    assert (first.p50_business_seconds, first.p90_business_seconds) == (100, 900)
    assert figures["next_response"].instances == 3 and figures["next_response"].share_met == 1.0
    assert figures["resolution"].instances == 0 and figures["resolution"].share_met is None


def test_current_state_is_the_latest_transition_of_each_conversation():
    transitions = [{"tenant": t, "conversation_id": c, "state": s} for t, c, s in (
        ("a", "c1", "OPEN"), ("a", "c1", "WARNED"), ("a", "c1", "RESOLVED"), ("a", "c1", "OPEN"),
        ("a", "c2", "OPEN"), ("a", "c2", "ESCALATED"), ("b", "c2", "OPEN"))]
    assert current_states(transitions) == {"OPEN": 2, "ESCALATED": 1}
