"""The correlation engine: one mail in, one explained decision out (DESIGN.md §3).

Pure Python: no Kafka, Faust or ClickHouse.  The Faust correlator, the CLI, the evaluation and
the benchmarks all drive this class; only the index's store differs between them.

The methods are the strategies registered in ``pipeline/correlation/methods/``, tried in DESIGN.md
§3 order, first hit wins, else None (0); Skipped (1) when correlation is off or the mail is
untracked.  Every decision carries its evidence and its confidence (0-1; DESIGN.md §9).

A mail is known by its Message-ID, but the sender chooses that id: a second mail with a known id
is a *duplicate* when its content is the known mail's (``identity.content_digest``), else a
*collision*, correlated like any mail under a derived id and flagged ``message_id_collision``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Callable

from pipeline.correlation import subject as subjects
from pipeline.correlation import tokens
from pipeline.correlation.corrections import (
    RECORRECTED, Correction, CorrectionBook, apply_correction, corrected_match,
)
from pipeline.correlation.identity import COLLISION_FLAG, content_digest, derived_ids
from pipeline.correlation.index import CorrelationIndex, MailStore
from pipeline.correlation.methods.base import (
    FUTURE_SLACK_S, STRATEGIES, MailFacts, Match, Method, canonical_code, has_hook, method_label, recency,
)
from pipeline.correlation.methods.xheader import parse_xref
from pipeline.correlation.model import Correlation, IndexedMail, Response, own_conversation_id
from pipeline.mail.automatic import WRITTEN_BY_PEOPLE
from pipeline.mail.record import MailRecord
from pipeline.settings import CorrelationSettings, UntrackedSettings

Clock = Callable[[], datetime]
CustomRule = Callable[[MailRecord, CorrelationIndex], "str | None"]
RegardingResolver = Callable[[MailRecord], "str | None"]

# Patch series and multi-part announcements ("[PATCH v2 3/7]", "[2/2] repo git commit: ..."):
# git send-email and commit mailers thread every part to the cover letter ([0/N]) or, without
# one, to the first part; the parts of one series leave one sender within minutes.
_SERIES_TAG = re.compile(r"\[(?:[^\]\[]{0,40}?\s)?(\d{1,3})/(\d{1,3})\]")
_BRACKET_TAG = re.compile(r"\[([^\]]*)\]")
_TAG_TOKEN = re.compile(r"[^\s,]+")
_PART_COUNTER = re.compile(r"\d{1,3}/\d{1,3}")
_NO_TAGS: frozenset[str] = frozenset()


def version_tags(subject: str) -> frozenset[str]:
    """The tokens of the subject's "[...]" tags that carry a digit, part counters aside: "v2" of
    "[PATCH v2 3/7]", "5.1" of "[PATCH AUTOSEL 5.1 154/219]".  Another version of a posting is
    another thread; the parts of one ("3/7", "4/7") and word tags ("[RESULT]") are not."""
    if "[" not in subject:
        return _NO_TAGS
    return frozenset(token.casefold() for tag in _BRACKET_TAG.findall(subject) for token in _TAG_TOKEN.findall(tag)
                     if any(char.isdigit() for char in token) and not _PART_COUNTER.fullmatch(token))


def series_part(subject: str) -> tuple[int, int] | None:
    """(k, N) of a "[k/N]" tag in the subject, when 0 <= k <= N."""
    match = _SERIES_TAG.search(subject) if "[" in subject else None
    if match is None:
        return None
    part, total = int(match.group(1)), int(match.group(2))
    return (part, total) if 0 <= part <= total and total > 1 else None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _clock_time(mail: MailRecord, ts: float) -> float | None:
    """What ``mail`` tells the index's clock: its Date, no later than a day after its arrival
    (a sender cannot date mail into the future); None without a Date.  ``ts`` is the mail's
    event time, which is its Date when it has one."""
    if mail.date is None:
        return None
    if mail.received_at is None:
        return ts
    return min(ts, _as_utc(mail.received_at).timestamp() + FUTURE_SLACK_S)


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def load_custom_rule(spec: str) -> CustomRule:
    """Import ``module:function``; a clear error when it cannot be loaded."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"custom_rule must be 'module:function', got {spec!r}")
    try:
        rule = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"custom_rule {spec!r} cannot be loaded: {exc}") from exc
    if not callable(rule):
        raise ValueError(f"custom_rule {spec!r} is not callable")
    return rule


