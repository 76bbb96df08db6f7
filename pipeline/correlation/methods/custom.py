"""Custom (7): the site's own rule, ``custom_rule = "module:function"`` called as ``rule(mail, index)``."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import Match, MailFacts, Method, MethodStrategy


class Custom(MethodStrategy):
    code = Method.CUSTOM
    label = "Custom"

    def enabled(self, correlator) -> bool:
        return correlator.custom_rule is not None

    def match(self, correlator, facts: MailFacts) -> Match | None:
        ref = correlator.custom_rule(facts.mail, correlator.index)
        parent = correlator.index.get(ref) if ref else None
        if parent is None:
            return None
        return Match(self.code, parent, 1, {"rule": correlator.settings.custom_rule or "injected", "ref": ref})

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"the custom rule {evidence.get('rule')} chose {evidence.get('ref')}"
