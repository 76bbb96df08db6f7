"""InReplyTo (3): In-Reply-To, then References from last to first, names an indexed mail."""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterator

from pipeline.correlation.methods.base import IndexKeys, Match, MailFacts, Method, MethodStrategy
from pipeline.mail.record import MailRecord

# Referenced ids kept per mail: the nearest ancestors say which thread it is in.
MAX_REFERENCES = 5
# Two mails naming the same unknown id are siblings under a ghost parent: right in 601 of 601
# such links on the development corpora, but inferred, not named, so not quite certain.
SHARED_ANCESTOR_CONFIDENCE = 0.99


def named_ids(mail: MailRecord) -> Iterator[tuple[str, str]]:
    """(header, id) pairs, nearest ancestor first: In-Reply-To, then References last to first
    (lazily: the nearest ones usually decide)."""
    for ref in mail.in_reply_to:
        yield "In-Reply-To", ref
    for ref in reversed(mail.references):
        if ref not in mail.in_reply_to:
            yield "References", ref


class InReplyTo(MethodStrategy):
    code = Method.IN_REPLY_TO
    label = "InReplyTo"
    switch = "use_in_reply_to"

    def entry_fields(self, correlator, facts: MailFacts) -> dict[str, Any]:
        mail = facts.mail
        if not mail.references:  # the common case of a reply: named_ids is its In-Reply-To
            return {"references": mail.in_reply_to[:MAX_REFERENCES]}
        return {"references": tuple(ref for _, ref in islice(named_ids(mail), MAX_REFERENCES))}

    def index_keys(self, correlator, entry) -> IndexKeys:
        # Two mails naming the same id we never saw are in one thread.
        return (("reference", entry.references),)

    def match(self, correlator, facts: MailFacts) -> Match | None:
        mail = facts.mail
        if not (mail.in_reply_to or mail.references):
            return None
        index, ts = correlator.index, facts.ts
        for header, ref in named_ids(mail):
            parent = index.get(ref)
            if parent is not None and correlator.in_window(parent, ts):
                return Match(self.code, parent, 1, {"header": header, "ref": ref})
        # The parent never reached us, but another mail names it too: a sibling in the
        # same thread (the nearest shared ancestor decides).
        for header, ref in named_ids(facts.mail):
            sibling, count = correlator.most_recent(index.ids("reference", ref), ts)
            if sibling is not None:
                return Match(self.code, sibling, count, {"header": header, "ref": ref, "shared_reference": True},
                             confidence=SHARED_ANCESTOR_CONFIDENCE)
        return None

    def explain(self, evidence: dict[str, Any]) -> str:
        if evidence.get("shared_reference"):
            return (f"its {evidence.get('header')} header names {evidence.get('ref')}, a mail we never saw that "
                    f"this earlier mail names too: they share an unknown ancestor (a ghost parent)")
        return f"its {evidence.get('header')} header names {evidence.get('ref')}, a mail we know"