@dataclass(frozen=True, slots=True)
class SubjectFacts:
    """Everything the engine derives from a subject line alone.  Replies repeat their thread's
    subject, so these are cached per subject (see ``Correlator._subject_facts``)."""

    words: tuple[str, ...]
    subject_key: str
    mail_type: str
    series: tuple[int, int] | None
    version_tags: frozenset[str]
    sorted_version_tags: tuple[str, ...]  # as an entry keeps them
    token: str | None  # our tracking token in the subject (None when tracking tokens are off)


# Distinct subjects remembered by one correlator; the cache is dropped whole when full (it is
# a pure function of the subject, so dropping it changes speed, never a decision).
_SUBJECT_CACHE_SIZE = 100_000


def _same_content(entry: IndexedMail, digest: str) -> bool:
    """An entry without a digest (indexed before digests existed) cannot be told apart: it counts
    as the same mail, as before, and the duplicate says ``content_unverified``."""
    return not entry.content_digest or entry.content_digest == digest


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


class Correlator:
    """Correlates the mail of one tenant, in order, against its index."""

    def __init__(
        self,
        settings: CorrelationSettings,
        store: MailStore | None = None,
        *,
        tenant: str = "default",
        untracked: UntrackedSettings | None = None,
        clock: Clock = utc_now,
        generation: int = 0,
        custom_rule: CustomRule | None = None,
        regarding_resolver: RegardingResolver | None = None,
        corrections: CorrectionBook | None = None,
    ) -> None:
        self.settings = settings
        self.tenant = tenant
        self.untracked = untracked or UntrackedSettings()
        self.clock = clock
        self.generation = generation
        self.fingerprint = settings.fingerprint()
        self.window_s = settings.window_days * 86_400.0
        if custom_rule is None and settings.custom_rule:
            custom_rule = load_custom_rule(settings.custom_rule)
        self.custom_rule = custom_rule
        # Every registered method keeps its entry fields and index keys; only the enabled ones match.
        # Per mail, only the hooks a method has are called.
        methods = STRATEGIES.values()
        self._matching = tuple(strategy for strategy in methods if strategy.enabled(self))
        self._entry_fields = tuple(strategy.entry_fields for strategy in methods if has_hook(strategy, "entry_fields"))
        self.index = CorrelationIndex(store, tuple(
            partial(strategy.index_keys, self) for strategy in methods if has_hook(strategy, "index_keys")))
        self.regarding_resolver = regarding_resolver
        self.corrections = corrections if corrections is not None else CorrectionBook()
        self._own_domains = frozenset(d.lower() for d in self.untracked.own_domains)
        self._excluded_addresses = frozenset(a.lower() for a in self.untracked.excluded_addresses)
        self._excluded_domains = frozenset(d.lower() for d in self.untracked.excluded_domains)
        self._excluded_mailboxes = frozenset(self.untracked.excluded_mailboxes)
        self._subject_cache: dict[str, SubjectFacts] = {}
        self._hash_max_count = settings.smart_matching.hash_max_count
        self._last_digest: tuple[MailRecord | None, str] = (None, "")

    # -- public ----------------------------------------------------------------------------
    def correlate(self, mail: MailRecord) -> Correlation:
        event_dt = _as_utc(mail.event_time or self.clock())
        ts = event_dt.timestamp()
        index = self.index
        # Evict against the index's clock, not this mail's time: a late, old mail must not evict
        # what newer mail still needs, a future-dated or undated one must not evict everything,
        # and the index stays a function of its input (see CorrelationIndex.clock_time).
        index.evict_older_than(index.clock_time - self.window_s)

        if not self.settings.enabled:
            return self._result(mail, event_dt, Method.SKIPPED, 1.0, untracked_reason="correlation_disabled")
        participants = mail.participants
        reason = self._untracked_reason(mail, participants)
        if reason is not None:
            return self._result(mail, event_dt, Method.SKIPPED, 1.0, untracked_reason=reason)

        digest = self._content_digest(mail)
        message_id, known, collision = self._identity(mail, digest)
        if known is not None:
            return self._repeat(mail, event_dt, known, message_id)

        facts = self._subject_cache.get(mail.subject) or self._subject_facts(mail.subject)
        addresses = participants[: self._hash_max_count]
        token = facts.token
        mail_type = facts.mail_type

        mail_facts = MailFacts(mail, ts, facts, addresses, token)
        # A person's correction of this mail outranks every method (correlation.corrections).
        correction = self.corrections.deciding(message_id, index)
        floor = self._content_floor(mail)
        match, abstained = (corrected_match(correction, index), None) if correction else self._match(mail_facts, floor)
        evidence: dict = {}
        confidence = 1.0
        if correction is not None:
            evidence = correction.evidence()
        elif match is not None and mail_type == "forward" and not self.settings.forwards_as_replies:
            evidence = {"forward_not_reply": True, "would_match": match.parent.message_id,
                        "would_method": method_label(match.method)}
            match = None
        elif match is None and abstained is not None:
            evidence = {"abstained": {
                "method": method_label(abstained.method), "would_match": abstained.parent.message_id,
                "confidence": abstained.confidence, "min_confidence": floor,
                "evidence": abstained.evidence,
            }}
            # As sure that no indexed mail is the parent as the most confident guess was unsure of its own.
            confidence = 1.0 - abstained.confidence

        if match is None:
            parent = None
            method = Method.NONE if correction is None else Method.CORRECTION
            conversation_id = own_conversation_id(self.tenant, message_id)
            regarding = self._regarding_without_parent(mail)
            candidate_count = 0
        else:
            parent = match.parent
            method = match.method
            confidence = match.confidence
            evidence = match.evidence
            conversation_id = parent.conversation_id
            regarding = parent.regarding or self._regarding_without_parent(mail)
            candidate_count = match.candidate_count
            if mail_type == "new":
                mail_type = "reply"  # linked by its headers or content though its subject has no prefix

        if collision is not None:
            evidence = {**evidence, COLLISION_FLAG: collision}

        response = None
        # Only people's mail answers and is answered: an auto-acknowledgement answers nothing; a reply
        # linked to automatic mail answers the person's mail above it, so that the figures are those
        # of the same mail without the automatic one (a reply to an out-of-office after our mail
        # answers nothing: above it is our own mail).
        answered = self._answered(parent) if mail.direction == "out" and mail.automatic in WRITTEN_BY_PEOPLE else None
        if answered is not None and answered.direction == "in":
            response = Response(
                answers_message_id=answered.message_id,
                responder=mail.from_addr,
                inbound_time=datetime.fromtimestamp(answered.event_time, timezone.utc),
                seconds=max(0.0, ts - answered.event_time),
            )

        parent_message_id = parent.message_id if parent else None
        subject = mail.subject
        entry = IndexedMail(
            message_id=message_id,
            conversation_id=conversation_id,
            event_time=ts,
            direction=mail.direction,
            method=int(method),
            confidence=confidence,
            mail_type=mail_type,
            regarding=regarding,
            parent_message_id=parent_message_id,
            tracking_token=token,
            subject_key=facts.subject_key,
            subject_words=facts.words,
            addresses=addresses,
            from_addr=mail.from_addr,
            campaign_id=mail.campaign_id,
            content_digest=digest,
            clock_time=_clock_time(mail, ts),
            subject=subject,
            to=mail.to,
            cc=mail.cc,
            bcc=mail.bcc,
            mailbox=mail.mailbox,
            automatic=mail.automatic,
        )
        # The methods' own fields, set before the entry is indexed (a call with **fields would
        # first build a dict of every field).
        for entry_fields in self._entry_fields:
            for name, value in entry_fields(self, mail_facts).items():
                setattr(entry, name, value)
        index.add(entry)
        return Correlation(
            tenant=self.tenant,
            message_id=message_id,
            conversation_id=conversation_id,
            method=method,
            mail_type=mail_type,  # type: ignore[arg-type]
            direction=mail.direction,
            event_time=event_dt,
            confidence=confidence,
            generation=self.generation,
            settings_fingerprint=self.fingerprint,
            parent_message_id=parent_message_id,
            regarding=regarding,
            tracking_token=token,
            candidate_count=candidate_count,
            evidence=evidence,
            subject=subject,
            from_addr=mail.from_addr,
            to=mail.to,
            cc=mail.cc,
            bcc=mail.bcc,
            response=response,
            flags=(COLLISION_FLAG,) if collision is not None else (),
            automatic=mail.automatic,
        )

    def _answered(self, parent: IndexedMail | None) -> IndexedMail | None:
        """The mail an outbound mail linked to ``parent`` answers: ``parent``, or when that is
        automatic mail (our acknowledgement, an out-of-office, a bounce) the nearest mail above it
        in the conversation that is not, as if the automatic mail were not there. None when the
        chain ends (or leaves the index) first."""
        entry, seen = parent, set()
        while entry is not None and entry.automatic not in WRITTEN_BY_PEOPLE:
            if entry.parent_message_id is None or entry.message_id in seen:
                return None
            seen.add(entry.message_id)
            entry = self.index.get(entry.parent_message_id)
        return entry

    def correct(self, correction: Correction) -> list[Correlation]:
        """Apply a correction to the mail already indexed (it came after them); the corrected
        decision of every mail it changed, for a consumer that keeps the newest decision per mail.
        Each says ``recorrected`` in its evidence: it replaces a decision already made (a consumer
        that acts once per mail, such as escalation, leaves it out)."""
        return [self._indexed_result(entry, {**evidence, RECORRECTED: True}) for entry, evidence in
                apply_correction(correction, self.index, self.tenant)]

    def corrections_after(self, message_id: str) -> list[Correlation]:
        """Apply the corrections that name the mail just indexed under ``message_id`` (a MERGE of
        its conversation, a LINK to it that waited for it); the decisions they changed."""
        return [result for correction in self.corrections.naming(message_id) for result in self.correct(correction)]

    def indexed_id(self, mail: MailRecord) -> str:
        """The id ``mail`` is indexed under, or would be if it were correlated now: its Message-ID,
        or for a mail reusing another mail's Message-ID the derived id (a stream processor that
        asks "did I index this very record already?" must look it up under this id)."""
        return self._identity(mail, self._content_digest(mail))[0]

    # -- decisions -------------------------------------------------------------------------
    def _match(self, facts: MailFacts, floor: float) -> tuple[Match | None, Match | None]:
        """(the first match of the enabled methods in order, the most confident content match that
        abstained before it): a content method less sure than ``floor`` (``_content_floor``) makes
        no decision, and the methods after it are tried."""
        abstained = None
        for strategy in self._matching:
            match = strategy.match(self, facts)
            if match is None:
                continue
            if not (strategy.content_based and match.confidence < floor):
                return match, abstained
            if abstained is None or match.confidence > abstained.confidence:
                abstained = match
        return None, abstained

    def _content_floor(self, mail: MailRecord) -> float:
        """How sure a content method must be.  A mail whose threading headers name only mail we
        never saw (its ghost parents: the parent predates the index or went to another mailbox)
        says which conversation it continues, and that one is not here: a similar-looking indexed
        mail is then most likely another conversation, so only strong evidence may link it."""
        if self.settings.use_in_reply_to and (mail.in_reply_to or mail.references):
            return max(self.settings.min_confidence, self.settings.unknown_parent_min_confidence)
        return self.settings.min_confidence

    def _subject_facts(self, subject: str) -> SubjectFacts:
        facts = self._subject_cache.get(subject)
        if facts is not None:
            return facts
        smart = self.settings.smart_matching
        mail_type, stripped = subjects.reply_chain(subject)
        # Reply/forward prefixes of every language go first, wherever they stand among the tags,
        # so that "AW: [list] Re: x" and "[list] x" hash alike; tags stay: "[RESULT] [VOTE] x" is
        # not "[VOTE] x". The configured filter still applies after that.
        words = subjects.subject_hashes(stripped if smart.strategy == "evidence" else subject, smart)
        tags = version_tags(subject)
        tracking = self.settings.tracking_token
        facts = SubjectFacts(
            words=words,
            subject_key=" ".join(sorted(words)),
            mail_type=mail_type,
            series=series_part(subject),
            version_tags=tags,
            sorted_version_tags=tuple(sorted(tags)),
            token=tokens.find_token(tracking, subject) if tracking.enabled else None,
        )
        if len(self._subject_cache) >= _SUBJECT_CACHE_SIZE:
            self._subject_cache.clear()
        self._subject_cache[subject] = facts
        return facts

    def _untracked_reason(self, mail: MailRecord, participants: tuple[str, ...]) -> str | None:
        if mail.mailbox and mail.mailbox in self._excluded_mailboxes:
            return "excluded_mailbox"
        xref = parse_xref(mail.xref) if mail.xref else None
        if (xref and mail.direction == "in" and xref.get("instance") == self.settings.instance_id
                and xref.get("ref") == mail.message_id):
            return "loop"  # a mail we sent, stamped with its own id, came back in
        if self._own_domains and not self.untracked.track_internal and participants and all(
            _domain(address) in self._own_domains for address in participants
        ):
            return "internal"
        if self._excluded_addresses or self._excluded_domains:
            counterparts = (mail.from_addr,) if mail.direction == "in" else (*mail.to, *mail.cc, *mail.bcc)
            external = [a for a in counterparts if _domain(a) not in self._own_domains]
            if external and all(
                a in self._excluded_addresses or _domain(a) in self._excluded_domains for a in external
            ):
                return "excluded_recipient"
        return None

    def _content_digest(self, mail: MailRecord) -> str:
        """``identity.content_digest``, remembered for the last mail (``indexed_id`` and then
        ``correlate`` of one mail hash its body once)."""
        last, digest = self._last_digest
        if last is not mail:
            digest = content_digest(mail)
            self._last_digest = (mail, digest)
        return digest

    def _identity(self, mail: MailRecord, digest: str) -> tuple[str, IndexedMail | None, dict | None]:
        """(the id to track ``mail`` under, the indexed mail it repeats or None, the collision
        evidence or None).

        A known Message-ID with the same content is a repeat of that mail; so is our own mail
        coming back inbound (a loop: the outbound entry is ours, whatever the echo carries).
        With other content it is another mail: it takes the first derived id that is free or
        already holds this very content (then it is a repeat of that colliding mail)."""
        index = self.index
        known = index.get(mail.message_id)
        if known is None:
            return mail.message_id, None, None
        if (known.direction == "out" and mail.direction == "in") or _same_content(known, digest):
            return mail.message_id, known, None
        for candidate in derived_ids(mail.message_id, digest):
            entry = index.get(candidate)
            if entry is None:
                return candidate, None, {
                    "message_id": mail.message_id,
                    "content_digest": digest,
                    "known_content_digest": known.content_digest,
                }
            if _same_content(entry, digest):
                return candidate, entry, None
        raise AssertionError("unreachable: derived_ids never ends")

    def _repeat(self, mail: MailRecord, event_dt: datetime, known: IndexedMail, message_id: str) -> Correlation:
        """The same mail again: our own mail coming back (loop) or a duplicate delivery (the same
        mail in two mailboxes, a redelivery, the inbound and the outbound copy). Either way the
        first decision stands and this one is reported as untracked, so it never overwrites the
        first one downstream. ``message_id`` is the id the first one was tracked under."""
        if known.direction == "out" and mail.direction == "in":
            return self._result(mail, event_dt, Method.SKIPPED, known.confidence, untracked_reason="loop",
                                message_id=message_id, conversation_id=known.conversation_id, loop=True,
                                evidence={"loop_of": known.message_id})
        evidence: dict = {"duplicate_of": known.message_id}
        if not known.content_digest:
            evidence["content_unverified"] = True  # indexed before content digests existed
        if message_id != mail.message_id:
            evidence["original_message_id"] = mail.message_id
        return self._result(
            mail, event_dt, canonical_code(known.method), known.confidence, untracked_reason="duplicate",
            message_id=message_id,
            conversation_id=known.conversation_id,
            parent_message_id=known.parent_message_id,
            regarding=known.regarding,
            tracking_token=known.tracking_token,
            evidence=evidence,
            mail_type=known.mail_type,  # type: ignore[arg-type]
        )

    def _regarding_without_parent(self, mail: MailRecord) -> str | None:
        if mail.xref:
            regarding = parse_xref(mail.xref).get("regarding")
            if regarding:
                return regarding
        return self.regarding_resolver(mail) if self.regarding_resolver else None

    def in_window(self, entry: IndexedMail, ts: float) -> bool:
        return ts - self.window_s <= entry.event_time <= ts + FUTURE_SLACK_S

    def candidates(self, ids: list[str], ts: float) -> list[IndexedMail]:
        """The live entries of ``ids`` inside the window of a mail at ``ts`` (``in_window``)."""
        earliest, latest = ts - self.window_s, ts + FUTURE_SLACK_S
        return [entry for entry in map(self.index.get, ids)
                if entry is not None and earliest <= entry.event_time <= latest]

    def most_recent(self, ids: list[str], ts: float) -> tuple[IndexedMail | None, int]:
        """The newest in-window entry of ``ids`` and the count of in-window entries."""
        candidates = self.candidates(ids, ts)
        return max(candidates, key=recency, default=None), len(candidates)

    # -- output ----------------------------------------------------------------------------
    def _result(self, mail: MailRecord, event_dt: datetime, method: int, confidence: float, *,
                message_id: str | None = None, conversation_id: str | None = None, mail_type: str | None = None,
                evidence: dict | None = None, **decision) -> Correlation:
        """The decision of a mail that is not indexed (skipped, untracked, a repeat); ``decision``
        holds the other ``Correlation`` fields that differ from their defaults."""
        message_id = message_id or mail.message_id
        return Correlation(
            tenant=self.tenant,
            message_id=message_id,
            conversation_id=conversation_id or own_conversation_id(self.tenant, message_id),
            method=method,
            confidence=confidence,
            mail_type=mail_type or subjects.mail_type_from_subject(mail.subject),  # type: ignore[arg-type]
            direction=mail.direction,
            event_time=event_dt,
            generation=self.generation,
            settings_fingerprint=self.fingerprint,
            evidence=evidence or {},
            subject=mail.subject,
            from_addr=mail.from_addr,
            to=mail.to,
            cc=mail.cc,
            bcc=mail.bcc,
            automatic=mail.automatic,
            **decision,
        )

    def _indexed_result(self, entry: IndexedMail, evidence: dict) -> Correlation:
        """The decision an index entry holds, as ``_result`` writes it for a mail."""
        return Correlation(
            tenant=self.tenant, message_id=entry.message_id, conversation_id=entry.conversation_id,
            method=canonical_code(entry.method), confidence=entry.confidence,
            mail_type=entry.mail_type,  # type: ignore[arg-type]
            direction=entry.direction, event_time=datetime.fromtimestamp(entry.event_time, timezone.utc),
            generation=self.generation, settings_fingerprint=self.fingerprint,
            parent_message_id=entry.parent_message_id, regarding=entry.regarding, tracking_token=entry.tracking_token,
            # The index keeps no candidate count: a link names its one parent.
            candidate_count=int(entry.parent_message_id is not None),
            evidence=evidence, subject=entry.subject,
            from_addr=entry.from_addr, to=entry.to, cc=entry.cc, bcc=entry.bcc, automatic=entry.automatic,
        )
