"""InReplyTo (3): In-Reply-To, then References from last to first, names an indexed mail."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import Match, MailFacts, Method, MethodStrategy


class InReplyTo(MethodStrategy):
    code = Method.IN_REPLY_TO
    label = "InReplyTo"

    def match(self, correlator, facts: MailFacts) -> Match | None:
        named = facts.named_ids
        if not named:
            return None
        index, ts = correlator.index, facts.ts
        for header, ref in named:
            parent = index.get(ref)
            if parent is not None and correlator.in_window(parent, ts):
                return Match(self.code, parent, 1, {"header": header, "ref": ref})
        # The parent never reached us, but another mail names it too: a sibling in the
        # same thread (the nearest shared ancestor decides).
        for header, ref in named:
            sibling, count = correlator.most_recent(index.by_reference(ref), ts)
            if sibling is not None:
                return Match(self.code, sibling, count, {"header": header, "ref": ref, "shared_reference": True})
        return None

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"its {evidence.get('header')} header names {evidence.get('ref')}, a mail we know"
