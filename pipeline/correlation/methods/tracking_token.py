"""TrackingToken (4): a token of ours in the subject; the most recent mail carrying it."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import IndexKeys, Match, MailFacts, Method, MethodStrategy, recency


class TrackingToken(MethodStrategy):
    code = Method.TRACKING_TOKEN
    label = "TrackingToken"
    switch = "tracking_token.enabled"

    def index_keys(self, correlator, entry) -> IndexKeys:
        # The engine writes the entry's token: it is part of every decision, not only of this method's.
        return (("token", (entry.tracking_token,)),) if entry.tracking_token else ()

    def match(self, correlator, facts: MailFacts) -> Match | None:
        """The most recent mail with the token; in "confirms" mode the most recent one whose
        subject is unchanged or that shares an address (the token alone does not decide)."""
        token = facts.token
        if token is None:
            return None
        candidates = correlator.candidates(correlator.index.ids("token", token), facts.ts)
        candidates.sort(key=recency, reverse=True)
        confirm = correlator.settings.tracking_token.mode == "confirms"
        subject_key = facts.subject.subject_key
        for parent in candidates:
            evidence: dict = {"token": token}
            if confirm and parent.subject_key != subject_key:
                common = sorted(set(facts.addresses).intersection(parent.addresses))
                if not common:
                    continue
                evidence.update(subject_changed=True, matched_addresses=common)
            return Match(self.code, parent, len(candidates), evidence)
        return None

    def explain(self, evidence: dict[str, Any]) -> str:
        text = f"its subject carries the tracking token {evidence.get('token')}"
        if evidence.get("subject_changed"):
            text += f"; the subject changed, confirmed by common addresses {', '.join(evidence['matched_addresses'])}"
        return text
