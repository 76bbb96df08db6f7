"""ConversationIndex (5): the 22-byte header block of Outlook's ``Thread-Index`` equals an indexed mail's."""

from __future__ import annotations

from typing import Any

from pipeline.correlation import thread_index
from pipeline.correlation.methods.base import IndexKeys, Match, MailFacts, Method, MethodStrategy


class ConversationIndex(MethodStrategy):
    code = Method.CONVERSATION_INDEX
    label = "ConversationIndex"
    content_based = True
    switch = "use_conversation_index"

    def entry_fields(self, correlator, facts: MailFacts) -> dict[str, Any]:
        return {"conversation_key": thread_index.conversation_key(facts.mail.thread_index)}

    def index_keys(self, correlator, entry) -> IndexKeys:
        return (("conversation_key", (entry.conversation_key,)),) if entry.conversation_key else ()

    def match(self, correlator, facts: MailFacts) -> Match | None:
        key = thread_index.conversation_key(facts.mail.thread_index)
        if not key:
            return None
        parent, count = correlator.most_recent(correlator.index.ids("conversation_key", key), facts.ts)
        return Match(self.code, parent, count, {"conversation_key": key}) if parent is not None else None

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"its Outlook Thread-Index names conversation {evidence.get('conversation_key')}"
