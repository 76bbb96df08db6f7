"""Custom (7): the site's own rule, ``custom_rule = "module:function"`` called as ``rule(mail, index)``."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import Match, MailFacts, Method, MethodStrategy


class Custom(MethodStrategy):
    code = Method.CUSTOM
    label = "Custom"

    def match(self, correlator, facts: MailFacts) -> Match | None:
        rule = correlator.custom_rule
        if rule is None:
            return None
        ref = rule(facts.mail, correlator.index)
        parent = correlator.index.get(ref) if ref else None
        if parent is None:
            return None
        return Match(self.code, parent, 1, {"rule": correlator.settings.custom_rule or "injected", "ref": ref})

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"the custom rule {evidence.get('rule')} chose {evidence.get('ref')}"
