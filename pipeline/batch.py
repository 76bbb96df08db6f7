"""Correlate mail files without a broker: sources -> parse -> engine, streamed one mail at a time.

Used by ``threadline correlate``, ``threadline eval`` and ``threadline sla``; memory is bounded by
the engine's index (its time window), never by the size of the mailbox, except for
``evaluate_corpus``, which keeps one corpus's parsed mail to correlate it several times (parsing is
most of the cost), and ``run_support``, which keeps the records it returns.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.correlation.engine import Correlator
from pipeline.correlation.evaluate import CorpusRun, evaluate, read_truth, score_links, subject_grouping
from pipeline.correlation.model import Correlation
from pipeline.escalation.model import MailEvent, Transition
from pipeline.escalation.policy import default_owner
from pipeline.escalation.sla import SlaEvent, SlaTracker
from pipeline.escalation.tracker import EscalationTracker
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError, MailRecord
from pipeline.mail.sources import iter_mail_sources
from pipeline.settings import CorrelationSettings, Settings, UntrackedSettings


@dataclass(frozen=True, slots=True)
class ParseFailure:
    source_ref: str
    reason: str
    message: str

    def to_dict(self) -> dict:
        return {"source_ref": self.source_ref, "error_reason": self.reason, "error": self.message}


def strip_threading_headers(mail: MailRecord) -> MailRecord:
    """The mail as if In-Reply-To, References, Thread-Index and our own header were never set."""
    return dataclasses.replace(mail, in_reply_to=(), references=(), thread_index=None, thread_topic="", xref=None)


def parse_sources(paths: Iterable[str], correlation: CorrelationSettings, *, tenant: str = "default",
                  direction: str = "in", strip_headers: bool = False) -> Iterator[MailRecord | ParseFailure]:
    """Mail records (or the reason a message could not be parsed) from mbox/maildir/.eml paths."""
    for source_ref, raw in iter_mail_sources(paths):
        try:
            mail = parse_mail(raw, direction=direction, tenant=tenant, mailbox=source_ref.partition("#")[0],
                              xheader_name=correlation.xheader_name)
        except MailParseError as exc:
            yield ParseFailure(source_ref, exc.reason, exc.message)
            continue
        yield strip_threading_headers(mail) if strip_headers else mail


def correlate_sources(paths: Iterable[str], correlation: CorrelationSettings, untracked: UntrackedSettings | None = None,
                      *, tenant: str = "default", direction: str = "in", strip_headers: bool = False,
                      correlator: Correlator | None = None) -> Iterator[Correlation | ParseFailure]:
    correlator = correlator or Correlator(correlation, tenant=tenant, untracked=untracked)
    for item in parse_sources(paths, correlation, tenant=tenant, direction=direction, strip_headers=strip_headers):
        yield item if isinstance(item, ParseFailure) else correlator.correlate(item)


T = TypeVar("T")
# progress(items, desc) -> the same items, perhaps drawing a progress bar meanwhile.
Progress = Callable[[Iterable[T], str], Iterable[T]]
MODES = ("headers", "stripped")


def _no_progress(items: Iterable[T], desc: str) -> Iterable[T]:
    return items


def evaluate_corpus(name: str, mbox: str | Path, truth: str | Path, correlation: CorrelationSettings,
                    untracked: UntrackedSettings | None = None, *, modes: Iterable[str] = MODES,
                    progress: Progress = _no_progress) -> list[CorpusRun]:
    """Score the engine on one corpus in each mode ("headers", "stripped": --strip-headers), beside
    plain subject grouping and the Dynamics strategy on the same mails.  The mbox is parsed once;
    what each mail's own In-Reply-To / References named is kept before any stripping."""
    mails = [item for item in progress(parse_sources([str(mbox)], correlation), f"{name}: parse")
             if not isinstance(item, ParseFailure)]
    rows = list(read_truth(truth))
    dynamics = correlation.model_copy(update={
        "smart_matching": correlation.smart_matching.model_copy(update={"strategy": "dynamics"})})
    runs = []
    for mode in modes:
        strip = mode == "stripped"
        predictions, named_ids = _correlate(mails, correlation, untracked, strip, progress, f"{name}: {mode}")
        evaluation = evaluate(rows, predictions, named_ids)
        dynamics_predictions, _ = _correlate(mails, dynamics, untracked, strip, progress, f"{name}: {mode}, dynamics")
        dynamics_result = evaluate(rows, dynamics_predictions, named_ids)
        baselines = {
            "subject_grouping": score_links(rows, subject_grouping(predictions, correlation.window_days), named_ids),
            "dynamics": dynamics_result.overall.as_dict(dynamics_result.mails_with_parent),
        }
        runs.append(CorpusRun(name, mode, correlation.smart_matching.strategy, correlation.fingerprint(), evaluation,
                              baselines))
    return runs


