"""ConversationIndex (5): the 22-byte header block of Outlook's ``Thread-Index`` equals an indexed mail's."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import Match, MailFacts, Method, MethodStrategy


class ConversationIndex(MethodStrategy):
    code = Method.CONVERSATION_INDEX
    label = "ConversationIndex"

    def match(self, correlator, facts: MailFacts) -> Match | None:
        key = facts.conversation_key
        if not (key and correlator.settings.use_conversation_index):
            return None
        parent, count = correlator.most_recent(correlator.index.by_conversation_key(key), facts.ts)
        return Match(self.code, parent, count, {"conversation_key": key}) if parent is not None else None

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"its Outlook Thread-Index names conversation {evidence.get('conversation_key')}"
