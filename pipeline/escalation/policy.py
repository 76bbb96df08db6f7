"""Which policy applies to a mail, and who its recipients are."""

from __future__ import annotations

from pipeline.escalation.model import MailEvent
from pipeline.settings import EscalationMatch, EscalationPolicy, EscalationSettings

# "manager:<addr>" and "user:<addr>" name an address; any other text is a role / team, as written.
_ADDRESS_KINDS = ("manager", "user")


def matches(match: EscalationMatch, event: MailEvent) -> bool:
    """Every criterion that is set holds for ``event`` (an unset one holds for any mail)."""
    if match.tenant is not None and event.tenant != match.tenant:
        return False
    if match.mailbox is not None and (event.mailbox or "").casefold() != match.mailbox.casefold():
        return False
    if match.regarding_prefix is not None and not (event.regarding or "").casefold().startswith(
            match.regarding_prefix.casefold()):
        return False
    if match.mail_type is not None and event.mail_type != match.mail_type:
        return False
    return True


def select_policy(settings: EscalationSettings, event: MailEvent) -> EscalationPolicy:
    """The first policy in ``settings.policies`` whose match holds, else the default policy."""
    for policy in settings.policies:
        if matches(policy.match, event):
            return policy
    return settings.default_policy


def policy_named(settings: EscalationSettings, name: str) -> EscalationPolicy:
    """The policy a running clock started with; the default when the settings no longer have it."""
    for policy in settings.policies:
        if policy.name == name:
            return policy
    return settings.default_policy


def is_ignored(settings: EscalationSettings, policy_name: str | None, event: MailEvent) -> bool:
    """Automatic mail of a kind that the conversation's policy (the one its clocks run under, else the
    one chosen for this mail) ignores: it is neither a customer's mail nor our reply."""
    if not event.automatic:
        return False
    policy = select_policy(settings, event) if policy_name is None else policy_named(settings, policy_name)
    return event.automatic in policy.ignore_automatic


def recipients(entries: tuple[str, ...], owner: str | None) -> tuple[str, ...]:
    """Users named by ``entries``: ``owner`` becomes the record owner (dropped when there is none),
    ``manager:<addr>`` / ``user:<addr>`` the address; duplicates are dropped, order is kept."""
    users: list[str] = []
    for entry in entries:
        entry = entry.strip()
        kind, _, value = entry.partition(":")
        if entry.casefold() == "owner":
            user = owner
        elif value and kind.strip().casefold() in _ADDRESS_KINDS:
            user = value.strip()
        else:
            user = entry
        if user and user not in users:
            users.append(user)
    return tuple(users)


def default_owner(direction: str, recipients: tuple[str, ...] | list[str], own_domains: frozenset[str]) -> str | None:
    """Without a CRM owner, an inbound mail belongs to the first of our own addresses it was sent to
    (the agent or the shared mailbox that received it)."""
    if direction != "in":
        return None
    for address in recipients:
        if address.rpartition("@")[2].lower() in own_domains:
            return address
    return None


def record_state_settings(settings: EscalationSettings) -> list[str]:
    """``policy: setting`` for each policy setting that depends on the regarding record's CRM
    status: ``pause = "record_state"`` (with its ``waiting_states``), and ``resolved_states`` set in
    the settings. The escalation agent does not feed ``crm.entities`` to the SLA tracker yet
    (docs/escalation.md), so these have no effect in the pipeline, and the worker and ``threadline
    doctor`` say so. The default resolved_states are left out: they would warn every installation."""
    found = []
    for policy in (settings.default_policy, *settings.policies):
        if policy.sla.pause == "record_state":
            found.append(f"{policy.name}: pause = record_state")
        if "resolved_states" in policy.sla.model_fields_set and policy.sla.resolved_states:
            found.append(f"{policy.name}: resolved_states")
    return found
