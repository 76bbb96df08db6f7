"""People's corrections of the correlation (DESIGN.md §9, docs/correlation.md "Corrections").

Pure: no Kafka, Faust or ClickHouse.  A correction names mails by Message-ID:

* ``LINK M P``: M's parent is P; M and the mail below it join P's conversation.
* ``UNLINK M``: M has no parent; M and the mail below it start M's own conversation.
* ``MERGE A B``: every mail of B's conversation joins A's conversation (parents unchanged); the
  record names B as ``message_id`` (the mail whose conversation is corrected) and A as the other.
* ``SPLIT M``: M and the mail below it leave their conversation for M's own one.

Of a mail's corrections the latest (``created_at``, then ``event_id``) wins, whatever order they
arrive in.  The correlator applies a mail's correction before every method when it correlates
the mail (``Correlator.correlate``), and to mail already indexed when the correction arrives or
when the last mail it names is indexed (``Correlator.correct``): both give the same index, so a
replay, which may read the corrections before or after the mail, ends where the live run did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

from pipeline.correlation import subject as subjects
from pipeline.correlation.methods.base import Match, Method
from pipeline.correlation.model import IndexedMail, own_conversation_id

if TYPE_CHECKING:
    from pipeline.correlation.index import CorrelationIndex


class Action(str, Enum):
    LINK = "LINK"
    UNLINK = "UNLINK"
    MERGE = "MERGE"
    SPLIT = "SPLIT"


# The actions that name a second mail (LINK: the parent; MERGE: a mail of the conversation joined).
NAMES_OTHER = frozenset({Action.LINK, Action.MERGE})


# The evidence key of a decision that replaces one already made for the mail (Correlator.correct).
RECORRECTED = "recorrected"


def is_recorrection(evidence_json: str) -> bool:
    """Whether a ``mail.correlated`` record's evidence (its JSON text) replaces a decision already made."""
    # The substring first: nearly no record has it, and parsing every record's evidence costs.
    return f'"{RECORRECTED}"' in evidence_json and json.loads(evidence_json).get(RECORRECTED) is True


class CorrectionError(ValueError):
    """A correction that cannot mean anything (a missing or extra second mail, a mail linked to itself)."""


@dataclass(frozen=True, slots=True)
class Correction:
    event_id: str
    tenant: str
    action: Action
    message_id: str
    other_message_id: str | None
    author: str
    reason: str
    created_at: datetime

    def __post_init__(self) -> None:
        if not self.message_id:
            raise CorrectionError("a correction names the mail it corrects")
        if (self.other_message_id is not None) != (self.action in NAMES_OTHER):
            raise CorrectionError(f"{self.action.value} takes {'two mails' if self.action in NAMES_OTHER else 'one mail'}")
        if self.other_message_id == self.message_id:
            raise CorrectionError(f"{self.action.value} names {self.message_id} twice")

    @classmethod
    def from_record(cls, record: dict) -> Correction:
        """From a ``corrections`` record as decoded (or its table state, times as ISO strings)."""
        created_at = record["created_at"]
        return cls(event_id=record["event_id"], tenant=record["tenant"], action=Action(record["action"]),
                   message_id=record["message_id"], other_message_id=record.get("other_message_id"),
                   author=record["author"], reason=record.get("reason") or "",
                   created_at=datetime.fromisoformat(created_at) if isinstance(created_at, str) else created_at)

    @property
    def order(self) -> tuple[datetime, str]:
        return self.created_at, self.event_id

    @property
    def named(self) -> tuple[str, ...]:
        """The mails it names; it applies once all of them are indexed."""
        return (self.message_id,) if self.other_message_id is None else (self.message_id, self.other_message_id)

    def evidence(self) -> dict[str, Any]:
        """What a corrected decision says about it (``threadline explain``: "corrected by ...")."""
        return {"correction": {"event_id": self.event_id, "action": self.action.value, "author": self.author,
                               "reason": self.reason, "created_at": self.created_at.isoformat(),
                               "message_id": self.message_id, "other_message_id": self.other_message_id}}


