"""Value types of correlation: the per-mail index entry and the decision."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from pipeline.correlation.methods.base import method_label

MailType = Literal["new", "reply", "forward"]


# IndexedMail and Correlation are made once per mail, so they are not frozen: a frozen
# dataclass sets each field through object.__setattr__ in __init__, which made building these
# two ~10x slower (~7 µs of a mail's ~50 µs).  Treat them as immutable all the same: an entry is
# shared by the index and its store, a decision by every consumer; change one with
# dataclasses.replace.


@dataclass(slots=True)
class IndexedMail:
    """One index entry per mail, holding every hash of it (one table record per mail).

    The methods fill their own fields (``MethodStrategy.entry_fields``) and derive their lookups
    from the entry (``MethodStrategy.index_keys``), so a store only has to keep entries; lookups
    are rebuilt after recovery.
    """

    message_id: str
    conversation_id: str
    event_time: float  # epoch seconds
    direction: str = "in"
    method: int = 0  # how this mail was correlated (a duplicate delivery reports it again)
    confidence: float = 1.0  # of that decision, reported again too (entries written before it: 1.0)
    mail_type: str = "new"
    regarding: str | None = None
    parent_message_id: str | None = None
    tracking_token: str | None = None
    conversation_key: str | None = None  # hex of the 22-byte Thread-Index header block
    subject_key: str = ""  # the normalized subject (filtered words joined by one space)
    subject_words: tuple[str, ...] = ()  # subject hashes: at most hash_max_count unique words
    addresses: tuple[str, ...] = ()  # address hashes: at most hash_max_count unique addresses
    own_shingles: tuple[int, ...] = ()
    from_addr: str = ""
    from_name: str = ""
    version_tags: tuple[str, ...] = ()  # engine.version_tags of the subject, sorted
    series_head: str | None = None  # "sender|N|k" for part k = 0 or 1 of a "[k/N]" series
    # Ids the mail names in In-Reply-To / References, nearest first (methods.in_reply_to).
    references: tuple[str, ...] = ()
    campaign_id: str | None = None  # so that a bounce of this mail counts for its campaign
    # identity.content_digest of the mail: tells a duplicate delivery from another mail reusing
    # the Message-ID. "" = unknown (entries written before the digest existed).
    content_digest: str = ""
    # What this mail tells the index's clock (index.CorrelationIndex.clock_time): its Date, no
    # later than its arrival; None for mail without a Date, whose arrival time (an ingest of an old
    # mailbox: today) says nothing about when it was written.
    clock_time: float | None = None
    # What a corrected decision of this mail is written with when a correction comes after the
    # mail (correlation.corrections): its subject, recipients and mailbox ("" / () in entries
    # written before corrections existed).
    subject: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    mailbox: str = ""
    # The mail's kind of automatic mail (pipeline.mail.automatic), "" for a person's: a reply to an
    # automatic mail is no response ("" in entries written before it existed).
    automatic: str = ""

    def to_dict(self) -> dict[str, Any]:
        # Flat fields only: a direct read is ~10x faster than dataclasses.asdict's deep copy,
        # and this runs once per mail in the worker.
        return {name: getattr(self, name) for name in _INDEXED_MAIL_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexedMail:
        # An entry written by an older version may hold a field this one dropped.
        values = {name: value for name, value in data.items() if name in _INDEXED_MAIL_FIELDS}
        for name in ("subject_words", "addresses", "own_shingles", "version_tags", "references", "to", "cc", "bcc"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)


_INDEXED_MAIL_FIELDS = tuple(f.name for f in fields(IndexedMail))


@dataclass(frozen=True, slots=True)
class Response:
    """An outbound reply answering an inbound mail."""

    answers_message_id: str
    responder: str
    inbound_time: datetime
    seconds: float


@dataclass(slots=True)
class Correlation:
    """The decision for one mail in one generation, with the evidence that made it."""

    tenant: str
    message_id: str
    conversation_id: str
    method: int  # a code of methods.base.Method or of another registered strategy
    mail_type: MailType
    direction: str
    event_time: datetime
    # How sure the decision is (0-1): of a link, that the parent is right; of a new conversation,
    # that no indexed mail is its parent (DESIGN.md §9).
    confidence: float
    generation: int = 0
    settings_fingerprint: str = ""
    parent_message_id: str | None = None
    regarding: str | None = None
    tracking_token: str | None = None
    candidate_count: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)
    subject: str = ""
    from_addr: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    untracked_reason: str | None = None
    loop: bool = False
    response: Response | None = None
    # Findings a consumer may count, e.g. "message_id_collision" (the mail reused another mail's
    # Message-ID and is tracked under a derived one; the evidence says which).
    flags: tuple[str, ...] = ()
    # The mail's kind of automatic mail (pipeline.mail.automatic.AUTOMATIC_KINDS), "" for a person's.
    automatic: str = ""

    @property
    def method_name(self) -> str:
        return method_label(self.method)

    @property
    def event_id(self) -> str:
        """Stable id: the same mail in the same generation always gets the same id; an untracked
        record (loop, duplicate, excluded) gets its own, so it never replaces the tracked one."""
        kind = f"untracked:{self.untracked_reason}" if self.untracked_reason else "correlation"
        return stable_event_id(kind, self.tenant, self.message_id, str(self.generation))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["method"] = int(self.method)
        data["method_name"] = self.method_name
        data["event_id"] = self.event_id
        data["event_time"] = self.event_time.isoformat()
        if self.response is not None:
            data["response"]["inbound_time"] = self.response.inbound_time.isoformat()
        return data


def own_conversation_id(tenant: str, message_id: str) -> str:
    """The conversation a mail starts when it has no parent."""
    return "c-" + stable_event_id("conversation", tenant, message_id)[:16]


def stable_event_id(*parts: str) -> str:
    """32 hex digits derived from ``parts``; replays of the same input give the same id."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
