"""Escalation settings from TOML and the environment, their validation, policy matching and recipients."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.escalation import MailEvent, recipients, select_policy
from pipeline.escalation.tracker import EscalationTracker
from pipeline.settings import (AUTOMATIC_KINDS, BusinessHours, EscalationPolicy, EscalationSettings, SettingsError,
                               SlaTarget, load_settings)

TOML = """
[escalation]
resolved_retention_days = 30

[escalation.default_policy]
warn_after = 8
escalate_after = 24
notify_on_escalate = ["owner", "manager:lead@ours.example"]

[[escalation.policies]]
name = "vip"
match = { mailbox = "vip@ours.example" }
warn_after = 1
escalate_after = 4
on_customer_reply = "restart"

[[escalation.policies]]
name = "support-berlin"
match = { tenant = "acme", regarding_prefix = "SUPP-" }
warn_after = 2
escalate_after = 9
business_hours = { start = "08:00", end = "17:00", weekdays = ["mon", "tue", "wed", "thu", "fri"], timezone = "Europe/Berlin" }
holidays = [2026-12-24, "2026-12-25"]
"""


T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)


def event(**fields) -> MailEvent:
    values = {"tenant": "acme", "message_id": "<a@test>", "conversation_id": "c1", "direction": "in",
              "event_time": T0} | fields
    return MailEvent(**values)


def test_policies_from_toml(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(TOML)
    escalation = load_settings(path, environ={}).escalation
    assert [p.name for p in escalation.policies] == ["vip", "support-berlin"]
    berlin = escalation.policies[1]
    assert berlin.business_hours == BusinessHours(timezone="Europe/Berlin")
    assert berlin.holidays == ("2026-12-24", "2026-12-25")  # TOML dates and ISO strings alike
    assert escalation.default_policy.notify_on_escalate == ("owner", "manager:lead@ours.example")
    assert select_policy(escalation, event(mailbox="vip@ours.example")).name == "vip"
    assert select_policy(escalation, event(regarding="SUPP-1")).name == "support-berlin"
    assert select_policy(escalation, event(tenant="beta", regarding="SUPP-1")).name == "default"


def test_policies_and_default_policy_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no threadline.toml here
    environ = {
        "THREADLINE_ESCALATION_POLICIES": '[{"name": "vip", "match": {"mailbox": "vip@x"}, "warn_after": 1, '
                                          '"escalate_after": 2}]',
        "THREADLINE_ESCALATION_DEFAULT_POLICY_WARN_AFTER": "2",
        "THREADLINE_ESCALATION_DEFAULT_POLICY_BUSINESS_HOURS": '{"start": "09:00", "timezone": "Europe/Berlin"}',
        "THREADLINE_ESCALATION_DEFAULT_POLICY_NOTIFY_ON_WARN": '["owner", "team:desk"]',
    }
    escalation = load_settings(environ=environ).escalation
    assert escalation.policies[0].match.mailbox == "vip@x"
    default = escalation.default_policy
    assert default.warn_after == 2
    assert default.business_hours == BusinessHours(start="09:00", timezone="Europe/Berlin")
    assert default.notify_on_warn == ("owner", "team:desk")


@pytest.mark.parametrize("content, message", [
    ("[escalation.default_policy]\nwarn_after = 10\nescalate_after = 5\n", "greater than warn_after"),
    ("[escalation.default_policy]\nwarn_after = 0\n", "warn_after"),
    ("[escalation.default_policy]\nbusiness_hours = { start = '17:00', end = '08:00' }\n", "after start"),
    ("[escalation.default_policy]\nbusiness_hours = { start = '8h' }\n", "time of day"),
    ("[escalation.default_policy]\nbusiness_hours = { timezone = 'Mars/Olympus' }\n", "unknown time zone"),
    ("[escalation.default_policy]\nbusiness_hours = { weekdays = [] }\n", "weekdays"),
    ("[escalation.default_policy]\nbusiness_hours = { weekdays = ['someday'] }\n", "weekdays"),
    ("[escalation.default_policy]\nholidays = ['christmas']\n", "not an ISO date"),
    ("[escalation.default_policy]\non_customer_reply = 'ignore'\n", "on_customer_reply"),
    ("[escalation.default_policy]\nmatch = { tenant = 'a' }\n", "default_policy applies to every mail"),
    ("[[escalation.policies]]\nname = 'default'\n", "must be unique"),
    ("[[escalation.policies]]\nname = 'a'\n[[escalation.policies]]\nname = 'a'\n", "must be unique"),
    ("[[escalation.policies]]\nname = 'a'\nmatch = { colour = 'red' }\n", "colour"),
    ("[escalation.default_policy]\nignore_automatic = ['out_of_office']\n", "unknown kind 'out_of_office'"),
    ("[escalation.default_policy.sla]\nfirst_response = { warn_after = 8, breach_after = 8 }\n",
     "breach_after .* greater than warn_after"),
    ("[escalation.default_policy.sla]\nresolution = { warn_after = 0, breach_after = 8 }\n", "warn_after"),
    ("[escalation.default_policy.sla]\nnext_response = { warn_after = 2 }\n", "breach_after"),
    ("[escalation.default_policy.sla]\npause = 'weekends'\n", "pause"),
    ("[escalation.default_policy.sla]\nwaiting_states = ['Closed']\n", "both wait on the customer and be resolved"),
    ("[escalation.default_policy.sla]\nresolve_after_inactivity = -1\n", "resolve_after_inactivity"),
])
def test_bad_escalation_settings_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(path, environ={})


SLA_TOML = """
[[escalation.policies]]
name = "desk"
team = "Support Berlin"
ignore_automatic = ["Bounce", "auto_reply", "list", "bounce"]