class CorrectionBook:
    """One tenant's corrections in force: the latest per corrected mail."""

    def __init__(self, corrections: Iterable[Correction] = ()) -> None:
        self._by_mail: dict[str, Correction] = {}
        self._naming: dict[str, set[str]] = {}  # a mail -> the corrected mails whose correction names it
        for correction in corrections:
            self.add(correction)

    def add(self, correction: Correction) -> bool:
        """Keep ``correction`` unless its mail has a later one; whether it is now in force."""
        current = self._by_mail.get(correction.message_id)
        if current is not None:
            if current.order >= correction.order:
                return False
            for named in current.named:
                self._naming[named].discard(current.message_id)
        self._by_mail[correction.message_id] = correction
        for named in correction.named:
            self._naming.setdefault(named, set()).add(correction.message_id)
        return True

    def of(self, message_id: str) -> Correction | None:
        """The correction in force for this mail."""
        return self._by_mail.get(message_id)

    def naming(self, message_id: str) -> list[Correction]:
        """The corrections in force that name this mail, oldest first."""
        return sorted((self._by_mail[m] for m in self._naming.get(message_id, ())), key=lambda c: c.order)

    def deciding(self, message_id: str, index: CorrelationIndex) -> Correction | None:
        """The correction that decides this mail's parent before any method is tried: its LINK to
        an indexed mail (however old: a person's link has no window), UNLINK or SPLIT.  A MERGE
        moves the conversation once the mail is indexed (:func:`apply_correction`)."""
        correction = self._by_mail.get(message_id)
        if correction is None or correction.action is Action.MERGE:
            return None
        if correction.action is Action.LINK and correction.other_message_id not in index:
            return None  # applied when the parent is indexed
        return correction

    def __len__(self) -> int:
        return len(self._by_mail)


def corrected_match(correction: Correction, index: CorrelationIndex) -> Match | None:
    """The parent a deciding correction (:meth:`CorrectionBook.deciding`) gives: its LINK's, else none."""
    if correction.action is not Action.LINK:
        return None
    return Match(Method.CORRECTION, index.get(correction.other_message_id), 1, correction.evidence())


def apply_correction(correction: Correction, index: CorrelationIndex, tenant: str) -> list[tuple[IndexedMail, dict]]:
    """Apply ``correction`` to the mail already in ``index``: (new entry, evidence) of every mail
    it changed, oldest first, each written to the index.  Nothing until every mail it names is
    indexed, nor when it is in force already (so applying it again changes nothing), nor for a
    LINK below its own mail (a loop).

    The corrected mail of a LINK, UNLINK or SPLIT gets what the correlator gives it when the
    correction comes first (method Correction, confidence 1, its parent and conversation, its
    type from its subject), and the mail below it follows it into that conversation; a MERGE
    moves every mail of the conversation and changes no parent or method.  ``regarding`` is not
    recomputed (it needs the mail itself)."""
    named = [index.get(message_id) for message_id in correction.named]
    if None in named:
        return []
    mail = named[0]
    if correction.action is Action.MERGE:
        target = named[1].conversation_id
        moved = [entry for entry in index.entries() if entry.conversation_id == mail.conversation_id]
        corrected = None
    else:
        below = _below(index, mail)
        if correction.action is Action.LINK:
            parent = named[1]
            if parent.message_id in {entry.message_id for entry in below}:
                return []
            mail_type = subjects.mail_type_from_subject(mail.subject)
            corrected = replace(mail, parent_message_id=parent.message_id, conversation_id=parent.conversation_id,
                                 mail_type="reply" if mail_type == "new" else mail_type,
                                 regarding=parent.regarding or mail.regarding)
        else:
            corrected = replace(mail, parent_message_id=None, conversation_id=own_conversation_id(tenant, mail.message_id),
                                 mail_type=subjects.mail_type_from_subject(mail.subject))
        corrected = replace(corrected, method=int(Method.CORRECTION), confidence=1.0)
        target = corrected.conversation_id
        moved = below
    evidence = correction.evidence()
    changes = [(corrected, evidence)] if corrected is not None and corrected != mail else []
    changes += [(replace(entry, conversation_id=target),
                 evidence if entry.message_id == mail.message_id else {**evidence, "follows": mail.message_id})
                for entry in moved if entry.conversation_id != target]
    changes.sort(key=lambda change: (change[0].event_time, change[0].message_id))
    for entry, _ in changes:
        index.add(entry)
    return changes


def _below(index: CorrelationIndex, mail: IndexedMail) -> list[IndexedMail]:
    """The indexed mail that descends from ``mail`` (parent by parent) in its conversation."""
    children: dict[str, list[IndexedMail]] = {}
    for entry in index.entries():
        if entry.parent_message_id is not None and entry.conversation_id == mail.conversation_id:
            children.setdefault(entry.parent_message_id, []).append(entry)
    found, todo = [], [mail.message_id]
    seen = {mail.message_id}
    while todo:
        for child in children.get(todo.pop(), ()):
            if child.message_id not in seen:
                seen.add(child.message_id)
                found.append(child)
                todo.append(child.message_id)
    return found


def corrected_by(evidence: dict[str, Any]) -> str | None:
    """"corrected by <author> on <time> (<action>: <reason>), correction <event id>" when a
    correction decided, with the mail it moved with for mail that followed it; else None."""
    correction = evidence.get("correction")
    if not correction:
        return None
    reason = f": {correction['reason']}" if correction.get("reason") else ""
    follows = f", moved with {evidence['follows']}" if evidence.get("follows") else ""
    return (f"corrected by {correction['author']} on {correction['created_at']} ({correction['action'].lower()}"
            f"{reason}){follows}, correction {correction['event_id']}")
