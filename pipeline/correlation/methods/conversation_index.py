"""ConversationIndex (5): the 22-byte header block of Outlook's ``Thread-Index`` equals an indexed mail's."""

from __future__ import annotations

from typing import Any

from pipeline.correlation import thread_index
from pipeline.correlation.methods.base import IndexKeys, Match, MailFacts, Method, MethodStrategy


# Outlook copies the header block of the mail answered, so an equal block is strong evidence; but
# any client may copy a Thread-Index into mail of another conversation, and the development
# corpora have no mail that tests it without headers (all 3 Thread-Index links there named an
# unknown parent).  Above min_confidence, below unknown_parent_min_confidence.
THREAD_INDEX_CONFIDENCE = 0.95


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
        if parent is None:
            return None
        return Match(self.code, parent, count, {"conversation_key": key}, confidence=THREAD_INDEX_CONFIDENCE)

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"its Outlook Thread-Index names conversation {evidence.get('conversation_key')}"