def _correlate(mails: list[MailRecord], correlation: CorrelationSettings, untracked: UntrackedSettings | None,
               strip_headers: bool, progress: Progress, desc: str) -> tuple[list[Correlation], dict[str, tuple[str, ...]]]:
    """A fresh engine's decisions on ``mails``, and the ids each mail's own headers named."""
    correlator = Correlator(correlation, untracked=untracked)
    predictions = []
    named_ids: dict[str, tuple[str, ...]] = {}
    for mail in progress(mails, desc):
        prediction = correlator.correlate(strip_threading_headers(mail) if strip_headers else mail)
        predictions.append(prediction)
        named_ids.setdefault(prediction.message_id, (*mail.in_reply_to, *mail.references))
    return predictions, named_ids


@dataclass
class SupportRun:
    """What the escalation agent would have emitted for a mailbox, as records (``to_record()``)."""

    mails: int = 0
    transitions: list[dict] = dataclasses.field(default_factory=list)
    sla_events: list[dict] = dataclasses.field(default_factory=list)
    responses: list[dict] = dataclasses.field(default_factory=list)


def _no_wall_clock() -> datetime:
    raise AssertionError("offline trackers run on the mails' event time only")


class OfflineDesk:
    """One tenant's correlator, escalation tracker and SLA tracker, fed mail by mail as the agents
    feed them (each mail first advances the trackers to its event time), without a broker.  Time
    is the mails' own, never the wall clock: :meth:`advance` moves it further."""

    def __init__(self, settings: Settings, tenant: str, *, generation: int = 0) -> None:
        self.correlator = Correlator(settings.correlation, tenant=tenant, untracked=settings.untracked,
                                     generation=generation)
        self.escalation = EscalationTracker(settings.escalation, _no_wall_clock)
        self.sla = SlaTracker(settings.escalation, _no_wall_clock)
        self._own_domains = frozenset(domain.lower() for domain in settings.untracked.own_domains)

    def feed(self, mail: MailRecord) -> tuple[Correlation, list[Transition], list[SlaEvent]]:
        """The mail's correlation and what the trackers made of it (nothing for untracked mail)."""
        correlation = self.correlator.correlate(mail)
        if correlation.untracked_reason:
            return correlation, [], []
        owner = default_owner(correlation.direction, (*correlation.to, *correlation.cc), self._own_domains)
        event = MailEvent.from_correlation(correlation, mailbox=mail.mailbox, owner=owner)
        return correlation, self.escalation.on_correlation(event), self.sla.on_mail(event)

    def advance(self, now: datetime) -> tuple[list[Transition], list[SlaEvent]]:
        return self.escalation.advance(now), self.sla.advance(now)


def run_support(mails: Iterable[MailRecord], settings: Settings) -> SupportRun:
    """Correlate ``mails`` (event-time order) and run the escalation and SLA trackers on them as
    the agents do, one :class:`OfflineDesk` per tenant.  Time is the mails' own: it stands at the
    last mail at the end, so the same mailbox gives the same records on any day."""
    desks: dict[str, OfflineDesk] = {}
    run = SupportRun()
    for mail in mails:
        desk = desks.get(mail.tenant)
        if desk is None:
            desk = desks[mail.tenant] = OfflineDesk(settings, mail.tenant)
        correlation, transitions, sla_events = desk.feed(mail)
        run.mails += 1
        if correlation.response is not None:
            run.responses.append({"tenant": correlation.tenant, "message_id": correlation.message_id,
                                  **dataclasses.asdict(correlation.response)})
        run.transitions += [transition.to_record() for transition in transitions]
        run.sla_events += [sla_event.to_record() for sla_event in sla_events]
    return run


def desk_by_replies(mails: Iterable[MailRecord], share: float = 0.5) -> frozenset[str]:
    """For a mailing-list archive, which has no outbound mail: the fewest senders who together
    wrote ``share`` of the replies, taken as the desk that answers the others."""
    replies = Counter(mail.from_addr for mail in mails if (mail.in_reply_to or mail.references) and mail.from_addr)
    desk: set[str] = set()
    written, wanted = 0, share * sum(replies.values())
    for sender, count in replies.most_common():
        if written >= wanted:
            break
        desk.add(sender)
        written += count
    return frozenset(desk)


def with_direction(mails: Iterable[MailRecord], own_domains: frozenset[str],
                   desk: frozenset[str] = frozenset()) -> Iterator[MailRecord]:
    """The mails with ``direction`` "out" when the sender is in ``own_domains`` or ``desk``."""
    for mail in mails:
        ours = mail.from_addr in desk or mail.from_addr.rpartition("@")[2] in own_domains
        direction = "out" if ours else "in"
        yield mail if mail.direction == direction else dataclasses.replace(mail, direction=direction)
