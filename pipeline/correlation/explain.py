"""Say in words why a mail was correlated the way it was (``threadline explain``); the reason
for a link comes from its method's strategy (``MethodStrategy.explain``)."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.corrections import corrected_by
from pipeline.correlation.methods.base import strategy_labelled
from pipeline.mail.automatic import AUTOMATIC_LABELS

_UNTRACKED = {
    "correlation_disabled": "correlation is switched off in the settings",
    "excluded_mailbox": "its mailbox is excluded from tracking",
    "internal": "every participant is in one of our own domains (internal mail)",
    "excluded_recipient": "tracking is disabled for every external party of this mail",
    "loop": "it is a mail we sent coming back to us (loop)",
    "duplicate": "the same mail (same Message-ID, same content) was correlated before; the first decision stands",
}


def describe(correlation: dict[str, Any]) -> str:
    """A few lines for a person, from a correlation as written by ``Correlation.to_dict``."""
    # An untracked mail's record (mail.untracked) has no mail type, fingerprint or conversation
    # of its own: what is missing is left out rather than shown empty.
    kind = ", ".join(str(part) for part in (correlation.get("direction"), correlation.get("mail_type")) if part)
    fingerprint = correlation.get("settings_fingerprint")
    lines = [
        f"{correlation['message_id']}  ({kind or '?'})",
        f"  subject:      {correlation.get('subject', '')}",
        f"  conversation: {correlation.get('conversation_id') or '(none)'}  generation {correlation.get('generation', 0)}"
        + (f"  settings {fingerprint}" if fingerprint else ""),
    ]
    method = correlation.get("method_name", "None")
    evidence = correlation.get("evidence") or {}
    reason = correlation.get("untracked_reason")
    collision = evidence.get("message_id_collision")
    correction = corrected_by(evidence)
    if collision:
        lines.append(f"  collision:    its Message-ID {collision.get('message_id')} belongs to another mail with "
                     f"different content; tracked under this derived id (content {collision.get('content_digest')})")
    if reason:
        lines.append(f"  not tracked:  {_UNTRACKED.get(reason, reason)}")
        if reason == "duplicate" and evidence.get("original_message_id"):
            lines.append(f"  repeats:      {evidence.get('duplicate_of')}, a mail that reused the Message-ID "
                         f"{evidence['original_message_id']}")
        if reason == "duplicate" and evidence.get("content_unverified"):
            lines.append("  caution:      the first mail was indexed without a content digest, so only the "
                         "Message-ID was compared")
    elif correlation.get("parent_message_id"):
        lines.append(f"  linked to:    {correlation['parent_message_id']}  by {method} "
                     f"({correlation.get('method')}), {correlation.get('candidate_count', 0)} candidate(s)")
        strategy = strategy_labelled(method)
        if strategy is not None and not evidence.get("follows"):
            lines.append(f"  because:      {strategy.explain(evidence)}")
    elif correction is not None:
        lines.append("  new conversation: a person said so")
    elif evidence.get("abstained"):
        lines.extend(_abstention(evidence["abstained"]))
    else:
        lines.append("  new conversation: " + (
            f"a forward, and forwards_as_replies is off (it would have joined {evidence['would_match']})"
            if evidence.get("forward_not_reply") else "no rule found an earlier mail"))
    if correlation.get("automatic"):  # not in decisions written before the label existed
        kind = correlation["automatic"]
        lines.append(f"  automatic mail: {AUTOMATIC_LABELS.get(kind, kind)}")
    if "confidence" in correlation:  # not in decisions written before confidence existed
        lines.append(f"  confidence:   {correlation['confidence']:.2f}")
    if correction is not None:
        lines.append(f"  corrected:    {correction}")
    if correlation.get("regarding"):
        lines.append(f"  regarding:    {correlation['regarding']}")
    response = correlation.get("response")
    if response:
        lines.append(f"  answers:      {response['answers_message_id']} after {response['seconds'] / 3600:.1f} h")
    return "\n".join(lines)


def _abstention(abstained: dict[str, Any]) -> list[str]:
    """The lines for a mail a content method would have linked had it been surer."""
    method = abstained.get("method")
    strategy = strategy_labelled(method)
    because = strategy.explain(abstained.get("evidence") or {}) if strategy else "no rule matched"
    return [
        "  new conversation: no method was sure enough of an earlier mail",
        f"  would match:  {abstained.get('would_match')}  by {method}, because {because}",
        f"  abstained:    its confidence {abstained.get('confidence', 0):.2f} is below min_confidence "
        f"{abstained.get('min_confidence', 0):.2f}",
    ]