[escalation.policies.sla]
first_response = { warn_after = 1, breach_after = 2 }
next_response = false
pause = "record_state"
waiting_states = ["Waiting on Customer", " ON HOLD "]
resolved_marker = ""
resolve_after_inactivity = 0
"""


def test_sla_targets_and_automatic_mail_from_toml(tmp_path):
    path = tmp_path / "sla.toml"
    path.write_text(SLA_TOML)
    escalation = load_settings(path, environ={}).escalation
    desk = escalation.policies[0]
    assert desk.team == "Support Berlin"
    assert desk.ignore_automatic == ("bounce", "auto_reply", "list")  # normal form, duplicates dropped
    assert desk.sla.first_response == SlaTarget(warn_after=1, breach_after=2)
    assert desk.sla.next_response is None  # TOML has no null: false switches a target off
    assert desk.sla.resolution == SlaTarget(warn_after=40, breach_after=72)
    assert desk.sla.pause == "record_state"
    assert desk.sla.waiting_states == ("waiting on customer", "on hold")
    assert desk.sla.resolved_marker is None and desk.sla.resolve_after_inactivity is None
    # The defaults: every kind but mailing-list traffic is ignored; all three targets measured.
    default = escalation.default_policy
    assert default.ignore_automatic == tuple(kind for kind in AUTOMATIC_KINDS if kind != "list")
    assert default.team is None
    assert (default.sla.first_response, default.sla.next_response, default.sla.resolution) == (
        SlaTarget(warn_after=4, breach_after=8), SlaTarget(warn_after=4, breach_after=8),
        SlaTarget(warn_after=40, breach_after=72))
    assert (default.sla.pause, default.sla.resolved_states, default.sla.resolved_marker,
            default.sla.resolve_after_inactivity) == ("after_reply", ("resolved", "closed"), "[resolved]", 120.0)


def test_sla_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ = {
        "THREADLINE_ESCALATION_DEFAULT_POLICY_SLA_FIRST_RESPONSE": '{"warn_after": 0.5, "breach_after": 1}',
        "THREADLINE_ESCALATION_DEFAULT_POLICY_SLA_RESOLUTION": "false",
        "THREADLINE_ESCALATION_DEFAULT_POLICY_SLA_PAUSE": "none",
        "THREADLINE_ESCALATION_DEFAULT_POLICY_IGNORE_AUTOMATIC": '["bounce"]',
        "THREADLINE_ESCALATION_DEFAULT_POLICY_TEAM": "desk",
        "THREADLINE_ESCALATION_DEFAULT_POLICY_SLA_RESOLVED_MARKER": "",
    }
    default = load_settings(environ=environ).escalation.default_policy
    assert default.sla.first_response == SlaTarget(warn_after=0.5, breach_after=1)
    assert default.sla.resolution is None
    assert (default.sla.pause, default.ignore_automatic, default.team) == ("none", ("bounce",), "desk")
    assert default.sla.resolved_marker is None


def test_the_settings_example_in_the_docs_loads(tmp_path):
    docs = (Path(__file__).resolve().parents[2] / "docs" / "escalation.md").read_text(encoding="utf-8")
    example = docs.split("## Settings example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.toml"
    path.write_text(example)
    policies = {policy.name: policy for policy in load_settings(path, environ={}).escalation.policies}
    assert policies["support-berlin"].sla.pause == "record_state" and policies["support-berlin"].team
    assert "list" in policies["mailing-list"].ignore_automatic and policies["mailing-list"].sla.resolution is None


def test_recipients_substitute_the_owner_and_drop_duplicates():
    entries = ("owner", "manager:max@ours.example", "user: olga@ours.example ", "role:support-leads", "OWNER",
               "max@ours.example")
    assert recipients(entries, "olga@ours.example") == ("olga@ours.example", "max@ours.example",
                                                        "role:support-leads")
    assert recipients(("owner", "team:desk"), None) == ("team:desk",)


def test_a_policy_removed_from_the_settings_falls_back_to_the_default():
    vip = EscalationPolicy(name="vip", match={"mailbox": "vip@x"}, warn_after=1, escalate_after=2,
                           notify_on_warn=("manager:max@x",))
    before = EscalationTracker(EscalationSettings(policies=(vip,)), clock=lambda: T0)
    before.on_correlation(event(mailbox="vip@x", owner="olga@x"))
    after = EscalationTracker.from_dict(EscalationSettings(), lambda: T0, before.to_dict())
    warned = after.advance(T0 + timedelta(hours=1))
    # The deadlines stay those the clock started with; the recipients come from the default policy.
    assert [(t.state.value, t.policy, [a.user for a in t.alerts]) for t in warned] == [("WARNED", "vip", ["olga@x"])]
